"""Tests for rm_jax.data.packing: planning, batch layout, and the last-token reference."""

from __future__ import annotations

import numpy as np
import pytest

from rm_jax.data.packing import (
    batches,
    build_batch,
    fill_rate,
    last_token_index,
    plan_packed,
    plan_padded,
)

SEQ_LEN = 4096
MAX_SEGMENTS = 64
PAD = 0


def _lognormal(rng: np.random.Generator, mean: float, std: float, n: int) -> np.ndarray:
    # Parameterised by the target mean/std rather than the underlying normal's mu/sigma.
    s2 = np.log1p((std / mean) ** 2)
    return rng.lognormal(np.log(mean) - s2 / 2, np.sqrt(s2), n)


def helpsteer2_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Conversation lengths in tokens shaped like HelpSteer2 (chars / 4, see the paper).

    Prompt 712.6 +- 877.8 chars, response 1492.6 +- 1065.7 chars, plus a small chat-template
    overhead; clipped to the context so the over-length policy is already applied.
    """
    rng = np.random.default_rng(seed)
    prompt = _lognormal(rng, 712.6, 877.8, n) / 4
    response = _lognormal(rng, 1492.6, 1065.7, n) / 4
    return np.clip(np.rint(prompt + response + 16), 1, SEQ_LEN).astype(np.int64)


def make_examples(lengths, n_attrs: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    examples = [rng.integers(1, 32000, size=int(n), dtype=np.int32) for n in lengths]
    labels = rng.uniform(0, 4, size=(len(lengths), n_attrs)).astype(np.float32)
    mask = (rng.uniform(size=(len(lengths), n_attrs)) < 0.8).astype(np.float32)
    labels[mask == 0] = np.nan  # missing labels must not leak into the batch
    return examples, labels, mask


def slow_layout(examples, labels, mask, bins, seq_len, max_segments, pad_id, rows, side):
    """Straightforward per-token re-derivation of what build_batch should produce."""
    n_attrs = labels.shape[1]
    ids = [[pad_id] * seq_len for _ in range(rows)]
    seg = [[0] * seq_len for _ in range(rows)]
    pos = [[0] * seq_len for _ in range(rows)]
    lab = np.zeros((rows, max_segments, n_attrs), np.float32)
    lmask = np.zeros((rows, max_segments, n_attrs), np.float32)
    idx = np.full((rows, max_segments), -1, np.int64)
    last = np.zeros((rows, max_segments), np.int64)
    for r, row in enumerate(bins):
        total = sum(len(examples[i]) for i in row)
        t = seq_len - total if side == "left" else 0
        for s, i in enumerate(row):
            for p, tok in enumerate(examples[i]):
                ids[r][t], seg[r][t], pos[r][t] = int(tok), s + 1, p
                last[r, s] = t
                t += 1
            for a in range(n_attrs):
                if mask[i, a] != 0:
                    lab[r, s, a] = labels[i, a]
                    lmask[r, s, a] = mask[i, a]
            idx[r, s] = i
    return {
        "input_ids": np.array(ids, np.int32),
        "segment_ids": np.array(seg, np.int32),
        "positions": np.array(pos, np.int32),
        "labels": lab,
        "label_mask": lmask,
        "example_index": idx,
        "last": last,
    }


def assert_batch_matches(batch, expected):
    dtypes = {
        "input_ids": np.int32,
        "segment_ids": np.int32,
        "positions": np.int32,
        "labels": np.float32,
        "label_mask": np.float32,
        "example_index": np.int64,
    }
    assert set(batch) == set(dtypes)
    for key, dtype in dtypes.items():
        assert batch[key].dtype == dtype, key
        np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)
    S = batch["example_index"].shape[1]
    np.testing.assert_array_equal(last_token_index(batch["segment_ids"], S), expected["last"])


def check_plan(bins, lengths, seq_len, max_segments):
    flat = [i for row in bins for i in row]
    assert sorted(flat) == list(range(len(lengths))), "every example exactly once"
    for row in bins:
        assert row, "no empty rows"
        assert row == sorted(row), "ascending index order within a row"
        assert len(row) <= max_segments
        assert sum(int(lengths[i]) for i in row) <= seq_len
    firsts = [row[0] for row in bins]
    assert firsts == sorted(firsts), "rows ordered by smallest index"


# --------------------------------------------------------------------------- planning


def test_helpsteer2_fill_rate_and_coverage():
    lengths = helpsteer2_lengths(20_000)
    bins = plan_packed(lengths, SEQ_LEN, MAX_SEGMENTS)
    check_plan(bins, lengths, SEQ_LEN, MAX_SEGMENTS)
    plan_fill = lengths.sum() / (len(bins) * SEQ_LEN)

    # Same number from real batches, including the padded rows of the last short batch.
    examples, labels, mask = make_examples(lengths)
    rows_per_batch = 16
    real = slots = 0
    seen = []
    for group in batches(bins, rows_per_batch):
        b = build_batch(examples, labels, mask, group, SEQ_LEN, MAX_SEGMENTS, PAD, rows=rows_per_batch)
        assert b["input_ids"].shape == (rows_per_batch, SEQ_LEN)
        real += fill_rate(b) * b["segment_ids"].size
        slots += b["segment_ids"].size
        ei = b["example_index"]
        seen.extend(ei[ei >= 0].tolist())
    batch_fill = real / slots
    print(
        f"\nHelpSteer2-shaped: {len(lengths)} examples, mean {lengths.mean():.0f} tokens -> "
        f"{len(bins)} rows of {SEQ_LEN}; fill {plan_fill:.4f} (plan), {batch_fill:.4f} (batches)"
    )
    assert plan_fill >= 0.95
    assert batch_fill >= 0.95
    assert sorted(seen) == list(range(len(lengths)))


def test_plan_is_deterministic():
    lengths = helpsteer2_lengths(5_000, seed=1)
    first = plan_packed(lengths, SEQ_LEN, MAX_SEGMENTS)
    assert plan_packed(lengths, SEQ_LEN, MAX_SEGMENTS) == first
    assert plan_packed(lengths.tolist(), SEQ_LEN, MAX_SEGMENTS) == first


@pytest.mark.parametrize("seq_len,max_segments", [(64, 1), (64, 3), (100, 8), (1000, 64)])
def test_plan_respects_limits(seq_len, max_segments):
    rng = np.random.default_rng(seq_len + max_segments)
    lengths = rng.integers(1, seq_len + 1, size=500)
    bins = plan_packed(lengths, seq_len, max_segments)
    check_plan(bins, lengths, seq_len, max_segments)
    if max_segments == 1:
        assert len(bins) == len(lengths)


def test_best_fit_decreasing_on_a_small_case():
    # Longest first: 6 -> new A (room 4); 5 -> new B (room 5); 4 -> A (tightest fit, full);
    # 3 -> B (room 2); 2 -> B (full); 1 -> nothing open, new C.
    assert plan_packed([6, 5, 4, 3, 2, 1], 10, 8) == [[0, 2], [1, 3, 4], [5]]
    # The segment cap closes a row even though tokens still fit.
    assert plan_packed([1, 1, 1, 1, 1], 10, 2) == [[0, 1], [2, 3], [4]]


def test_plan_edge_cases_and_errors():
    assert plan_packed([], 16, 4) == []
    assert plan_padded(0) == []
    assert plan_padded(3) == [[0], [1], [2]]
    assert plan_packed([16], 16, 4) == [[0]]
    with pytest.raises(ValueError, match="example 2"):
        plan_packed([3, 4, 17, 5], 16, 4)
    with pytest.raises(ValueError, match="example 1"):
        plan_packed([3, 0, 5], 16, 4)
    with pytest.raises(ValueError):
        plan_packed([3], 0, 4)
    with pytest.raises(ValueError):
        plan_packed([3], 16, 0)
    with pytest.raises(ValueError):
        plan_packed([1.5], 16, 4)
    with pytest.raises(ValueError):
        plan_padded(-1)


def test_batches_split():
    bins = [[i] for i in range(7)]
    groups = batches(bins, 3)
    assert groups == [[[0], [1], [2]], [[3], [4], [5]], [[6]]]
    assert batches([], 3) == []
    with pytest.raises(ValueError):
        batches(bins, 0)


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("seed", range(6))
def test_packed_layout_matches_slow_rederivation(seed):
    rng = np.random.default_rng(100 + seed)
    seq_len = int(rng.integers(8, 200))
    max_segments = int(rng.integers(1, 9))
    lengths = rng.integers(1, seq_len + 1, size=int(rng.integers(1, 60)))
    examples, labels, mask = make_examples(lengths, n_attrs=int(rng.integers(1, 6)), seed=seed)
    bins = plan_packed(lengths, seq_len, max_segments)
    rows = len(bins) + int(rng.integers(0, 3))  # some all-padding rows
    pad_id = int(rng.integers(0, 5))
    batch = build_batch(examples, labels, mask, bins, seq_len, max_segments, pad_id, rows=rows)
    expected = slow_layout(examples, labels, mask, bins, seq_len, max_segments, pad_id, rows, "right")
    assert_batch_matches(batch, expected)
    assert not np.isnan(batch["labels"]).any()


def test_helpsteer2_batches_match_slow_rederivation():
    lengths = helpsteer2_lengths(2_000, seed=2)
    examples, labels, mask = make_examples(lengths, seed=2)
    bins = plan_packed(lengths, SEQ_LEN, MAX_SEGMENTS)
    group = batches(bins, 4)[0]
    batch = build_batch(examples, labels, mask, group, SEQ_LEN, MAX_SEGMENTS, PAD, rows=4)
    expected = slow_layout(examples, labels, mask, group, SEQ_LEN, MAX_SEGMENTS, PAD, 4, "right")
    assert_batch_matches(batch, expected)


def test_padded_plan_right_and_left():
    lengths = [5, 1, 8, 3]
    examples, labels, mask = make_examples(lengths, n_attrs=3, seed=7)
    bins = plan_padded(len(lengths))
    for side in ("right", "left"):
        batch = build_batch(examples, labels, mask, bins, 8, 1, 99, rows=5, padding_side=side)
        expected = slow_layout(examples, labels, mask, bins, 8, 1, 99, 5, side)
        assert_batch_matches(batch, expected)

    left = build_batch(examples, labels, mask, bins, 8, 1, 99, padding_side="left")
    # Row 0 holds a 5-token example right-aligned in 8 slots.
    np.testing.assert_array_equal(left["segment_ids"][0], [0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(left["positions"][0], [0, 0, 0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(left["input_ids"][0, :3], [99, 99, 99])
    np.testing.assert_array_equal(left["input_ids"][0, 3:], examples[0])
    # Every left-padded conversation ends at the last column.
    np.testing.assert_array_equal(last_token_index(left["segment_ids"], 1)[:, 0], [7, 7, 7, 7])


def test_left_padding_allows_spare_segment_slots():
    examples, labels, mask = make_examples([2, 3], n_attrs=2)
    batch = build_batch(examples, labels, mask, [[1], [0]], 4, 3, 0, padding_side="left")
    np.testing.assert_array_equal(batch["example_index"], [[1, -1, -1], [0, -1, -1]])
    np.testing.assert_array_equal(batch["segment_ids"], [[0, 1, 1, 1], [0, 0, 1, 1]])


def test_fill_rate_counts_segments_not_pad_tokens():
    # A real token equal to pad_id still counts as filled.
    examples = [np.array([0, 0, 5], np.int32)]
    labels, mask = np.ones((1, 1), np.float32), np.ones((1, 1), np.float32)
    batch = build_batch(examples, labels, mask, [[0]], 4, 2, pad_id=0, rows=2)
    assert fill_rate(batch) == pytest.approx(3 / 8)


def test_last_token_index_reference():
    seg = np.array(
        [
            [1, 1, 2, 2, 2, 3, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1, 1, 1],
        ],
        np.int32,
    )
    expected = [[1, 4, 5, 0], [0, 0, 0, 0], [7, 0, 0, 0], [7, 0, 0, 0]]
    np.testing.assert_array_equal(last_token_index(seg, 4), expected)
    with pytest.raises(ValueError):
        last_token_index(seg, 2)  # id 3 does not fit 2 slots


def test_build_batch_rejects_bad_arguments():
    examples, labels, mask = make_examples([3, 4, 5], n_attrs=2)

    def build(bins, **kw):
        args = dict(seq_len=8, max_segments=2, pad_id=0)
        args.update(kw)
        return build_batch(examples, labels, mask, bins, **args)

    with pytest.raises(ValueError, match="rows"):
        build([[0], [1], [2]], rows=2)
    with pytest.raises(ValueError, match="seq_len"):
        build([[1, 2]])  # 9 tokens > 8
    with pytest.raises(ValueError, match="max_segments"):
        build([[0, 1, 2]], seq_len=16)
    with pytest.raises(ValueError, match="left"):
        build([[0, 1]], padding_side="left")
    with pytest.raises(ValueError, match="padding_side"):
        build([[0]], padding_side="center")
    with pytest.raises(ValueError, match="more than once"):
        build([[0], [0]])
    with pytest.raises(ValueError, match="out of range"):
        build([[3]])
    with pytest.raises(ValueError, match="empty"):
        build([[]])
    with pytest.raises(ValueError):
        build([[0]], seq_len=0)
    with pytest.raises(ValueError):
        build_batch(examples, labels, mask[:, :1], [[0]], 8, 2, 0)
    with pytest.raises(ValueError):
        build_batch(examples[:2], labels, mask, [[0]], 8, 2, 0)
    with pytest.raises(ValueError, match="integer"):
        build_batch([np.array([1.0, 2.0])], labels[:1], mask[:1], [[0]], 8, 2, 0)
