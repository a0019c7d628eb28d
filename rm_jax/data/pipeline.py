"""Rows -> token ids (with the over-length policy) -> fixed-shape batches, deterministically.

A *unit* is what is sampled and kept together: one response for attribute regression, a
(chosen, rejected) pair for pair losses. Units are shuffled per epoch with (seed, epoch), packed
into rows (best-fit-decreasing, the whole epoch at once), and cut into batches. The loader's
position is two integers (epoch, batch), saved with every checkpoint, so a restored loader
continues with exactly the next batch. Every process builds the same global batch and places
only its own rows on its devices.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.config import SharedSteps, SharePrompts
from rm_jax.core.errors import ConfigError
from rm_jax.data.conversation import encode_with_prompt_lengths, row_to_messages
from rm_jax.data.packing import build_batch, plan_packed, token_targets
from rm_jax.data.prefix_sharing import (
    Unit,
    build_shared_batch,
    plan_shared,
    plan_units,
    resolve_share,
    row_units,
    shared_length,
    unit_tokens,
)
from rm_jax.data.sources import pair_ids

BUNDLED = "bundled"
ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")


def resolve_source(source: str) -> str:
    """``bundled`` -> the sample folder shipped with the package."""
    return os.path.join(ASSETS, "sample") if source == BUNDLED else source


def resolve_pairs_source(source: str) -> str:
    """``bundled`` -> the RewardBench-format pairs shipped with the package (made from the RewardBench 2 sample)."""
    return os.path.join(ASSETS, "sample", "rewardbench.jsonl") if source == BUNDLED else source


def bundled_tokenizer_path() -> str:
    return os.path.join(ASSETS, "tokenizer")


@dataclass
class LengthReport:
    rows: int = 0
    truncated: int = 0  # prompt cut from the left
    dropped: int = 0
    response_cut: int = 0  # the response alone did not fit: cut from the left too (evaluation only)

    def as_dict(self, prefix: str) -> dict:
        return {f"{prefix}_rows": self.rows, f"{prefix}_truncated": self.truncated, f"{prefix}_dropped": self.dropped}


@dataclass
class Encoded:
    """Token ids of every kept example plus what each one is for."""

    ids: list[np.ndarray]
    labels: np.ndarray  # [N, A] float32 (0 where missing)
    label_mask: np.ndarray  # [N, A] float32
    units: list[tuple[int, ...]]  # example indices sampled together
    source_rows: np.ndarray  # [N] the row each example came from
    group: np.ndarray  # [N] prompt group (HelpSteer2 pair id) or pair index
    strength: np.ndarray  # [U] preference strength of pair units (1 when unknown)
    report: LengthReport = field(default_factory=LengthReport)
    response_start: Optional[np.ndarray] = None  # [N] causal LM examples: first response token (rm_jax.data.sft)
    # [N] per-example values laid out per slot in batches (SteerLM 2.0: "w", "logq_prime"); with them a
    # batch also gets "steer_group": each slot's unit within the batch, -1 for empty slots.
    example_values: dict = field(default_factory=dict)
    # [P, 2] (chosen, rejected) example indices of pairs inside units (task rm with loss.pair_weight > 0: the
    # responses to one prompt, :func:`prompt_pair_units`) and their strength [P]; batches get pair_* slots.
    pairs: Optional[np.ndarray] = None
    pair_strength: Optional[np.ndarray] = None

    @property
    def unit_lengths(self) -> np.ndarray:
        return np.asarray([sum(len(self.ids[i]) for i in u) for u in self.units], dtype=np.int64)


def fit_length(
    ids: np.ndarray, prompt_len: int, seq_len: int, policy: str, bos_id: Optional[int]
) -> tuple[Optional[np.ndarray], bool]:
    """Apply the over-length policy to one conversation: (ids or None if dropped, truncated?).

    ``truncate`` removes prompt tokens from the left (after a leading BOS, which is kept) and
    keeps the whole response; a response that alone does not fit is dropped.
    """
    if len(ids) <= seq_len:
        return ids, False
    if policy == "drop":
        return None, False
    keep_bos = bos_id is not None and len(ids) > 0 and ids[0] == bos_id
    head = ids[:1] if keep_bos else ids[:0]
    response_len = len(ids) - prompt_len
    if response_len + len(head) >= seq_len:  # no room for any prompt token
        return None, False
    return keep_end(ids, seq_len, bos_id), True


def keep_end(ids: np.ndarray, seq_len: int, bos_id: Optional[int]) -> np.ndarray:
    """The last tokens of a conversation (after a leading BOS, which is kept): what the head reads."""
    head = ids[:1] if bos_id is not None and len(ids) > 0 and ids[0] == bos_id else ids[:0]
    tail = ids[len(ids) - (seq_len - len(head)) :]
    return np.concatenate([head, tail]).astype(np.int32)


def _encode(
    tokenizer: Any,
    conversations: list,
    template: Optional[str],
    seq_len: int,
    policy: str,
    report: LengthReport,
    cut_response: bool = False,
) -> list[Optional[np.ndarray]]:
    ids, plen = encode_with_prompt_lengths(tokenizer, conversations, template)
    bos = getattr(tokenizer, "bos_token_id", None)
    out = []
    for x, p in zip(ids, plen):
        y, truncated = fit_length(x, int(p), seq_len, policy, bos)
        report.truncated += truncated
        if y is None and cut_response and policy == "truncate":
            # Scoring a benchmark must count every example: the head still reads the response's end.
            y = keep_end(x, seq_len, bos)
            report.response_cut += 1
        out.append(y)
    return out


def encode_helpsteer(
    rows: Sequence[dict],
    tokenizer: Any,
    seq_len: int,
    template: Optional[str] = None,
    overlength: str = "truncate",
    attributes: Sequence[str] = ATTRIBUTES,
    cut_response: bool = False,
) -> Encoded:
    report = LengthReport(rows=len(rows))
    convs = [row_to_messages(r, where=f"row {r.get('_row', i)}") for i, r in enumerate(rows)]
    ids = _encode(tokenizer, convs, template, seq_len, overlength, report, cut_response)
    groups = np.asarray(pair_ids(rows), dtype=np.int64) if rows else np.zeros(0, np.int64)
    keep = [i for i, x in enumerate(ids) if x is not None]
    report.dropped = len(rows) - len(keep)
    labels = np.zeros((len(keep), len(attributes)), np.float32)
    mask = np.zeros_like(labels)
    for j, i in enumerate(keep):
        for a, name in enumerate(attributes):
            v = rows[i].get(name)
            if v is not None:
                labels[j, a], mask[j, a] = float(v), 1.0
    return Encoded(
        ids=[ids[i] for i in keep],
        labels=labels,
        label_mask=mask,
        units=[(j,) for j in range(len(keep))],
        source_rows=np.asarray([rows[i].get("_row", i) for i in keep], np.int64),
        group=groups[keep] if len(keep) else groups,
        strength=np.ones(len(keep), np.float32),
        report=report,
    )


def encode_pairs(
    rows: Sequence[dict],
    tokenizer: Any,
    seq_len: int,
    template: Optional[str] = None,
    overlength: str = "truncate",
    n_attributes: int = len(ATTRIBUTES),
    cut_response: bool = False,
) -> Encoded:
    """Pairs: examples 2k (chosen) and 2k+1 (rejected); a pair with either side dropped is dropped.
    ``cut_response``: a response that alone does not fit is cut from the left instead of dropped."""
    report = LengthReport(rows=len(rows))
    convs = []
    for i, r in enumerate(rows):
        where = f"row {r.get('_row', i)}"
        convs.append(row_to_messages({"prompt": r["prompt"], "response": r["chosen"]}, where))
        convs.append(row_to_messages({"prompt": r["prompt"], "response": r["rejected"]}, where))
    ids = _encode(tokenizer, convs, template, seq_len, overlength, report, cut_response)
    kept_ids, units, src, strength = [], [], [], []
    for i, r in enumerate(rows):
        c, rj = ids[2 * i], ids[2 * i + 1]
        if c is None or rj is None:
            report.dropped += 1
            continue
        units.append((len(kept_ids), len(kept_ids) + 1))
        kept_ids += [c, rj]
        src += [r.get("_row", i)] * 2
        s = r.get("strength")
        strength.append(1.0 if s is None else float(s))
    n = len(kept_ids)
    return Encoded(
        ids=kept_ids,
        labels=np.zeros((n, n_attributes), np.float32),
        label_mask=np.zeros((n, n_attributes), np.float32),
        units=units,
        source_rows=np.asarray(src, np.int64),
        group=np.repeat(np.arange(len(units)), 2),
        strength=np.asarray(strength, np.float32),
        report=report,
    )


def prompt_pair_units(enc: Encoded, by: int) -> Encoded:
    """``enc`` (one unit per response) with each prompt's responses as one unit (``enc.group``: HelpSteer2's
    consecutive rows with one prompt), so a step sees all of them together, and every pair of responses to a
    prompt ordered by label column ``by`` (the higher label is chosen; ties and missing labels left out).
    Pair strength is 1: HelpSteer2 rows carry no preference strength."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(enc.group.tolist()):
        members.setdefault(int(g), []).append(i)
    units = [tuple(m) for m in members.values()]
    y, known = enc.labels[:, by], enc.label_mask[:, by] > 0
    pairs = [
        (i, j) if y[i] > y[j] else (j, i)
        for u in units
        for a, i in enumerate(u)
        for j in u[a + 1 :]
        if known[i] and known[j] and y[i] != y[j]
    ]
    arr = np.asarray(pairs, np.int64).reshape(-1, 2)
    return dataclasses.replace(enc, units=units, pairs=arr, pair_strength=np.ones(len(arr), np.float32))


def subset_prompts(
    rows: Sequence[dict], fraction: float = 1.0, max_prompts: Optional[int] = None, seed: int = 0
) -> list[int]:
    """Row indices of a random subset of whole prompts (both responses kept together).

    Prompts are ranked once by a seeded permutation and the first k are taken, so for one seed
    the 10% subset lies inside the 25% subset. Rows keep their original order.
    """
    groups = np.asarray(pair_ids(rows), dtype=np.int64)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if max_prompts is not None:
        k = min(int(max_prompts), n_groups)
    else:
        k = n_groups if fraction >= 1 else max(1, int(round(fraction * n_groups)))
    rank = np.random.default_rng(seed).permutation(n_groups)
    chosen = np.zeros(n_groups, bool)
    chosen[rank[:k]] = True
    return [i for i, g in enumerate(groups) if chosen[g]]


# ---------------------------------------------------------------- batches


class Loader:
    """Deterministic, restorable iterator of global batches (numpy dicts)."""

    def __init__(
        self,
        enc: Encoded,
        seq_len: int,
        max_segments: int,
        rows_per_batch: int,
        pad_id: int,
        packing: bool = True,
        padding_side: str = "right",
        seed: int = 0,
        shuffle: bool = True,
        share_prompts: SharePrompts = False,
        sample_by_prompt: bool = False,
        shared_steps: SharedSteps = "same",
    ):
        if not enc.units:
            raise ConfigError("no training examples left (after subsetting and the over-length policy)")
        self.enc, self.seq_len, self.rows = enc, seq_len, rows_per_batch
        # Shared prompts (rm_jax.data.prefix_sharing; a causal LM's responses keep the prompt's last token).
        # Whether batches carry the layout and its token counts is the setting's, not the data's, so the
        # step's inputs do not change with the data; "auto" then shares where prompts repeat.
        self.share = share_prompts is not False and packing
        # "same": the epoch is planned at unshared lengths, so a step holds the unshared run's examples, then
        # laid out shared in fewer rows (shared_rows). "fill": planned at shared lengths (more per step).
        self.fill = self.share and shared_steps == "fill"
        self.units = list(enc.units)
        single = max(len(u) for u in self.units) == 1
        if single and (sample_by_prompt or (self.fill and resolve_share(share_prompts, list(enc.group)))):
            # Attribute regression: a prompt's responses are sampled together where they fit one packed row
            # together (else each on its own, so no unit spans rows and gradient accumulation still equals one
            # big batch; unpacked rows hold one response each, so there they stay single).
            by: dict = {}
            for (i,) in self.units:
                by.setdefault(int(enc.group[i]), []).append(i)
            measure = shared_length if self.fill else (lambda xs: sum(len(x) for x in xs))
            self.units = []
            for m in by.values():
                whole = packing and measure([enc.ids[i] for i in m]) <= seq_len
                self.units.extend([tuple(m)] if whole and len(m) > 1 else [(i,) for i in m])
        self.unit_size = max(len(u) for u in self.units)  # 2 for pairs; a SteerLM 2.0 group's response count
        self._data_unit_size = max(len(u) for u in enc.units)  # the data's own (pairs), not regression's groups
        self.max_segments = max_segments if packing else 1
        if packing and self.max_segments < self.unit_size:
            raise ConfigError(f"data.max_segments ({max_segments}) must be at least {self.unit_size}")
        if rows_per_batch < self.unit_size and (not packing or self._longest_unit() > seq_len):
            # A unit that does not fit one row takes one row per member, all in one micro-batch.
            raise ConfigError(
                f"train.batch_rows ({rows_per_batch}) must be at least {self.unit_size}: a pair or "
                f"group is never split across micro-batches, and one too long for a row of "
                f"data.seq_len takes a row per member"
            )
        self.pad_id, self.packing, self.padding_side = pad_id, packing, padding_side
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.index = 0, 0
        self._plan_epoch: Optional[int] = None
        self._plan: list[list[list[int]]] = []
        self._shared_rows: Optional[int] = None

    def _longest_unit(self) -> int:
        return int(self.unit_lengths.max())

    @property
    def unit_lengths(self) -> np.ndarray:
        """Tokens each sampling unit takes in a row: its common prompt once when sharing."""
        if not hasattr(self, "_unit_lengths"):
            if self.fill:
                lens = [shared_unit_length(self.enc, u) for u in self.units]
            else:
                lens = [sum(len(self.enc.ids[i]) for i in u) for u in self.units]
            self._unit_lengths = np.asarray(lens, np.int64)
        return self._unit_lengths

    def _epoch_plan(self, epoch: int) -> list[list[list[int]]]:
        if self._plan_epoch != epoch:
            n = len(self.units)
            order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            lengths = self.unit_lengths[order]
            # A pair longer than a row as a whole gets one row per side (a block of two rows that
            # stays in one batch); everything else is packed as whole units.
            split = lengths > self.seq_len if self.packing else np.full(n, self.unit_size > 1)
            whole = np.flatnonzero(~split)
            blocks: list[tuple[int, list[list[int]]]] = []
            if self.packing and len(whole):
                for b in plan_packed(lengths[whole].tolist(), self.seq_len, self.max_segments // self.unit_size):
                    units = [int(whole[u]) for u in b]
                    blocks.append((units[0], [[e for u in units for e in self.units[order[u]]]]))
            elif len(whole):
                blocks += [(int(u), [list(self.units[order[u]])]) for u in whole]
            blocks += [(int(u), [[e] for e in self.units[order[u]]]) for u in np.flatnonzero(split)]
            blocks.sort(key=lambda x: x[0])  # keep the shuffled order
            self._plan = _cut_into_batches([b for _, b in blocks], self.rows)
            self._plan_epoch = epoch
        return self._plan

    def share_summary(self) -> dict:
        """data_report.json's ``sharing``: an epoch's tokens without and with shared prompts."""
        unshared = int(sum(len(self.enc.ids[i]) for u in self.units for i in u))
        rows_needed = 0
        if self.share and not self.fill:
            tokens = 0
            for units, rows in map(self._repack, self._epoch_plan(0)):
                tokens += unit_tokens(units, self.enc.ids)
                rows_needed = max(rows_needed, len(rows))
        else:
            tokens = int(self.unit_lengths.sum())
        out = {
            "on": bool(self.share),
            "steps": "fill" if self.fill else "same",
            "sampling_units": len(self.units),
            "tokens_unshared": unshared,
            "tokens": int(tokens),
            "prompt_tokens_saved": unshared - int(tokens),
        }
        if self.share and not self.fill:
            # the first epoch's need; a run fixes its own over all its epochs (fix_shared_rows, logged)
            out["rows_per_batch"] = {"unshared": self.rows, "shared": rows_needed}
        return out

    def _repack(self, bins: Sequence[list[int]]) -> tuple[list[Unit], list[list[int]]]:
        """A micro-batch's examples in the shared layout, packed anew (its rows of unshared bins become
        units of one prompt each, then as few rows as fit)."""
        step = [i for row in bins for i in row]
        ids = [self.enc.ids[i] for i in step]
        starts = None if self.enc.response_start is None else [int(self.enc.response_start[i]) for i in step]
        units, _ = plan_units(ids, [self.enc.group[i] for i in step], self.seq_len, self.max_segments, starts)
        rows = plan_shared(units, [len(x) for x in ids], self.seq_len, self.max_segments)
        units = [Unit(u.prompt_len, tuple(step[m] for m in u.members)) for u in units]
        return units, rows

    def fix_shared_rows(self, micro_batches: int, multiple: int = 1) -> int:
        """Rows of a shared micro-batch for a run of ``micro_batches`` micro-batches (``shared_steps: same``):
        the most any of them needs, rounded up to ``multiple`` (the data-parallel size), never above the
        unshared count. One number per run, so the step compiles once; a later micro-batch that needs more
        (a longer run than planned) falls back to the unshared count of rows."""
        per_epoch = len(self._epoch_plan(0))
        need = 1
        for e in range(-(-max(1, micro_batches) // per_epoch)):
            for bins in self._epoch_plan(e):
                need = max(need, len(self._repack(bins)[1]))
        self._epoch_plan(self.epoch)
        self._shared_rows = min(self.rows, -(-need // multiple) * multiple)
        return self._shared_rows

    def shared_rows(self) -> int:
        """Rows of a shared micro-batch: what ``fix_shared_rows`` set, else the unshared count (the shape a
        step's batch spec and the memory plan size, an upper bound)."""
        return self.rows if self._shared_rows is None else self._shared_rows

    def steps_per_epoch(self, accum: int = 1) -> int:
        return -(-len(self._epoch_plan(0)) // accum)

    def next_step(self, accum: int = 1) -> dict:
        """``accum`` consecutive batches stacked on a leading axis: one optimizer step with
        gradient accumulation. Each micro-batch is laid out on its own, so pair indices stay local."""
        micro = [next(self) for _ in range(accum)]
        return {k: np.stack([m[k] for m in micro]) for k in micro[0]}

    def get_state(self) -> dict:
        return {"epoch": int(self.epoch), "index": int(self.index), "seed": int(self.seed)}

    def set_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        plan = self._epoch_plan(self.epoch)
        if self.index >= len(plan):
            self.epoch, self.index = self.epoch + 1, 0
            plan = self._epoch_plan(self.epoch)
        bins = plan[self.index]
        self.index += 1
        rows, shared = self.rows, None
        if self.share and not self.fill:
            units, unit_bins = self._repack(bins)
            if len(unit_bins) <= self.shared_rows():
                rows, shared = self.shared_rows(), (units, unit_bins)
        return make_batch(
            self.enc,
            bins,
            self.seq_len,
            self.max_segments,
            rows,
            self.pad_id,
            self.padding_side,
            self._data_unit_size,
            self.share,
            shared,
        )


def shared_unit_length(enc: Encoded, unit: Sequence[int]) -> int:
    """Tokens a sampling unit takes in a row of the shared layout, as :func:`make_batch` lays it out: the
    common prompt once, and for causal-LM examples (``enc.response_start``) the prompt's last token once per
    response (:func:`rm_jax.data.prefix_sharing.lm_prompt_len`)."""
    starts = None if enc.response_start is None else [int(enc.response_start[i]) for i in unit]
    return shared_length([enc.ids[i] for i in unit], starts)


def _cut_into_batches(blocks: list[list[list[int]]], rows: int) -> list[list[list[int]]]:
    """Consecutive blocks of rows into batches of at most ``rows`` rows; a block never straddles two."""
    batches: list[list[list[int]]] = [[]]
    for block in blocks:
        if len(batches[-1]) + len(block) > rows:
            batches.append([])
        batches[-1].extend(block)
    return [b for b in batches if b]


def make_batch(
    enc: Encoded,
    bins: Sequence[list[int]],
    seq_len: int,
    max_segments: int,
    rows: int,
    pad_id: int,
    padding_side: str = "right",
    unit_size: int = 1,
    share: bool = False,
    shared: Optional[tuple[list[Unit], list[list[int]]]] = None,
) -> dict:
    """One fixed-shape batch; pair units add chosen/rejected slot indices into the flat [B*S] outputs.
    ``share``: a row's examples of one ``enc.group`` share their common prompt (rm_jax.data.prefix_sharing),
    and ``tokens_unshared`` [rows] counts the tokens each row would hold without sharing. ``shared``: the
    batch's examples already cut into units and rows of units (``Loader._repack``), else each row's own."""
    if share:
        # causal LMs (response_start): each response keeps the prompt's last token, which predicts its first
        units, unit_bins = shared if shared is not None else row_units(enc.ids, enc.group, bins, enc.response_start)
        b = build_shared_batch(
            enc.ids, enc.labels, enc.label_mask, units, unit_bins, seq_len, max_segments, pad_id, rows=rows
        )
        b["tokens_unshared"] = np.zeros(rows, np.int32)
        b["tokens_unshared"][: len(unit_bins)] = [
            sum(len(enc.ids[i]) for u in row for i in units[u].members) for row in unit_bins
        ]
    else:
        b = build_batch(
            enc.ids,
            enc.labels,
            enc.label_mask,
            bins,
            seq_len,
            max_segments,
            pad_id,
            rows=rows,
            padding_side=padding_side if max_segments == 1 else "right",
        )
    if enc.response_start is not None:  # a causal LM: next-token targets on the response tokens
        for k in ("labels", "label_mask"):
            b.pop(k)
        b["targets"], b["loss_mask"] = token_targets(b, enc.response_start)
    if enc.example_values:
        idx = b["example_index"]
        present = idx >= 0
        for k, v in enc.example_values.items():
            b[k] = np.where(present, np.asarray(v)[np.clip(idx, 0, None)], 0).astype(np.float32)
        # Dense group numbers within this batch: the loss normalises each group on its own.
        groups = np.where(present, enc.group[np.clip(idx, 0, None)], -1)
        _, local = np.unique(groups, return_inverse=True)
        b["steer_group"] = np.where(present, local.reshape(groups.shape) - (1 if (~present).any() else 0), -1).astype(
            np.int32
        )
    if enc.pairs is not None:  # pairs inside units (responses to one prompt): those whose both sides are here
        b.update(_unit_pairs(enc, b["example_index"].reshape(-1), max(1, rows * max_segments * (unit_size - 1) // 2)))
    elif unit_size == 2 and enc.response_start is None:  # reward-model pairs
        n_pairs = rows * max_segments // 2
        flat = b["example_index"].reshape(-1)
        slot_of = {int(e): s for s, e in enumerate(flat) if e >= 0}
        chosen = np.zeros(n_pairs, np.int32)
        rejected = np.zeros(n_pairs, np.int32)
        pmask = np.zeros(n_pairs, np.float32)
        strength = np.zeros(n_pairs, np.float32)
        k = 0
        for e in sorted(slot_of):
            if e % 2 == 0:  # chosen examples are even, their rejected partner is e + 1
                chosen[k], rejected[k], pmask[k] = slot_of[e], slot_of[e + 1], 1.0
                strength[k] = enc.strength[e // 2]
                k += 1
        b.update(pair_chosen=chosen, pair_rejected=rejected, pair_mask=pmask, pair_strength=strength)
    return b


def _unit_pairs(enc: Encoded, flat: np.ndarray, n_pairs: int) -> dict:
    """pair_chosen / pair_rejected (slots in the flat [B*S] outputs), pair_mask and pair_strength [n_pairs] of
    ``enc.pairs`` whose both examples sit in this batch (units are never split, so that is all of a unit's)."""
    assert enc.pairs is not None and enc.pair_strength is not None
    slot = np.full(len(enc.ids), -1, np.int64)
    slot[flat[flat >= 0]] = np.flatnonzero(flat >= 0)
    here = np.flatnonzero((slot[enc.pairs[:, 0]] >= 0) & (slot[enc.pairs[:, 1]] >= 0))
    if len(here) > n_pairs:
        raise ValueError(f"{len(here)} pairs in a batch with room for {n_pairs}")
    out = {k: np.zeros(n_pairs, np.int32) for k in ("pair_chosen", "pair_rejected")}
    out["pair_mask"], out["pair_strength"] = np.zeros(n_pairs, np.float32), np.zeros(n_pairs, np.float32)
    out["pair_chosen"][: len(here)] = slot[enc.pairs[here, 0]]
    out["pair_rejected"][: len(here)] = slot[enc.pairs[here, 1]]
    out["pair_mask"][: len(here)] = 1.0
    out["pair_strength"][: len(here)] = enc.pair_strength[here]
    return out


def eval_batches(
    enc: Encoded, seq_len: int, max_segments: int, rows: int, pad_id: int, packing: bool = True
) -> list[dict]:
    """Every example exactly once, in fixed-shape batches (outputs map back via example_index). Units of
    several examples (pairs, SteerLM 2.0 groups) stay whole in one batch, as in training."""
    if any(len(u) > 1 for u in enc.units):
        loader = Loader(enc, seq_len, max_segments, rows, pad_id, packing, shuffle=False)
        return [next(loader) for _ in range(loader.steps_per_epoch())]
    ms = max_segments if packing else 1
    bins = plan_packed([len(x) for x in enc.ids], seq_len, ms) if packing else [[i] for i in range(len(enc.ids))]
    return [make_batch(enc, bins[i : i + rows], seq_len, ms, rows, pad_id) for i in range(0, len(bins), rows)]
