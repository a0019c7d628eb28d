"""The fixed batch shapes the server compiles at start-up, and packing queued rows into one of them.

A jitted function compiles once per input shape, so the server never lets the data choose a shape:
it compiles a short ladder of (rows, seq_len, max_segments) buckets whose token slots halve from
``max_batch_tokens`` down to ``min_batch_tokens``, and every batch is padded up to the smallest bucket
its rows pack into. Big buckets give throughput under load; small ones keep a lone short request
from paying for a full batch. Pure numpy (rm_jax.data.packing does the bin packing).

With prompt sharing (``--share-prompts``), rows with one prompt key are laid out as their common token
prefix once and each row's rest after it (rm_jax.data.prefix_sharing): :func:`plan_shared_bucket` and
:func:`fitting_shared_prefix` are :func:`plan` and :func:`fitting_prefix` for that layout, under the same
token slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import numpy as np

from rm_jax.data.packing import plan_packed
from rm_jax.data.prefix_sharing import ShareReport, Unit, common_prefix_len, plan_shared, plan_units


@dataclass(frozen=True)
class Bucket:
    rows: int
    seq_len: int
    max_segments: int

    @property
    def tokens(self) -> int:
        return self.rows * self.seq_len

    @property
    def slots(self) -> int:  # conversations it can hold
        return self.rows * self.max_segments

    def name(self) -> str:
        return f"{self.rows}x{self.seq_len}"


def ladder(seq_len: int, max_batch_tokens: int, min_batch_tokens: int = 64, max_segments: int = 32) -> list[Bucket]:
    """Buckets, smallest first. Every bucket's rows are ``seq_len`` long except the small ones below one
    full row, which are single rows of ``tokens`` (a short conversation alone runs at [1, 64], not
    [1, seq_len]). Segments per row are capped at seq_len // 8: a templated conversation is longer."""
    out: list[Bucket] = []
    tokens = max_batch_tokens
    while True:
        t = min(seq_len, tokens)
        b = Bucket(rows=max(1, tokens // t), seq_len=t, max_segments=max(1, min(max_segments, t // 8)))
        if b not in out:
            out.append(b)
        if tokens // 2 < max(1, min_batch_tokens):
            break
        tokens //= 2
    return sorted(out, key=lambda b: (b.tokens, b.seq_len))


def plan(lengths: Sequence[int], buckets: Sequence[Bucket]) -> Optional[tuple[Bucket, list[list[int]]]]:
    """(the smallest bucket these conversations pack into, its bins of indices), or None if none fits."""
    if not lengths:
        return None
    longest, total, n = max(lengths), sum(lengths), len(lengths)
    for b in buckets:
        if longest > b.seq_len or total > b.tokens or n > b.slots:
            continue
        bins = plan_packed(list(lengths), b.seq_len, b.max_segments)
        if len(bins) <= b.rows:
            return b, bins
    return None


def fitting_prefix(lengths: Sequence[int], buckets: Sequence[Bucket]) -> int:
    """How many of ``lengths`` (a FIFO queue, oldest first) go into the next batch: the longest prefix that
    packs into the largest bucket. Binary search: packing a prefix is (all but) monotone in its length,
    and any answer it gives packs. At least 1 when the first fits alone."""
    big = buckets[-1]
    hi, tokens = 0, 0
    for n in lengths:  # an upper bound from token slots and segment slots alone
        if tokens + n > big.tokens or hi >= big.slots:
            break
        tokens += n
        hi += 1
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if plan(lengths[:mid], buckets[-1:]) is not None:
            lo = mid
        else:
            hi = mid - 1
    return lo


@dataclass
class SharedPlan:
    bucket: Bucket
    units: list[Unit]
    bins: list[list[int]]  # rows of unit indices
    report: ShareReport


def plan_shared_bucket(
    ids: Sequence[np.ndarray], groups: Sequence[Hashable], buckets: Sequence[Bucket]
) -> Optional[SharedPlan]:
    """The smallest bucket ``ids`` pack into with rows of one ``groups`` key sharing their common token
    prefix, its units and bins; None if none holds them. A group longer than a bucket's rows is split,
    its prompt repeated (the report counts it)."""
    if not ids:
        return None
    lengths = [len(x) for x in ids]
    longest, n = max(lengths), len(lengths)
    for b in buckets:
        if longest > b.seq_len or n > b.slots:
            continue
        units, report = plan_units(ids, groups, b.seq_len, b.max_segments)
        if report.tokens > b.tokens:
            continue
        bins = plan_shared(units, lengths, b.seq_len, b.max_segments)
        if len(bins) <= b.rows:
            return SharedPlan(b, units, bins, report)
    return None


def fitting_shared_prefix(ids: Sequence[np.ndarray], groups: Sequence[Hashable], buckets: Sequence[Bucket]) -> int:
    """:func:`fitting_prefix` for the shared layout: how many of ``ids`` (oldest first) go into the next
    batch, their prompts shared per ``groups``."""
    big = buckets[-1]
    hi = min(len(ids), big.slots)
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if plan_shared_bucket(ids[:mid], groups[:mid], buckets[-1:]) is not None:
            lo = mid
        else:
            hi = mid - 1
    return lo


class SharedTally:
    """The tokens rows take with each prompt group's common token prefix once, kept as rows are added (a
    lower bound on a batch's tokens: splitting a long group repeats its prompt); the batcher's bound on
    how many queued rows to consider for one shared batch."""

    def __init__(self) -> None:
        self.tokens = 0
        self._groups: dict[Hashable, list] = {}  # key -> [first ids, common prefix, count, summed length]

    def cost(self, x: np.ndarray, key: Hashable) -> int:
        """The tokens after adding ``x`` with ``key`` (nothing added)."""
        return self.tokens + self._delta(x, key)[0]

    def add(self, x: np.ndarray, key: Hashable) -> None:
        delta, state = self._delta(x, key)
        self.tokens += delta
        self._groups[key] = state

    def _delta(self, x: np.ndarray, key: Hashable) -> tuple[int, list]:
        g = self._groups.get(key)
        if g is None:
            return len(x), [x, 0, 1, len(x)]
        first, p, count, total = g
        q = common_prefix_len([first, x])
        p = q if count == 1 else min(p, q)
        before = total - (count - 1) * g[1]
        after = total + len(x) - count * p
        return after - before, [first, p, count + 1, total + len(x)]
