"""Sequence packing: lay tokenized conversations out as fixed-shape numpy batches.

A row of a batch holds one or more whole conversations back to back ("segments"). Shapes
never depend on the data, so a jitted step compiles once per (rows, seq_len, max_segments):

- ``input_ids``     [B, T] int32   token ids, ``pad_id`` where empty
- ``segment_ids``   [B, T] int32   1..k for the k conversations in a row, 0 on padding
- ``positions``     [B, T] int32   0 at the first token of each segment, 0 on padding
- ``labels``        [B, S, A] f32  slot s = the conversation with segment id s + 1
- ``label_mask``    [B, S, A] f32  1 where a label is present; 0 for empty slots
- ``example_index`` [B, S] int64   input row of each slot, -1 for empty slots

The model reads the hidden state at the last token of each segment (see
``last_token_index``). Attention must be masked by ``segment_ids`` so segments never see each
other; ``positions`` restarting per segment keeps rotary embeddings identical to running the
conversation alone.

Pure numpy on purpose: this runs in the host input pipeline and in tests without JAX.
"""

from __future__ import annotations

import bisect
from typing import Mapping, Optional, Sequence, get_args

import numpy as np

from rm_jax.core.config import PaddingSide

__all__ = [
    "plan_packed",
    "plan_padded",
    "build_batch",
    "batches",
    "fill_rate",
    "last_token_index",
    "token_targets",
]


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def plan_packed(
    lengths: Sequence[int], seq_len: int, max_segments: int, counts: Optional[Sequence[int]] = None
) -> list[list[int]]:
    """Assign example indices to rows of capacity ``seq_len`` holding <= ``max_segments`` each.

    ``counts[i]`` (default 1): the segment slots item i takes (a shared-prompt unit takes one per
    response, ``rm_jax.data.prefix_sharing``).

    Best-fit-decreasing: examples are visited longest first (ties by lower index) and each
    goes into the open row with the least remaining room that still fits it, ties to the
    older row; if none fits, a new row opens. Open rows live in a list sorted by
    (remaining, row id) so each placement is a bisect, O(n log n) overall instead of the
    O(n * rows) scan. Rows that are full (no room or ``max_segments`` examples) leave the
    list, so they are never probed again.

    The result is deterministic. Indices inside a row are ascending; rows are ordered by
    their smallest index, so the row order follows the caller's example order (shuffle the
    examples, or the rows, with a seeded RNG for training).

    Raises ValueError for an example longer than ``seq_len`` or shorter than 1 token: the
    over-length policy (truncate / drop) belongs to the caller, before packing.
    """
    seq_len = _check_positive("seq_len", seq_len)
    max_segments = _check_positive("max_segments", max_segments)
    lens = np.asarray(lengths)
    if lens.ndim != 1:
        raise ValueError(f"lengths must be 1-D, got shape {lens.shape}")
    if lens.size == 0:
        return []
    if lens.dtype.kind not in "iu":
        raise ValueError(f"lengths must be integers, got dtype {lens.dtype}")
    too_long = np.flatnonzero(lens > seq_len)
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(
            f"example {i} has {int(lens[i])} tokens > seq_len {seq_len} "
            f"({too_long.size} over-length in total); apply the over-length policy first"
        )
    empty = np.flatnonzero(lens < 1)
    if empty.size:
        i = int(empty[0])
        raise ValueError(f"example {i} has length {int(lens[i])}; every example needs >= 1 token")

    cnt = [1] * lens.size if counts is None else [int(c) for c in counts]
    if len(cnt) != lens.size or any(c < 1 or c > max_segments for c in cnt):
        raise ValueError(f"counts must give 1..max_segments={max_segments} slots for each of {lens.size} items")

    # Stable sort on -length: longest first, equal lengths in index order (determinism).
    order = np.argsort(-lens.astype(np.int64), kind="stable")
    lens_list = lens.tolist()

    rows: list[list[int]] = []
    room: list[int] = []
    slots: list[int] = []
    open_rows: list[tuple[int, int]] = []  # (remaining capacity, row id), sorted
    for i in order.tolist():
        n, c = lens_list[i], cnt[i]
        pos = bisect.bisect_left(open_rows, (n, -1))
        # With counts > 1 the tightest row may lack slots: take the next that has them.
        while pos < len(open_rows) and slots[open_rows[pos][1]] + c > max_segments:
            pos += 1
        if pos < len(open_rows):
            _, r = open_rows.pop(pos)
        else:
            r = len(rows)
            rows.append([])
            room.append(seq_len)
            slots.append(0)
        rows[r].append(i)
        room[r] -= n
        slots[r] += c
        # A row with 0 room can't take anything (lengths >= 1), so it is closed too.
        if room[r] > 0 and slots[r] < max_segments:
            bisect.insort(open_rows, (room[r], r))

    for row in rows:
        row.sort()
    rows.sort(key=lambda row: row[0])
    return rows


def plan_padded(n: int) -> list[list[int]]:
    """One example per row, in input order (the unpacked baseline, and left-padded eval)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return [[i] for i in range(int(n))]


def batches(bins: list[list[int]], rows_per_batch: int) -> list[list[list[int]]]:
    """Split rows into consecutive groups of ``rows_per_batch``; the last may be short.

    Pass ``rows=rows_per_batch`` to ``build_batch`` so the short one keeps the fixed shape.
    """
    rows_per_batch = _check_positive("rows_per_batch", rows_per_batch)
    return [list(bins[i : i + rows_per_batch]) for i in range(0, len(bins), rows_per_batch)]


def build_batch(
    examples: Sequence[np.ndarray],
    labels: np.ndarray,
    label_mask: np.ndarray,
    bins: Sequence[list[int]],
    seq_len: int,
    max_segments: int,
    pad_id: int,
    rows: int | None = None,
    padding_side: str = "right",
) -> dict[str, np.ndarray]:
    """Lay ``bins`` out as one batch of ``rows`` rows (default ``len(bins)``).

    ``examples[i]`` is a 1-D integer token array, ``labels[i]`` / ``label_mask[i]`` its [A]
    label vector and presence mask. Rows beyond ``len(bins)`` are all padding (segment id 0,
    mask 0, example index -1). ``padding_side="left"`` right-aligns tokens and needs exactly
    one example per bin; positions still start at 0 at the first real token, so the model
    sees the same positions either way.

    Labels under a zero mask are written as 0 so a NaN placeholder for a missing label can
    never leak into a loss through ``0 * NaN``.
    """
    seq_len = _check_positive("seq_len", seq_len)
    max_segments = _check_positive("max_segments", max_segments)
    if padding_side not in get_args(PaddingSide):
        raise ValueError(f"padding_side must be {' or '.join(map(repr, get_args(PaddingSide)))}, got {padding_side!r}")
    n_rows = len(bins) if rows is None else _check_positive("rows", rows)
    if n_rows < len(bins):
        raise ValueError(f"rows={n_rows} < number of bins {len(bins)}")
    if isinstance(pad_id, bool) or not isinstance(pad_id, (int, np.integer)):
        raise ValueError(f"pad_id must be an integer, got {pad_id!r}")
    info32 = np.iinfo(np.int32)
    if not info32.min <= pad_id <= info32.max:
        raise ValueError(f"pad_id {pad_id} does not fit int32")

    labels = np.asarray(labels)
    label_mask = np.asarray(label_mask)
    if labels.ndim != 2 or labels.shape != label_mask.shape:
        raise ValueError(f"labels and label_mask must both be [N, A]; got {labels.shape} and {label_mask.shape}")
    n_examples, n_attrs = labels.shape
    if len(examples) != n_examples:
        raise ValueError(f"{len(examples)} examples but {n_examples} label rows")

    input_ids = np.full((n_rows, seq_len), pad_id, dtype=np.int32)
    segment_ids = np.zeros((n_rows, seq_len), dtype=np.int32)
    positions = np.zeros((n_rows, seq_len), dtype=np.int32)
    out_labels = np.zeros((n_rows, max_segments, n_attrs), dtype=np.float32)
    out_mask = np.zeros((n_rows, max_segments, n_attrs), dtype=np.float32)
    example_index = np.full((n_rows, max_segments), -1, dtype=np.int64)

    seen: set[int] = set()
    for r, row in enumerate(bins):
        row = [int(i) for i in row]
        if not row:
            raise ValueError(f"bin {r} is empty; use rows= for all-padding rows")
        if len(row) > max_segments:
            raise ValueError(f"bin {r} has {len(row)} examples > max_segments {max_segments}")
        if padding_side == "left" and len(row) != 1:
            raise ValueError(f"padding_side='left' needs one example per bin; bin {r} has {len(row)}")
        toks = []
        for i in row:
            if not 0 <= i < n_examples:
                raise ValueError(f"bin {r}: example index {i} out of range [0, {n_examples})")
            if i in seen:
                # A repeated example would be double-counted in loss and metrics.
                raise ValueError(f"example {i} appears more than once in the batch")
            seen.add(i)
            t = np.asarray(examples[i])
            if t.ndim != 1 or t.size == 0 or t.dtype.kind not in "iu":
                raise ValueError(
                    f"example {i} must be a non-empty 1-D integer array, got shape {t.shape} dtype {t.dtype}"
                )
            if t.min() < info32.min or t.max() > info32.max:
                raise ValueError(f"example {i} has token ids outside int32")
            toks.append(t)
        total = sum(t.size for t in toks)
        if total > seq_len:
            raise ValueError(f"bin {r} holds {total} tokens > seq_len {seq_len}")

        start = seq_len - total if padding_side == "left" else 0
        for s, (i, t) in enumerate(zip(row, toks)):
            end = start + t.size
            input_ids[r, start:end] = t
            segment_ids[r, start:end] = s + 1
            positions[r, start:end] = np.arange(t.size, dtype=np.int32)
            m = label_mask[i].astype(np.float32)
            out_mask[r, s] = m
            out_labels[r, s] = np.where(m != 0, labels[i], 0.0)
            example_index[r, s] = i
            start = end

    return {
        "input_ids": input_ids,
        "segment_ids": segment_ids,
        "positions": positions,
        "labels": out_labels,
        "label_mask": out_mask,
        "example_index": example_index,
    }


def fill_rate(batch: Mapping[str, np.ndarray]) -> float:
    """Fraction of token slots holding real tokens.

    Counted from ``segment_ids`` rather than ``input_ids != pad_id`` because a real
    conversation may legitimately contain the pad token.
    """
    seg = np.asarray(batch["segment_ids"])
    return float(np.count_nonzero(seg) / seg.size) if seg.size else 0.0


def last_token_index(segment_ids: np.ndarray, max_segments: int) -> np.ndarray:
    """[B, S] int32: index of the last token of segment s + 1 in each row, 0 if absent.

    Numpy reference for the gather the model does. Only run ends are scattered, and with
    ``maximum`` so the answer is the last occurrence even for non-contiguous ids.
    """
    max_segments = _check_positive("max_segments", max_segments)
    seg = np.asarray(segment_ids)
    if seg.ndim != 2:
        raise ValueError(f"segment_ids must be [B, T], got shape {seg.shape}")
    if seg.size and (seg.min() < 0 or seg.max() > max_segments):
        raise ValueError(f"segment_ids must lie in [0, {max_segments}]")
    out = np.zeros((seg.shape[0], max_segments), dtype=np.int32)
    # A token ends a run when the next token has a different id (or the row ends).
    is_end = np.ones_like(seg, dtype=bool)
    is_end[:, :-1] = seg[:, :-1] != seg[:, 1:]
    is_end &= seg != 0
    b, t = np.nonzero(is_end)
    np.maximum.at(out, (b, seg[b, t] - 1), t.astype(np.int32))
    return out


def token_targets(batch: Mapping[str, np.ndarray], response_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Next-token targets [B, T] int32 and their loss mask [B, T] float32 for a packed causal-LM batch.

    Token t predicts token t + 1 of the same segment; the mask is 1 where that next token is a
    response token of its example (position >= ``response_start[example]``), so prompts, pads and
    the boundaries between packed conversations never enter the loss.
    """
    ids, seg, pos = batch["input_ids"], batch["segment_ids"], batch["positions"]
    slot = np.clip(seg - 1, 0, None)
    example = np.take_along_axis(batch["example_index"], slot.astype(np.int64), axis=1)  # [B, T]
    starts = np.asarray(response_start, np.int64)
    start = np.where(seg > 0, starts[np.clip(example, 0, None)], np.iinfo(np.int32).max)
    targets = np.zeros_like(ids)
    mask = np.zeros(ids.shape, np.float32)
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0)
    targets[:, :-1] = np.where(same, ids[:, 1:], 0)
    mask[:, :-1] = same & (pos[:, 1:] >= start[:, :-1])
    return targets, mask
