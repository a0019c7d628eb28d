"""Batched, packed forward passes: predictions for every example, in input order.

Shared by validation during training, ``rm-jax eval`` and ``rm-jax score``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from rm_jax.data.packing import build_batch, plan_packed
from rm_jax.models.llama import DecoderConfig
from rm_jax.sharding import make_mesh, replicated
from rm_jax.step import batch_shardings, make_score_fn, put_batch


class Scorer:
    """Holds one compiled score function per (rows, seq_len, max_segments) shape."""

    def __init__(self, cfg: DecoderConfig, params: Any, mesh: Optional[Mesh] = None, pad_id: int = 0):
        self.cfg, self.params, self.pad_id = cfg, params, pad_id
        self.mesh = mesh or make_mesh(devices=jax.devices()[:1])
        self._fns: dict[int, Any] = {}

    def _fn(self, max_segments: int) -> Any:
        if max_segments not in self._fns:
            # Replicated output: every process can read all scores (multi-host validation).
            self._fns[max_segments] = jax.jit(make_score_fn(self.cfg, max_segments, self.mesh),
                                              out_shardings=replicated(self.mesh))
        return self._fns[max_segments]

    def score_batch(self, batch: dict, max_segments: int) -> np.ndarray:
        sh = batch_shardings(self.mesh, {k: batch[k] for k in ("input_ids", "segment_ids", "positions")}, accum=False)
        out = self._fn(max_segments)(self.params, put_batch(batch, sh))
        return np.asarray(jax.device_get(out), dtype=np.float32)

    def predict(self, ids: Sequence[np.ndarray], seq_len: Optional[int] = None, rows: int = 16,
                max_segments: int = 16, packing: bool = True, progress: bool = True, desc: str = "scoring") -> np.ndarray:
        """[N, num_labels] predictions for token-id sequences, each scored alone (packing never mixes them)."""
        n = len(ids)
        out = np.zeros((n, self.cfg.num_labels), np.float32)
        if n == 0:
            return out
        longest = max(len(x) for x in ids)
        seq_len = seq_len or _round_up(longest, 64)
        if longest > seq_len:
            raise ValueError(f"a conversation has {longest} tokens, more than seq_len={seq_len}")
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        rows = _round_up(max(rows, 1), dp)
        ms = max_segments if packing else 1
        bins = plan_packed([len(x) for x in ids], seq_len, ms) if packing else [[i] for i in range(n)]
        # Even batches: 17 rows at rows=16 run as 2 x 9, not 16 + 1 with 15 empty rows.
        rows = _round_up(-(-len(bins) // -(-len(bins) // rows)), dp)
        zeros = np.zeros((n, self.cfg.num_labels), np.float32)
        real = sum(len(x) for x in ids)
        with tqdm(total=real, desc=desc, unit="tok", unit_scale=True, disable=not progress, leave=False) as bar:
            for start in range(0, len(bins), rows):
                chunk = bins[start:start + rows]
                b = build_batch(ids, zeros, zeros, chunk, seq_len, ms, self.pad_id, rows=rows)
                scores = self.score_batch(b, ms)
                idx = b["example_index"]
                sel = idx >= 0
                out[idx[sel]] = scores[sel]
                bar.update(int((b["segment_ids"] > 0).sum()))
        return out


def _round_up(x: int, m: int) -> int:
    return ((x + m - 1) // m) * m
