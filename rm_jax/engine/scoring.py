"""Batched, packed forward passes: predictions for every example, in input order.

Shared by validation during training, ``rm-jax eval``, ``rm-jax score`` and serving. The row-level
functions (:func:`read_score_rows`, :func:`score_rows`, :func:`write_scored`) are ``rm-jax score``
as a library.
"""

from __future__ import annotations

import json
from typing import Any, Hashable, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from rm_jax.core.attributes import WeightSpec, resolve_reward_weights
from rm_jax.core.errors import ConversationError, InputError
from rm_jax.core.files import iter_jsonl, write_jsonl
from rm_jax.data.conversation import encode, row_to_messages
from rm_jax.data.packing import build_batch, plan_packed
from rm_jax.data.prefix_sharing import (
    SharePrompts,
    ShareReport,
    build_shared_batch,
    plan_shared,
    plan_units,
    resolve_share,
)
from rm_jax.engine.train_step import batch_shardings, make_score_fn, put_batch
from rm_jax.models.attention import SHARED_KERNELS, shared_layout_kernel
from rm_jax.models.llama import DecoderConfig, RewardModel
from rm_jax.models.sharding import activate, make_mesh, replicated

# share_prompts=auto lays prompts out once only where that saves at least this share of the tokens.
AUTO_MIN_SAVED = 0.1

# Token slots per forward pass on a CPU (rows x seq_len, at least one row). XLA:CPU scores a batch fastest
# while its activations stay in the caches: on a 2-core EPYC, 16 rows of 1,344 tokens ran at under half the
# tokens/s of one row, 3 rows at 0.84x (docs/performance.md, "Scoring on a CPU"). Accelerators take the rows
# asked for.
CPU_TOKENS_PER_PASS = 2048


def rows_per_pass(rows: int, seq_len: int, backend: Optional[str] = None) -> int:
    """Rows per forward pass: ``rows``, capped on a CPU to :data:`CPU_TOKENS_PER_PASS` token slots."""
    if (backend or jax.default_backend()) == "cpu":
        return max(1, min(rows, CPU_TOKENS_PER_PASS // seq_len))
    return rows


class Scorer:
    """Holds one compiled score function per (max_segments, layout) and batch shape."""

    def __init__(self, cfg: DecoderConfig, params: Any, mesh: Optional[Mesh] = None, pad_id: int = 0):
        self.cfg, self.params, self.pad_id = cfg, params, pad_id
        self.mesh = mesh or make_mesh(devices=jax.devices()[:1])
        self._fns: dict[tuple[int, bool], Any] = {}
        self.share_report: Optional[ShareReport] = None  # the last predict()'s, when it shared prompts

    @property
    def has_levels(self) -> bool:
        """Whether the head gives level probabilities (a categorical or ordinal head)."""
        return self.cfg.attribute_head != "regression"

    def _fn(self, max_segments: int, probs: bool = False, shared: bool = False) -> Any:
        key = (max_segments, probs, shared)
        if key not in self._fns:
            cfg = self.cfg
            if shared:  # a kernel whose mask reads prompt ids (rm_jax.models.attention.SHARED_KERNELS)
                kernel = shared_layout_kernel(cfg.attention, dtype=cfg.dtype)
                if kernel == cfg.attention:  # the same function: compiled once for both layouts (serving)
                    self._fns[key] = self._fn(max_segments, probs, False)
                    return self._fns[key]
                cfg = cfg.replace(attention=kernel)
            # Replicated output: every process can read all scores (multi-host validation).
            self._fns[key] = jax.jit(
                make_score_fn(cfg, max_segments, self.mesh, probs), out_shardings=replicated(self.mesh)
            )
        return self._fns[key]

    def shares(self, share: SharePrompts, groups: Optional[Sequence[Hashable]]) -> bool:
        """Whether ``predict(..., groups, share)`` may lay prompts out once: ``share=True`` always (with
        groups); ``auto`` where two examples share a key and the configured kernel reads the shared layout
        (elsewhere the blockwise xla kernel would replace a faster one), and then only where it saves at
        least ``AUTO_MIN_SAVED`` of the tokens."""
        if groups is None or not resolve_share(share, groups):
            return False
        if share == "auto":
            return self.cfg.attention_kernel() in SHARED_KERNELS
        return True

    def score_batch(self, batch: dict, max_segments: int, probs: bool = False, shared: bool = False) -> Any:
        """Attributes E[y] [B, S, A]; with ``probs`` the pair (attributes, level probabilities [B, S, A, K]).
        ``shared``: the batch has the prompt-shared layout (rm_jax.data.prefix_sharing)."""
        if probs and not self.has_levels:
            raise ValueError("level probabilities need a categorical or ordinal head; this model is a regression RM")
        sh = batch_shardings(self.mesh, {k: batch[k] for k in ("input_ids", "segment_ids", "positions")}, accum=False)
        out = jax.device_get(self._fn(max_segments, probs, shared)(self.params, put_batch(batch, sh)))
        if probs:
            return np.asarray(out[0], np.float32), np.asarray(out[1], np.float32)
        return np.asarray(out, dtype=np.float32)

    def predict(
        self,
        ids: Sequence[np.ndarray],
        seq_len: Optional[int] = None,
        rows: int = 16,
        max_segments: int = 16,
        packing: bool = True,
        progress: bool = True,
        desc: str = "scoring",
        probs: bool = False,
        groups: Optional[Sequence[Hashable]] = None,
        share: SharePrompts = False,
    ) -> Any:
        """[N, num_outputs] predictions (E[y] for a distributional head) for token-id sequences, each scored
        alone (packing never mixes them); with ``probs`` also the level probabilities [N, num_labels, K].

        ``groups`` (one key per sequence; equal keys: the same prompt) with ``share`` (``auto`` / True /
        False): examples of a group are laid out as their common token prefix once and each one's rest
        after it (``rm_jax.data.prefix_sharing``), the same scores up to float rounding; what it saved is
        then in ``self.share_report``."""
        n = len(ids)
        out = np.zeros((n, self.cfg.num_outputs), np.float32)
        lev = np.zeros((n, self.cfg.num_labels, self.cfg.label_levels), np.float32) if probs else None
        self.share_report = None
        if n == 0:
            return (out, lev) if probs else out
        longest = max(len(x) for x in ids)
        seq_len = seq_len or _round_up(longest, 64)
        if longest > seq_len:
            raise ValueError(f"a conversation has {longest} tokens, more than seq_len={seq_len}")
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        rows = _round_up(rows_per_pass(max(rows, 1), seq_len), dp)
        shared = packing and self.shares(share, groups)
        ms = max_segments if packing else 1
        lengths = [len(x) for x in ids]
        if shared:
            units, self.share_report = plan_units(ids, list(groups or ()), seq_len, ms)
            # auto: short prompts save too little to pay for the sparser packing of multi-slot units.
            if share == "auto" and self.share_report.prompt_tokens_saved < AUTO_MIN_SAVED * sum(lengths):
                shared, self.share_report = False, None
        if shared:
            bins = plan_shared(units, lengths, seq_len, ms)
        else:
            bins = plan_packed(lengths, seq_len, ms) if packing else [[i] for i in range(n)]
        # Even batches: 17 rows at rows=16 run as 2 x 9, not 16 + 1 with 15 empty rows.
        rows = _round_up(-(-len(bins) // -(-len(bins) // rows)), dp)
        zeros = np.zeros((n, self.cfg.num_labels), np.float32)
        real = self.share_report.tokens if shared else sum(lengths)
        with tqdm(total=real, desc=desc, unit="tok", unit_scale=True, disable=not progress, leave=False) as bar:
            for start in range(0, len(bins), rows):
                chunk = bins[start : start + rows]
                if shared:
                    b = build_shared_batch(ids, zeros, zeros, units, chunk, seq_len, ms, self.pad_id, rows=rows)
                else:
                    b = build_batch(ids, zeros, zeros, chunk, seq_len, ms, self.pad_id, rows=rows)
                scores = self.score_batch(b, ms, probs, shared)
                idx = b["example_index"]
                sel = idx >= 0
                if probs:
                    scores, p = scores
                    lev[idx[sel]] = p[sel]
                out[idx[sel]] = scores[sel]
                bar.update(int((b["segment_ids"] != 0).sum()))
        return (out, lev) if probs else out

    def embed(
        self,
        ids: Sequence[np.ndarray],
        seq_len: Optional[int] = None,
        rows: int = 16,
        max_segments: int = 16,
        progress: bool = True,
        desc: str = "embedding",
    ) -> np.ndarray:
        """[N, hidden] float32: the hidden state the head reads (after the final norm) at each sequence's last
        token, each sequence alone (packed like :meth:`predict`). A gate reads it at a prompt's last token."""
        n, h = len(ids), self.cfg.hidden_size
        out = np.zeros((n, h), np.float32)
        if n == 0:
            return out
        seq_len = seq_len or _round_up(max(len(x) for x in ids), 64)
        key = ("features", max_segments)
        if key not in self._fns:
            cfg, mesh = self.cfg, self.mesh

            def features(params: Any, batch: dict) -> Any:
                with activate(mesh):
                    return RewardModel(cfg).apply(
                        {"params": params}, batch["input_ids"], batch["segment_ids"], batch["positions"],
                        max_segments=max_segments, output="features",
                    )  # fmt: skip

            self._fns[key] = jax.jit(features, out_shardings=replicated(mesh))
        ms, fn = max_segments, self._fns[key]
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        bins = plan_packed([len(x) for x in ids], seq_len, ms)
        rows = _round_up(max(rows, 1), dp)
        zeros = np.zeros((n, 1), np.float32)
        for start in tqdm(range(0, len(bins), rows), desc=desc, disable=not progress, leave=False):
            b = build_batch(ids, zeros, zeros, bins[start : start + rows], seq_len, ms, self.pad_id, rows=rows)
            sh = batch_shardings(self.mesh, {k: b[k] for k in ("input_ids", "segment_ids", "positions")}, False)
            feats = np.asarray(jax.device_get(fn(self.params, put_batch(b, sh))), np.float32)
            idx = b["example_index"]
            out[idx[idx >= 0]] = feats[idx >= 0]
        return out


# ---------------------------------------------------------------- rows -> scores (rm-jax score)


def read_score_rows(path: str) -> list[dict]:
    """Every row parsed and checked before any scoring: errors name the file and the 1-based line."""
    rows = []
    for lineno, obj in iter_jsonl(path):
        try:
            row_to_messages(obj, where=f"{path}: line {lineno}")
        except ConversationError as e:
            raise InputError(str(e)) from None
        rows.append(obj)
    return rows


def score_rows(
    model: Any,
    rows: Sequence[dict],
    weights: WeightSpec = "70b-rewardbench",
    batch_rows: int = 16,
    max_segments: int = 16,
    seq_len: Optional[int] = None,
    progress: bool = True,
    where: Union[str, Sequence[str]] = "input",
    probs: bool = False,
    row_weights: Optional[np.ndarray] = None,
    share_prompts: SharePrompts = "auto",
) -> tuple:
    """(attributes [N, A], reward [N]) for rows in either input form; ``model`` is a
    :class:`rm_jax.runs.read.ScoringModel`. A conversation longer than ``seq_len`` (default: the model's
    max_position_embeddings) is an error naming its row: ``where`` is the file (rows counted from 1) or
    each row's location. With ``probs`` (a categorical or ordinal head): a third element, the level
    probabilities [N, A, K]. ``row_weights`` [N, A] (a prompt gate's, model attribute order) replaces
    ``weights``: reward_i = row_weights_i . attributes_i. Rows with the same conversation before their last
    message share its tokens per ``share_prompts`` (rm_jax.data.prefix_sharing)."""
    if probs and model.cfg.attribute_head == "regression":
        raise InputError("--probs: this model has a regression head (no level probabilities); see docs/heads.md")
    # matched to the model's attribute names
    w = resolve_reward_weights(weights, model.attributes) if row_weights is None else None
    messages = [row_to_messages(r) for r in rows]
    ids = encode(model.tokenizer, messages, model.template)
    limit = seq_len or model.cfg.max_position_embeddings
    for i, x in enumerate(ids):
        if len(x) > limit:
            name = f"{where}: row {i + 1}" if isinstance(where, str) else where[i]
            raise InputError(
                f"{name}: {len(x)} tokens, more than the limit of {limit} "
                f"({'--seq-len' if seq_len else 'the model max_position_embeddings'})"
            )
    longest = max((len(x) for x in ids), default=1)
    seq_len = seq_len or min(max(512, _round_up(longest, 128)), limit)
    groups = [prompt_key(m) for m in messages]
    out = Scorer(model.cfg, model.params, model.mesh, model.pad_id).predict(
        ids, seq_len, batch_rows, max_segments, progress=progress, probs=probs, groups=groups, share=share_prompts
    )
    pred, lev = out if probs else (out, None)
    reward = pred.astype(np.float64) @ w if w is not None else (pred.astype(np.float64) * row_weights).sum(-1)
    return (pred, reward, lev) if probs else (pred, reward)


def prompt_key(messages: Sequence[Any]) -> str:
    """The group key of a conversation's prompt: every message before the last, system messages included.
    Rows with one key may share their prompt's tokens (``rm-jax score``, ``rm-jax serve``)."""
    return json.dumps(list(messages[:-1]), sort_keys=True)


def write_scored(
    path: str,
    rows: Sequence[dict],
    attributes: Sequence[str],
    pred: np.ndarray,
    reward: np.ndarray,
    probs: Optional[np.ndarray] = None,
    row_weights: Optional[np.ndarray] = None,
) -> None:
    """The input rows plus ``attributes`` and ``reward`` (and, given ``probs`` [N, A, K], ``"probs"``:
    {attribute: [P(level 0), ..., P(level K-1)]}; given a gate's ``row_weights`` [N, A], ``"weights"``:
    {attribute: weight} used for that row); written atomically."""

    def out(i: int, r: dict) -> dict:
        o = {**r, "attributes": {a: float(v) for a, v in zip(attributes, pred[i])}, "reward": float(reward[i])}
        if probs is not None:
            o["probs"] = level_probs_record(attributes, probs[i])
        if row_weights is not None:
            o["weights"] = {a: float(v) for a, v in zip(attributes, row_weights[i])}
        return o

    write_jsonl(path, (out(i, r) for i, r in enumerate(rows)))


def level_probs_record(attributes: Sequence[str], probs: np.ndarray) -> dict:
    """{attribute: [P(level 0), ..., P(level K-1)]} for one row's probabilities [A, K] (score and serve)."""
    return {a: [float(x) for x in p] for a, p in zip(attributes, probs)}


def _round_up(x: int, m: int) -> int:
    return ((x + m - 1) // m) * m
