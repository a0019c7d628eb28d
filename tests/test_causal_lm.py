"""Causal LMs on rm_jax's decoder against transformers: logits (packed rows), chunked target
log-probs, KV-cache decoding against full recomputation, export round trip, and the head switch."""

from __future__ import annotations

import numpy as np
import pytest

from rm_jax.data.packing import build_batch, plan_packed
from rm_jax.hf_io import export_hf, load_hf_causal_lm
from rm_jax.models import CausalLM, apply_model, init_cache
from tests.hf_fixtures import FAMILIES, make_hf_model, random_conversations

TOL = 1e-4
CASES = [(f, False) for f in FAMILIES] + [("qwen3", True), ("llama", True)]


def _torch_logits(model, ids):
    import torch
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(np.asarray(ids, np.int64))[None]).logits[0].numpy()


IDS = [f"{f}{'-tied' if t else ''}" for f, t in CASES]
# The costlier checks run on the layouts that differ (sliding window + one kv head, q/k norm + tied head).
SOME = [("mistral", False), ("qwen3", True)]
_MADE: dict = {}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    def get(case):
        if case not in _MADE:
            family, tied = case
            d = str(tmp_path_factory.mktemp(f"lm_{family}_{tied}"))
            model = make_hf_model(family, d, kind="causal", tied=tied, seed=3)
            _MADE[case] = (d, model, load_hf_causal_lm(d))
        return _MADE[case]
    return get


@pytest.fixture(params=CASES, ids=IDS)
def pair(request, made):
    return made(request.param)


@pytest.fixture(params=SOME, ids=[f"{f}{'-tied' if t else ''}" for f, t in SOME])
def some_pair(request, made):
    return made(request.param)


def test_packed_logits_match_transformers(pair):
    _, model, lm = pair
    assert lm.cfg.head == "lm" and ("lm_head_kernel" in lm.params) == (not lm.cfg.tie_word_embeddings)
    convs = random_conversations(5, 3, 20, seed=1)
    bins = plan_packed([len(c) for c in convs], 48, 4)
    b = build_batch(convs, np.zeros((5, 0)), np.zeros((5, 0)), bins, 48, 4, pad_id=0)
    logits = np.asarray(apply_model(lm.cfg, lm.params, b, 4))
    for r, row in enumerate(bins):
        start = 0
        for e in row:
            n = len(convs[e])
            np.testing.assert_allclose(logits[r, start:start + n], _torch_logits(model, convs[e]), atol=TOL, rtol=0)
            start += n


def test_target_logprobs_equal_log_softmax_of_the_logits(some_pair):
    import jax
    _, _, lm = some_pair
    ids = np.asarray(random_conversations(2, 37, 37, seed=4), np.int32)  # 37: not a multiple of the chunk
    seg, pos = np.ones_like(ids), np.tile(np.arange(37, dtype=np.int32), (2, 1))
    tgt = np.roll(ids, -1, axis=1)
    logits = np.asarray(CausalLM(lm.cfg).apply({"params": lm.params}, ids, seg, pos))
    want = np.take_along_axis(jax.nn.log_softmax(logits, -1), tgt[..., None], -1)[..., 0]
    got = CausalLM(lm.cfg, logits_chunk=8).apply({"params": lm.params}, ids, seg, pos, targets=tgt)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)


def test_kv_cache_decoding_equals_recomputing_everything(some_pair):
    """Two left-padded prompts prefilled into a cache, then 6 tokens fed one by one: at every step the
    last-token logits equal a full forward pass over the whole (left-padded) sequence so far."""
    _, _, lm = some_pair
    cfg = lm.cfg
    model = CausalLM(cfg)
    prompts = random_conversations(2, 5, 11, seed=7)
    plen, steps = 12, 6
    ids = np.zeros((2, plen), np.int32)
    seg = np.zeros((2, plen), np.int32)
    for r, p in enumerate(prompts):
        ids[r, plen - len(p):], seg[r, plen - len(p):] = p, 1
    pos = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
    import jax
    fwd = jax.jit(lambda i, s, p: model.apply({"params": lm.params}, i, s, p))
    dec = jax.jit(lambda i, s, p, c: model.apply({"params": lm.params}, i, s, p, cache=c))
    cache = init_cache(cfg, 2, plen + steps)
    logits, cache = dec(ids, seg, pos, cache)
    cache = cache.advanced(plen)
    feed = np.asarray(random_conversations(2, steps, steps, seed=8), np.int32)
    for t in range(steps + 1):
        full_ids = np.concatenate([ids, feed[:, :t]], 1)
        full_seg = np.concatenate([seg, np.ones((2, t), np.int32)], 1)
        full_pos = np.maximum(np.cumsum(full_seg, 1) - 1, 0).astype(np.int32)
        want = np.asarray(fwd(full_ids, full_seg, full_pos))[:, -1]
        np.testing.assert_allclose(np.asarray(logits), want, atol=TOL, rtol=0, err_msg=f"step {t}")
        if t < steps:
            logits, cache = dec(feed[:, t:t + 1], np.ones((2, 1), np.int32), full_pos[:, -1:] + 1, cache)
            cache = cache.advanced(1)


def test_export_round_trip(pair, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM
    _, model, lm = pair
    out = export_hf(lm.cfg, lm.params, str(tmp_path / "out"), base_hf_config=lm.hf_config)
    back = AutoModelForCausalLM.from_pretrained(out).float().eval()
    assert type(back).__name__.endswith("ForCausalLM")
    ids = random_conversations(1, 15, 15, seed=9)[0]
    with torch.no_grad():
        got = back(input_ids=torch.as_tensor(ids[None].astype(np.int64))).logits[0].numpy()
    theirs, ours = model.state_dict(), back.state_dict()
    for k, v in theirs.items():  # the same weights, bit for bit (a tied head is the embedding)
        np.testing.assert_array_equal(ours[k].numpy(), v.numpy(), err_msg=k)
    np.testing.assert_allclose(got, _torch_logits(model, ids), atol=1e-5, rtol=0)  # config round trip: float rounding


def test_scanned_lm_equals_unrolled(some_pair):
    import jax
    d, _, lm = some_pair
    scanned = load_hf_causal_lm(d, scan_layers=True, remat="dots")
    ids = np.asarray(random_conversations(2, 20, 20, seed=10), np.int32)
    seg, pos = np.ones_like(ids), np.tile(np.arange(20, dtype=np.int32), (2, 1))
    tgt = np.roll(ids, -1, 1)

    def loss(cfg, p):
        return -CausalLM(cfg).apply({"params": p}, ids, seg, pos, targets=tgt).sum()
    a, ga = jax.value_and_grad(lambda p: loss(lm.cfg, p))(lm.params)
    b, gb = jax.value_and_grad(lambda p: loss(scanned.cfg, p))(scanned.params)
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    np.testing.assert_allclose(np.asarray(gb["embedding"]), np.asarray(ga["embedding"]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gb["layers"]["mlp"]["up_kernel"][1]),
                               np.asarray(ga["layers_1"]["mlp"]["up_kernel"]), atol=1e-5)


def test_causal_checkpoints_are_refused_as_reward_models_and_back(tmp_path):
    from rm_jax.errors import ModelLoadError
    d = str(tmp_path / "rm")
    make_hf_model("llama", d, kind="seqcls")
    with pytest.raises(ModelLoadError, match="a policy needs \\*ForCausalLM"):
        load_hf_causal_lm(d)
