"""The shared-prompt layout: every example recovered whole from its row, positions continuing from the
prompt, groups split by the stated rule, counts of what was saved."""

from __future__ import annotations

import numpy as np
import pytest

from rm_jax.data.packing import plan_packed
from rm_jax.data.prefix_sharing import (
    Unit,
    build_shared_batch,
    common_prefix_len,
    plan_shared,
    plan_units,
    resolve_share,
)


def _groups(seed: int, n: int = 12):
    rng = np.random.default_rng(seed)
    ids, keys = [], []
    for g in range(n):
        prompt = rng.integers(1, 50, int(rng.integers(1, 30)))
        for _ in range(int(rng.integers(1, 6))):
            ids.append(np.concatenate([prompt, rng.integers(1, 50, int(rng.integers(1, 12)))]))
            keys.append(f"p{g}")
    return ids, keys


def _unpack(batch: dict, r: int, slot: int) -> tuple[np.ndarray, np.ndarray]:
    """Slow re-derivation of slot's tokens and positions: its prompt's tokens (id -g with g the latest
    prompt before it, if any) and then its own."""
    seg, ids, pos = batch["segment_ids"][r], batch["input_ids"][r], batch["positions"][r]
    own = np.flatnonzero(seg == slot + 1)
    before = seg[: own[0]]
    prompts = before[before < 0]
    toks, where = [], []
    if prompts.size:
        where = np.flatnonzero(seg == prompts[-1])
    sel = np.concatenate([where, own]).astype(int)
    toks = ids[sel]
    return toks, pos[sel]


@pytest.mark.parametrize("seed", [0, 1])
def test_every_example_is_its_prompt_then_its_own_tokens(seed):
    ids, keys = _groups(seed)
    units, rep = plan_units(ids, keys, 48, 4)
    lengths = [len(x) for x in ids]
    bins = plan_shared(units, lengths, 48, 4)
    batch = build_shared_batch(ids, np.zeros((len(ids), 1)), np.ones((len(ids), 1)), units, bins, 48, 4, 0)
    seen = set()
    for r in range(len(bins)):
        for s in range(4):
            i = int(batch["example_index"][r, s])
            if i < 0:
                continue
            seen.add(i)
            toks, pos = _unpack(batch, r, s)
            np.testing.assert_array_equal(toks, ids[i])
            np.testing.assert_array_equal(pos, np.arange(len(ids[i])))  # continues from the prompt's end
    assert seen == set(range(len(ids)))
    # The tokens laid out are the report's, and fewer than unshared by the saved prompt tokens.
    assert int((batch["segment_ids"] != 0).sum()) == rep.tokens
    assert rep.tokens_unshared == sum(lengths) and rep.prompt_tokens_saved > 0
    want_saved = sum(u.prompt_len * (len(u.members) - 1) for u in units)
    assert rep.prompt_tokens_saved == want_saved
    # Plain conversations come before any prompt in a row (what the attention's running max relies on).
    plain = {u.members[0] for u in units if u.prompt_len == 0}
    for r, row in enumerate(batch["segment_ids"]):
        neg = np.flatnonzero(row < 0)
        for s, i in enumerate(batch["example_index"][r]):
            if i in plain and neg.size:
                assert np.flatnonzero(row == s + 1)[-1] < neg[0]


def test_long_groups_are_split_in_order_with_the_prompt_repeated():
    prompt = np.arange(1, 21)
    ids = [np.concatenate([prompt, np.full(n, 90 + j)]) for j, n in enumerate([10, 10, 10, 5, 5])]
    units, rep = plan_units(ids, ["a"] * 5, 45, 8)
    # 20 + 10 + 10 = 40 fits 45; the third response starts a new unit: 20 + 10 + 5 + 5 = 40.
    assert units == [Unit(20, (0, 1)), Unit(20, (2, 3, 4))]
    assert (rep.split_groups, rep.repeated_prompts, rep.tokens) == (1, 1, 80)
    units, rep = plan_units(ids, ["a"] * 5, 200, 2)  # max_segments splits too; a single leftover is plain
    assert units == [Unit(20, (0, 1)), Unit(20, (2, 3)), Unit(0, (4,))]
    assert rep.repeated_prompts == 2


def test_prompt_is_the_common_token_prefix_leaving_each_a_token():
    assert common_prefix_len([np.array([1, 2, 3, 4]), np.array([1, 2, 3, 5, 6])]) == 3
    assert common_prefix_len([np.array([1, 2, 3]), np.array([1, 2, 3, 4])]) == 2  # the shorter keeps one
    assert common_prefix_len([np.array([7, 2]), np.array([1, 2])]) == 0
    units, rep = plan_units([np.array([7, 2]), np.array([1, 2])], ["a", "a"], 8, 4)  # nothing shared: plain
    assert units == [Unit(0, (0,)), Unit(0, (1,))] and rep.shared_groups == 0


def test_a_member_without_its_prompt_is_refused():
    ids = [np.array([1, 2, 3, 4]), np.array([1, 2, 9, 5])]
    with pytest.raises(ValueError, match="example 1 does not start with its unit's 3-token prompt"):
        build_shared_batch(ids, np.zeros((2, 1)), np.ones((2, 1)), [Unit(3, (0, 1))], [[0]], 16, 4, 0)


def test_plan_packed_counts_slots_per_unit():
    rows = plan_packed([10, 10, 10, 4], 64, 4, counts=[3, 2, 1, 1])
    assert all(sum([3, 2, 1, 1][i] for i in row) <= 4 for row in rows)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="counts"):
        plan_packed([10], 64, 4, counts=[5])


def test_resolve_share():
    assert resolve_share("auto", ["a", "b", "a"]) and not resolve_share("auto", ["a", "b"])
    assert not resolve_share("auto", None) and resolve_share(True, ["a"]) and not resolve_share(False, ["a", "a"])
    with pytest.raises(ValueError, match="auto, true or false"):
        resolve_share("yes", ["a"])


# ---------------------------------------------------------------- causal-LM targets (SteerLM 2.0, log-probs)


def _lm_groups(seed: int, n: int = 10):
    """Prompt groups whose responses often begin with the same tokens (a common prefix past the prompt)."""
    rng = np.random.default_rng(seed)
    ids, keys, starts = [], [], []
    for g in range(n):
        prompt = rng.integers(1, 50, int(rng.integers(1, 20)))
        opening = rng.integers(1, 50, int(rng.integers(0, 3)))
        for _ in range(int(rng.integers(1, 6))):
            response = np.concatenate([opening, rng.integers(1, 50, int(rng.integers(1, 10)))])
            ids.append(np.concatenate([prompt, response]))
            keys.append(f"p{g}")
            starts.append(len(prompt))
    return ids, keys, np.asarray(starts)


@pytest.mark.parametrize("seed", [0, 1])
def test_causal_lm_targets_and_contexts_are_the_unshared_ones(seed):
    """Every response token of the shared layout is predicted from the token before it in its own conversation
    (a response's first token from the prompt's last), seeing exactly that conversation's earlier tokens at their
    unshared positions: never a sibling, and every response token counted once per response."""
    import jax.numpy as jnp

    from rm_jax.data.packing import token_targets
    from rm_jax.models.attention import attention_mask

    ids, keys, starts = _lm_groups(seed)
    units, rep = plan_units(ids, keys, 64, 4, response_start=starts)
    assert rep.prompt_tokens_saved > 0 and any(u.prompt_len for u in units)
    for u in units:  # the prompt stops one token before the responses
        assert all(u.prompt_len <= starts[i] - 1 for i in u.members)
    bins = plan_shared(units, [len(x) for x in ids], 64, 4)
    b = build_shared_batch(ids, np.zeros((len(ids), 0)), np.zeros((len(ids), 0)), units, bins, 64, 4, 0)
    assert int((b["segment_ids"] != 0).sum()) == rep.tokens
    tgt, mask = token_targets(b, starts)
    seen = np.asarray(attention_mask(jnp.asarray(b["segment_ids"]), None))[:, 0, 0]  # [B, T, T]
    got: dict[int, list] = {i: [] for i in range(len(ids))}
    for r, t in zip(*np.nonzero(mask)):
        i = int(b["example_index"][r, b["segment_ids"][r, t] - 1])
        context = (tuple(b["input_ids"][r][seen[r, t]]), tuple(b["positions"][r][seen[r, t]]))
        got[i].append((context, int(tgt[r, t])))
    for i, x in enumerate(ids):
        want = [((tuple(x[:j]), tuple(range(j))), int(x[j])) for j in range(starts[i], len(x))]
        assert got[i] == want, i
