"""The batcher's prompt sharing without a model: a stand-in score function reads each slot's unshared length
(its last position + 1) and last token from the batch, so a row scored in the shared layout, or sent back to
the wrong request row, shows. Rows of one prompt key share it (across requests too), keyless rows never do,
``auto`` shares only where that saves >= 10% of a batch's tokens, and no batch passes the largest bucket."""

import threading

import numpy as np
import pytest

from rm_jax.data.prefix_sharing import common_prefix_len
from rm_jax.serving.batcher import Batcher
from rm_jax.serving.buckets import SharedTally, ladder, plan_shared_bucket

BUCKETS = ladder(seq_len=128, max_batch_tokens=256, min_batch_tokens=128, max_segments=16)


def _fake_score(calls):
    def score(batch, bucket, shared):
        seg, pos, ids = batch["segment_ids"], batch["positions"], batch["input_ids"]
        assert seg.shape == (bucket.rows, bucket.seq_len)
        assert (seg < 0).any() == shared  # a shared batch has prompt tokens; a plain one none
        out = np.zeros((bucket.rows, bucket.max_segments, 2), np.float32)
        for r in range(bucket.rows):
            for s in range(bucket.max_segments):
                where = np.flatnonzero(seg[r] == s + 1)
                if where.size:
                    out[r, s] = (pos[r, where[-1]] + 1, ids[r, where[-1]])
        calls.append((shared, int((seg != 0).sum()), bucket))
        return out

    return score


def _run(share, requests):
    """Each request's (rows, groups) submitted at once; (outputs per request, the score calls)."""
    calls = []
    b = Batcher(_fake_score(calls), BUCKETS, 2, 0, max_queue=64, max_wait_s=0.0, share=share)
    b.start()
    assert b.ready.wait(30)
    calls.clear()  # the warm-up's
    with b.incoming():  # every request queued before the first batch is taken
        events, jobs = [], []
        for ids, groups in requests:
            ev = threading.Event()
            jobs.append(b.submit(ids, lambda exc, ev=ev: ev.set(), groups))
            events.append(ev)
    assert all(ev.wait(30) for ev in events)
    b.close(5)
    return [j.out for j in jobs], calls, b.metrics.registry


def _rng_rows(prompt_len, n, resp_len, seed):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(5, 900, prompt_len)
    return [np.concatenate([prompt, rng.integers(5, 900, resp_len + i % 3)]).astype(np.int32) for i in range(n)]


@pytest.mark.parametrize("share", [True, "auto"])
def test_samples_of_one_prompt_share_it_across_requests_within_the_bucket(share):
    a = _rng_rows(60, 5, 8, 0)
    b = _rng_rows(60, 2, 8, 0)  # the same prompt in another request
    keyless = _rng_rows(60, 1, 8, 0)  # /get_reward-like: no key, never shared
    outs, calls, reg = _run(share, [(a, ["p"] * 5), (b, ["p"] * 2), (keyless, None)])
    for out, ids in zip(outs, (a, b, keyless)):
        np.testing.assert_array_equal(out, [[len(x), x[-1]] for x in ids])  # each row's own slot
    assert all(shared for shared, _, _ in calls) and all(t <= bk.tokens for _, t, bk in calls)
    p = common_prefix_len(a + b)
    assert reg.get_sample_value("rm_serve_prompt_tokens_saved_total") == pytest.approx(
        sum(len(x) for x in a + b + keyless) - reg.get_sample_value("rm_serve_tokens_total")
    )
    # the seven keyed rows (61 response tokens after a 60-token prompt) are one unit in one 128-token row:
    # 6 prompt copies saved; the keyless row (the same tokens as a[0]) keeps its own
    assert reg.get_sample_value("rm_serve_prompt_tokens_saved_total") == 6 * p
    assert len(calls) == 1  # unshared, 8 rows of 68-70 tokens take 8 rows: 4 batches of 2 x 128


def test_no_sharing_without_the_setting_or_a_key_and_auto_needs_ten_percent():
    a = _rng_rows(60, 4, 8, 1)
    for share, groups in ((False, ["p"] * 4), (True, None), (True, ["p", "q", "r", "s"])):
        outs, calls, reg = _run(share, [(a, groups)])
        np.testing.assert_array_equal(outs[0], [[len(x), x[-1]] for x in a])
        assert not any(s for s, _, _ in calls) and reg.get_sample_value("rm_serve_prompt_tokens_saved_total") == 0
    short = _rng_rows(2, 4, 40, 2)  # a 2-token prompt before 40-token responses: < 10% saved
    _, calls, _ = _run("auto", [(short, ["p"] * 4)])
    assert not any(s for s, _, _ in calls)
    _, calls, _ = _run(True, [(short, ["p"] * 4)])
    assert all(s for s, _, _ in calls)


def test_shared_tally_counts_each_group_prefix_once_and_bounds_the_plan():
    rows = _rng_rows(30, 3, 5, 3) + _rng_rows(20, 2, 5, 4)
    keys = ["a", "a", "a", "b", "b"]
    tally = SharedTally()
    for x, k in zip(rows, keys):
        tally.add(x, k)
    pa, pb = common_prefix_len(rows[:3]), common_prefix_len(rows[3:])
    assert tally.tokens == sum(len(x) for x in rows) - 2 * pa - pb
    plan = plan_shared_bucket(rows, keys, BUCKETS)
    assert plan is not None and plan.report.tokens == tally.tokens and plan.bucket == BUCKETS[0]
