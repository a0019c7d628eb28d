"""Batched, packed forward passes: predictions for every example, in input order.

Shared by validation during training, ``rm-jax eval``, ``rm-jax score`` and serving. The row-level
functions (:func:`read_score_rows`, :func:`score_rows`, :func:`write_scored`) are ``rm-jax score``
as a library.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from rm_jax.core.attributes import WeightSpec, resolve_reward_weights
from rm_jax.core.errors import ConversationError, InputError
from rm_jax.core.files import iter_jsonl, write_jsonl
from rm_jax.data.conversation import encode, row_to_messages
from rm_jax.data.packing import build_batch, plan_packed
from rm_jax.engine.train_step import batch_shardings, make_score_fn, put_batch
from rm_jax.models.llama import DecoderConfig
from rm_jax.models.sharding import make_mesh, replicated

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
    """Holds one compiled score function per (rows, seq_len, max_segments) shape."""

    def __init__(self, cfg: DecoderConfig, params: Any, mesh: Optional[Mesh] = None, pad_id: int = 0):
        self.cfg, self.params, self.pad_id = cfg, params, pad_id
        self.mesh = mesh or make_mesh(devices=jax.devices()[:1])
        self._fns: dict[int, Any] = {}

    @property
    def has_levels(self) -> bool:
        """Whether the head gives level probabilities (a categorical or ordinal head)."""
        return self.cfg.attribute_head != "regression"

    def _fn(self, max_segments: int, probs: bool = False) -> Any:
        key = (max_segments, probs)
        if key not in self._fns:
            # Replicated output: every process can read all scores (multi-host validation).
            self._fns[key] = jax.jit(
                make_score_fn(self.cfg, max_segments, self.mesh, probs), out_shardings=replicated(self.mesh)
            )
        return self._fns[key]

    def score_batch(self, batch: dict, max_segments: int, probs: bool = False) -> Any:
        """Attributes E[y] [B, S, A]; with ``probs`` the pair (attributes, level probabilities [B, S, A, K])."""
        if probs and not self.has_levels:
            raise ValueError("level probabilities need a categorical or ordinal head; this model is a regression RM")
        sh = batch_shardings(self.mesh, {k: batch[k] for k in ("input_ids", "segment_ids", "positions")}, accum=False)
        out = jax.device_get(self._fn(max_segments, probs)(self.params, put_batch(batch, sh)))
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
    ) -> Any:
        """[N, num_labels] predictions (E[y] for a distributional head) for token-id sequences, each scored
        alone (packing never mixes them); with ``probs`` also the level probabilities [N, num_labels, K]."""
        n = len(ids)
        out = np.zeros((n, self.cfg.num_labels), np.float32)
        lev = np.zeros((n, self.cfg.num_labels, self.cfg.label_levels), np.float32) if probs else None
        if n == 0:
            return (out, lev) if probs else out
        longest = max(len(x) for x in ids)
        seq_len = seq_len or _round_up(longest, 64)
        if longest > seq_len:
            raise ValueError(f"a conversation has {longest} tokens, more than seq_len={seq_len}")
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        rows = _round_up(rows_per_pass(max(rows, 1), seq_len), dp)
        ms = max_segments if packing else 1
        bins = plan_packed([len(x) for x in ids], seq_len, ms) if packing else [[i] for i in range(n)]
        # Even batches: 17 rows at rows=16 run as 2 x 9, not 16 + 1 with 15 empty rows.
        rows = _round_up(-(-len(bins) // -(-len(bins) // rows)), dp)
        zeros = np.zeros((n, self.cfg.num_labels), np.float32)
        real = sum(len(x) for x in ids)
        with tqdm(total=real, desc=desc, unit="tok", unit_scale=True, disable=not progress, leave=False) as bar:
            for start in range(0, len(bins), rows):
                chunk = bins[start : start + rows]
                b = build_batch(ids, zeros, zeros, chunk, seq_len, ms, self.pad_id, rows=rows)
                scores = self.score_batch(b, ms, probs)
                idx = b["example_index"]
                sel = idx >= 0
                if probs:
                    scores, p = scores
                    lev[idx[sel]] = p[sel]
                out[idx[sel]] = scores[sel]
                bar.update(int((b["segment_ids"] > 0).sum()))
        return (out, lev) if probs else out


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
) -> tuple:
    """(attributes [N, A], reward [N]) for rows in either input form; ``model`` is a
    :class:`rm_jax.runs.read.ScoringModel`. A conversation longer than ``seq_len`` (default: the model's
    max_position_embeddings) is an error naming its row: ``where`` is the file (rows counted from 1) or
    each row's location. With ``probs`` (a categorical or ordinal head): a third element, the level
    probabilities [N, A, K]."""
    if probs and model.cfg.attribute_head == "regression":
        raise InputError("--probs: this model has a regression head (no level probabilities); see docs/heads.md")
    w = resolve_reward_weights(weights, model.attributes)  # matched to the model's attribute names
    ids = encode(model.tokenizer, [row_to_messages(r) for r in rows], model.template)
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
    out = Scorer(model.cfg, model.params, model.mesh, model.pad_id).predict(
        ids, seq_len, batch_rows, max_segments, progress=progress, probs=probs
    )
    pred, lev = out if probs else (out, None)
    reward = pred.astype(np.float64) @ w
    return (pred, reward, lev) if probs else (pred, reward)


def write_scored(
    path: str,
    rows: Sequence[dict],
    attributes: Sequence[str],
    pred: np.ndarray,
    reward: np.ndarray,
    probs: Optional[np.ndarray] = None,
) -> None:
    """The input rows plus ``attributes`` and ``reward`` (and, given ``probs`` [N, A, K], ``"probs"``:
    {attribute: [P(level 0), ..., P(level K-1)]}); written atomically."""

    def out(i: int, r: dict) -> dict:
        o = {**r, "attributes": {a: float(v) for a, v in zip(attributes, pred[i])}, "reward": float(reward[i])}
        if probs is not None:
            o["probs"] = level_probs_record(attributes, probs[i])
        return o

    write_jsonl(path, (out(i, r) for i, r in enumerate(rows)))


def level_probs_record(attributes: Sequence[str], probs: np.ndarray) -> dict:
    """{attribute: [P(level 0), ..., P(level K-1)]} for one row's probabilities [A, K] (score and serve)."""
    return {a: [float(x) for x in p] for a, p in zip(attributes, probs)}


def _round_up(x: int, m: int) -> int:
    return ((x + m - 1) // m) * m
