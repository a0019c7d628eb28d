"""Prefix sharing: each prompt's tokens once, then each of its responses, in packed batches.

The unshared layout puts ``prompt + response_i`` in a segment per response, so a prompt with n
responses is encoded n times. The shared layout puts a group's prompt once and its responses after it:

    [ plain conversations ... | prompt_g | r_g1 | r_g2 | ... | prompt_h | r_h1 | ... | pads ]

- ``segment_ids``: plain conversations and responses take the slot ids 1..S in row order (the head
  reads each slot's last token, as in the unshared layout); a prompt's tokens take ``-g``, g being the
  slot of its group's first response; pads 0. Plain conversations come first in the row.
- ``positions``: 0.. over the prompt; each response continues from the prompt's end (P, P+1, ...), so
  its rotary phases are the ones it has in the unshared layout.
- Attention (``rm_jax.models.attention``): a response token sees its prompt and its own earlier tokens,
  never a sibling; a prompt token sees its prompt's earlier tokens. Every hidden state the head reads is
  then the unshared one up to float rounding.

The prompt of a group is the longest common token prefix of its members (computed, never assumed from
the text: chat templates may render a prompt differently before different responses), capped so every
response keeps at least one token. A group that does not fit ``seq_len`` or ``max_segments`` is split
over several units, members in order, each unit repeating the prompt (counted: ``split_groups``,
``repeated_prompts``).

Causal-LM examples (``response_start`` given: SteerLM 2.0 groups, policy log-probabilities): a response's first
token is predicted from the prompt's last token, which the shared layout would hold once for all responses.
The shared prompt therefore stops one token before the earliest response start (:func:`lm_prompt_len`), so
each response's segment begins with its own copy of the prompt's last token (one token per response) and the
plain next-token shift inside a segment (:func:`rm_jax.data.packing.token_targets`) gives every response
token exactly its unshared target and context; the shared prefix never reaches into the responses (their
common first tokens), whose log-probabilities are counted per response.

Pure numpy, like :mod:`rm_jax.data.packing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Optional, Sequence

import numpy as np

from rm_jax.core.config import SharePrompts
from rm_jax.data.packing import plan_packed

__all__ = [
    "ShareReport",
    "Unit",
    "build_shared_batch",
    "common_prefix_len",
    "lm_prompt_len",
    "plan_shared",
    "plan_units",
    "resolve_share",
    "row_units",
    "shared_length",
    "unit_length",
    "unit_tokens",
]


@dataclass(frozen=True)
class Unit:
    """One prompt and the responses laid out after it (``prompt_len`` 0: a plain conversation, one member)."""

    prompt_len: int
    members: tuple[int, ...]


@dataclass
class ShareReport:
    """What sharing did: ``tokens_unshared`` (every example whole) vs ``tokens`` (as laid out);
    ``prompt_tokens_saved`` is their difference. ``split_groups`` groups did not fit one row and were
    split into units repeating their prompt ``repeated_prompts`` extra times."""

    examples: int = 0
    shared_groups: int = 0
    tokens_unshared: int = 0
    tokens: int = 0
    split_groups: int = 0
    repeated_prompts: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def prompt_tokens_saved(self) -> int:
        return self.tokens_unshared - self.tokens

    def as_dict(self) -> dict:
        return {
            "examples": self.examples,
            "shared_groups": self.shared_groups,
            "tokens_unshared": self.tokens_unshared,
            "tokens": self.tokens,
            "prompt_tokens_saved": self.prompt_tokens_saved,
            "split_groups": self.split_groups,
            "repeated_prompts": self.repeated_prompts,
        }


def resolve_share(share: SharePrompts, groups: Optional[Sequence[Hashable]]) -> bool:
    """``auto``: on where at least two examples share a group key; ``True`` / ``False`` as given."""
    if share == "auto":
        return groups is not None and len(set(groups)) < len(groups)
    if not isinstance(share, bool):
        raise ValueError(f"share_prompts must be auto, true or false, got {share!r}")
    return share


def common_prefix_len(seqs: Sequence[np.ndarray]) -> int:
    """Longest common prefix of the token arrays, capped at (shortest length - 1): every sequence keeps
    at least one token of its own, where the head reads."""
    if not seqs:
        return 0
    cap = min(len(s) for s in seqs) - 1
    if cap <= 0:
        return 0
    first = np.asarray(seqs[0][:cap])
    n = cap
    for s in seqs[1:]:
        diff = np.flatnonzero(np.asarray(s[:n]) != first[:n])
        if diff.size:
            n = int(diff[0])
        if n == 0:
            break
    return n


def lm_prompt_len(seqs: Sequence[np.ndarray], starts: Sequence[int]) -> int:
    """The shared prompt of causal-LM examples ``seqs`` whose responses start at ``starts``: their common
    prefix, stopping one token before the earliest response start (that token predicts each response's
    first token, so every response keeps its own copy of it)."""
    return max(0, min(common_prefix_len(seqs), min(int(s) for s in starts) - 1))


def _prompt_len(ids: Sequence[np.ndarray], members: Sequence[int], starts: Optional[Sequence[int]]) -> int:
    """A unit's shared prompt: :func:`common_prefix_len`, or :func:`lm_prompt_len` for causal-LM examples."""
    if len(members) < 2:
        return 0
    seqs = [ids[i] for i in members]
    return common_prefix_len(seqs) if starts is None else lm_prompt_len(seqs, [starts[i] for i in members])


def unit_length(unit: Unit, lengths: Sequence[int]) -> int:
    return unit.prompt_len + sum(int(lengths[i]) - unit.prompt_len for i in unit.members)


def unit_tokens(units: Sequence[Unit], ids: Sequence[np.ndarray]) -> int:
    """Tokens ``units`` take laid out (each prompt once); members index ``ids``."""
    lengths = {i: len(ids[i]) for u in units for i in u.members}
    return int(sum(unit_length(u, lengths) for u in units))


def plan_units(
    ids: Sequence[np.ndarray],
    groups: Sequence[Hashable],
    seq_len: int,
    max_segments: int,
    response_start: Optional[Sequence[int]] = None,
) -> tuple[list[Unit], ShareReport]:
    """Units for examples ``ids`` grouped by ``groups`` (one hashable key per example; equal keys share a
    prompt), in order of each group's first example. ``response_start``: causal-LM examples' first response
    token (the prompt stops one token before it: :func:`lm_prompt_len`).

    A group's prompt is the common token prefix of its members (a group whose members share no token is
    laid out plain). A group that needs more than ``seq_len`` tokens or ``max_segments`` responses is cut
    into units greedily, members in order, each repeating the prompt; every example must fit
    ``seq_len`` alone (the over-length policy runs before)."""
    if len(groups) != len(ids):
        raise ValueError(f"{len(groups)} group keys for {len(ids)} examples")
    lengths = [len(x) for x in ids]
    for i, n in enumerate(lengths):
        if n < 1 or n > seq_len:
            raise ValueError(f"example {i} has {n} tokens; each must have 1..seq_len={seq_len}")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    units: list[Unit] = []
    rep = ShareReport(examples=len(ids), tokens_unshared=int(sum(lengths)))
    for group in members.values():
        p = _prompt_len(ids, group, response_start)
        if p == 0:
            units.extend(Unit(0, (i,)) for i in group)
            continue
        rep.shared_groups += 1
        chunks: list[list[int]] = [[]]
        used = p
        for i in group:
            need = lengths[i] - p
            if chunks[-1] and (used + need > seq_len or len(chunks[-1]) == max_segments):
                chunks.append([])
                used = p
            chunks[-1].append(i)
            used += need
        if len(chunks) > 1:
            rep.split_groups += 1
            rep.repeated_prompts += len(chunks) - 1
        # A unit of one response is the plain conversation: the same tokens, one segment.
        units.extend(Unit(p, tuple(c)) if len(c) > 1 else Unit(0, (c[0],)) for c in chunks)
    rep.tokens = int(sum(unit_length(u, lengths) for u in units))
    return units, rep


def shared_length(seqs: Sequence[np.ndarray], starts: Optional[Sequence[int]] = None) -> int:
    """Tokens ``seqs`` take laid out as one unit (their common prefix once; causal-LM examples with response
    starts ``starts``: :func:`lm_prompt_len` once)."""
    p = _prompt_len(seqs, range(len(seqs)), starts)
    return p + sum(len(s) - p for s in seqs)


def row_units(
    ids: Sequence[np.ndarray],
    group: Sequence[Hashable],
    bins: Sequence[Sequence[int]],
    response_start: Optional[Sequence[int]] = None,
):
    """(units, unit bins) for rows of example indices (a training loader's plan): the examples of a row
    with one ``group`` key become one unit (their common prefix once), in the row's order.
    ``response_start``: causal-LM examples (:func:`lm_prompt_len`)."""
    units: list[Unit] = []
    unit_bins: list[list[int]] = []
    for row in bins:
        by: dict[Hashable, list[int]] = {}
        for i in row:
            by.setdefault(group[int(i)], []).append(int(i))
        unit_bins.append([])
        for members in by.values():
            p = _prompt_len(ids, members, response_start)
            new = [Unit(p, tuple(members))] if p else [Unit(0, (i,)) for i in members]
            unit_bins[-1].extend(range(len(units), len(units) + len(new)))
            units.extend(new)
    return units, unit_bins


def plan_shared(units: Sequence[Unit], lengths: Sequence[int], seq_len: int, max_segments: int) -> list[list[int]]:
    """Rows of unit indices (best-fit-decreasing as :func:`rm_jax.data.packing.plan_packed`, each unit
    taking one slot per response)."""
    return plan_packed(
        [unit_length(u, lengths) for u in units], seq_len, max_segments, counts=[len(u.members) for u in units]
    )


def build_shared_batch(
    examples: Sequence[np.ndarray],
    labels: np.ndarray,
    label_mask: np.ndarray,
    units: Sequence[Unit],
    bins: Sequence[Sequence[int]],
    seq_len: int,
    max_segments: int,
    pad_id: int,
    rows: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """The batch of ``bins`` (rows of unit indices) in the shared layout: the keys and shapes of
    :func:`rm_jax.data.packing.build_batch`, slot s holding the example with segment id s + 1.

    Raises ValueError where a member does not start with its unit's prompt (the layout would not be
    exact), a row overflows, or an example appears twice."""
    n_rows = len(bins) if rows is None else int(rows)
    if n_rows < len(bins):
        raise ValueError(f"rows={n_rows} < number of bins {len(bins)}")
    labels, label_mask = np.asarray(labels), np.asarray(label_mask)
    n_attrs = labels.shape[1]
    input_ids = np.full((n_rows, seq_len), pad_id, np.int32)
    segment_ids = np.zeros((n_rows, seq_len), np.int32)
    positions = np.zeros((n_rows, seq_len), np.int32)
    out_labels = np.zeros((n_rows, max_segments, n_attrs), np.float32)
    out_mask = np.zeros((n_rows, max_segments, n_attrs), np.float32)
    example_index = np.full((n_rows, max_segments), -1, np.int64)
    seen: set[int] = set()
    for r, row in enumerate(bins):
        # Plain conversations first: a response reads the latest prompt before it (attention.shared_token_info).
        row_units = sorted((units[u] for u in row), key=lambda u: u.prompt_len > 0)
        at, slot = 0, 0
        for u in row_units:
            p = u.prompt_len
            if slot + len(u.members) > max_segments:
                raise ValueError(f"bin {r} has more than max_segments={max_segments} responses")
            if p:
                prompt = np.asarray(examples[u.members[0]][:p])
                _put(input_ids, segment_ids, positions, r, at, prompt, -(slot + 1), 0, seq_len, r)
                at += p
            for i in u.members:
                if i in seen:
                    raise ValueError(f"example {i} appears more than once in the batch")
                seen.add(i)
                x = np.asarray(examples[i])
                if p and not np.array_equal(x[:p], prompt):
                    raise ValueError(f"example {i} does not start with its unit's {p}-token prompt")
                _put(input_ids, segment_ids, positions, r, at, x[p:], slot + 1, p, seq_len, r)
                at += len(x) - p
                m = label_mask[i].astype(np.float32)
                out_mask[r, slot] = m
                out_labels[r, slot] = np.where(m != 0, labels[i], 0.0)
                example_index[r, slot] = i
                slot += 1
    return {
        "input_ids": input_ids,
        "segment_ids": segment_ids,
        "positions": positions,
        "labels": out_labels,
        "label_mask": out_mask,
        "example_index": example_index,
    }


def _put(ids, seg, pos, r, at, toks, segment, first_pos, seq_len, where) -> None:
    end = at + len(toks)
    if end > seq_len:
        raise ValueError(f"bin {where} holds more than seq_len={seq_len} tokens")
    ids[r, at:end] = toks
    seg[r, at:end] = segment
    pos[r, at:end] = np.arange(first_pos, first_pos + len(toks), dtype=np.int32)
