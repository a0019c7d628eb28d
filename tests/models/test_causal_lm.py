"""The causal LM on rm_jax's decoder against transformers and against itself: logits and chunked target
log-probs of packed rows for the four families (tied heads too), KV-cache decoding against recomputing the
whole sequence (unrolled and scanned stacks), scan + remat gradients, the param trees of both heads, the
matmul precision on every dot, sharded decoding, HF *ForCausalLM export round trips and load errors."""

from __future__ import annotations

import re
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rm_jax.data.packing import build_batch, plan_packed
from rm_jax.models import CausalLM, abstract_params, init_cache, param_logical_specs
from rm_jax.models.hf_io import export_hf_causal_lm, load_hf_causal_lm
from rm_jax.models.llama import DecoderConfig
from tests.helpers import FAMILIES, make_hf_model, random_conversations, requires_devices

TOL = 1e-4
CASES = [(f, False) for f in FAMILIES] + [("qwen3", True)]
EXPORT_CASES = CASES + [("llama", True)]
_id = lambda case: f"{case[0]}{'-tied' if case[1] else ''}"  # noqa: E731
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


@pytest.fixture(params=CASES, ids=_id)
def pair(request, made):
    return made(request.param)


@pytest.fixture(params=EXPORT_CASES, ids=_id)
def export_pair(request, made):
    return made(request.param)


def _torch_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.as_tensor(np.asarray(ids, np.int64))[None]).logits[0].double().numpy()


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_packed_logits_and_target_logprobs_match_transformers(pair):
    """Five conversations packed into 3 rows of 44 tokens: each one's logits and next-token log-probs equal
    transformers' on that conversation alone. 44 tokens in chunks of 16: the last chunk is partial."""
    _, model, lm = pair
    assert lm.cfg.head == "lm" and ("lm_head_kernel" in lm.params) == (not lm.cfg.tie_word_embeddings)
    convs = random_conversations(5, 3, 20, seed=1)
    bins = plan_packed([len(c) for c in convs], 44, 4)
    b = build_batch(convs, np.zeros((5, 0)), np.zeros((5, 0)), bins, 44, 4, pad_id=0)
    ids, seg, pos = b["input_ids"], b["segment_ids"], b["positions"]
    tgt = np.where(np.roll(seg, -1, 1) == seg, np.roll(ids, -1, 1), 0)  # next token of the same segment

    @jax.jit
    def both(params):
        m = CausalLM(lm.cfg, logits_chunk=16)
        return (
            m.apply({"params": params}, ids, seg, pos, max_segments=4),
            m.apply({"params": params}, ids, seg, pos, targets=tgt, max_segments=4),
        )

    logits, logp = (np.asarray(x) for x in both(lm.params))
    assert logits.dtype == np.float32 and logits.shape == ids.shape + (lm.cfg.vocab_size,)
    for r, row in enumerate(bins):
        start = 0
        for e in row:
            n = len(convs[e])
            ref = _torch_logits(model, convs[e])
            np.testing.assert_allclose(logits[r, start : start + n], ref, atol=TOL, rtol=0)
            want = np.take_along_axis(_log_softmax(ref[:-1]), convs[e][1:, None].astype(np.int64), -1)[:, 0]
            np.testing.assert_allclose(logp[r, start : start + n - 1], want, atol=TOL, rtol=0)
            start += n


@pytest.mark.parametrize(
    "case,scan",
    [(("mistral", False), False), (("qwen3", True), True)],
    ids=["mistral-window-unrolled", "qwen3-tied-scanned"],
)
def test_kv_cache_decoding_equals_recomputing_everything(made, case, scan):
    """Two left-padded prompts prefilled into a cache, then 6 tokens fed one by one: at every step the
    last-token logits equal a forward pass over the whole (left-padded) sequence so far. One causal pass over
    the final sequence gives every step's recomputation at once (a prefix's logits do not depend on what
    follows it). Mistral's sliding window (7) is shorter than the sequences, so the cache must drop old keys
    as the model does."""
    d, model, lm = made(case)
    if scan:
        lm = load_hf_causal_lm(d, scan_layers=True, remat="full")  # remat applies to training only
    cfg, params = lm.cfg, lm.params
    m = CausalLM(cfg)
    prompts = random_conversations(2, 5, 11, seed=7)
    plen, steps = 12, 6
    ids, seg = np.zeros((2, plen), np.int32), np.zeros((2, plen), np.int32)
    for r, p in enumerate(prompts):
        ids[r, plen - len(p) :], seg[r, plen - len(p) :] = p, 1
    feed = np.asarray(random_conversations(2, steps, steps, seed=8), np.int32)
    full_ids = np.concatenate([ids, feed], 1)
    full_seg = np.concatenate([seg, np.ones((2, steps), np.int32)], 1)
    full_pos = np.maximum(np.cumsum(full_seg, 1) - 1, 0).astype(np.int32)
    recomputed = np.asarray(jax.jit(lambda i, s, p: m.apply({"params": params}, i, s, p))(full_ids, full_seg, full_pos))
    dec = jax.jit(lambda i, s, p, c: m.apply({"params": params}, i, s, p, cache=c))
    logits, cache = dec(ids, seg, full_pos[:, :plen], init_cache(cfg, 2, plen + steps))
    cache = cache.advanced(plen)
    for t in range(steps + 1):
        np.testing.assert_allclose(
            np.asarray(logits), recomputed[:, plen - 1 + t], atol=TOL, rtol=0, err_msg=f"step {t}"
        )
        if t < steps:
            logits, cache = dec(
                feed[:, t : t + 1], np.ones((2, 1), np.int32), full_pos[:, plen + t : plen + t + 1], cache
            )
            cache = cache.advanced(1)
    assert np.asarray(cache.valid).sum() == sum(len(p) for p in prompts) + 2 * steps
    # ... and the last step against transformers on the unpadded sequence
    r = 0
    real = np.concatenate([prompts[r], feed[r]])
    np.testing.assert_allclose(np.asarray(logits)[r], _torch_logits(model, real)[-1], atol=TOL, rtol=0)


def test_scanned_remat_lm_has_the_unrolled_loss_and_gradients(made):
    d, _, lm = made(("qwen3", True))
    scanned = load_hf_causal_lm(d, scan_layers=True, remat="dots")
    ids = np.asarray(random_conversations(2, 20, 20, seed=10), np.int32)
    seg, pos = np.ones_like(ids), np.tile(np.arange(20, dtype=np.int32), (2, 1))
    tgt = np.roll(ids, -1, 1)

    def loss_and_grad(cfg, p):
        f = lambda p: -CausalLM(cfg, logits_chunk=8).apply({"params": p}, ids, seg, pos, targets=tgt).sum()  # noqa: E731
        return jax.jit(jax.value_and_grad(f))(p)

    a, ga = loss_and_grad(lm.cfg, lm.params)
    b, gb = loss_and_grad(scanned.cfg, scanned.params)
    assert float(a) == pytest.approx(float(b), rel=1e-5)
    # the tied head's gradient reaches the embedding through both paths
    np.testing.assert_allclose(np.asarray(gb["embedding"]), np.asarray(ga["embedding"]), atol=1e-5)
    for i in range(2):
        np.testing.assert_allclose(
            np.asarray(gb["layers"]["mlp"]["up_kernel"][i]),
            np.asarray(ga[f"layers_{i}"]["mlp"]["up_kernel"]),
            atol=1e-5,
        )


def _tiny(**kw) -> DecoderConfig:
    base = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        attention="xla",
        attention_block=8,
    )
    return DecoderConfig(**{**base, **kw})


def _names(tree, prefix=""):
    out = set()
    for k, v in tree.items():
        out |= _names(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


@pytest.mark.parametrize("scan", [False, True])
def test_param_trees_of_both_heads(scan):
    """The RM's tree is what checkpoints and the HF name map rely on; the LM adds only its head."""
    rm = abstract_params(_tiny(scan_layers=scan))
    lm, tied = (
        abstract_params(_tiny(scan_layers=scan, head="lm")),
        abstract_params(_tiny(scan_layers=scan, head="lm", tie_word_embeddings=True)),
    )
    layer = {
        "attn/q_kernel",
        "attn/k_kernel",
        "attn/v_kernel",
        "attn/o_kernel",
        "mlp/gate_kernel",
        "mlp/up_kernel",
        "mlp/down_kernel",
        "input_norm/scale",
        "post_attn_norm/scale",
    }
    stack = {f"layers/{n}" for n in layer} if scan else {f"layers_{i}/{n}" for i in range(2) for n in layer}
    assert _names(rm) == stack | {"embedding", "final_norm/scale", "head_kernel"}
    assert _names(lm) == stack | {"embedding", "final_norm/scale", "lm_head_kernel"}
    assert _names(tied) == stack | {"embedding", "final_norm/scale"}
    assert lm["lm_head_kernel"].shape == (32, 64)
    assert tuple(param_logical_specs(_tiny(head="lm"))["lm_head_kernel"]) == ("embed", "vocab")
    for cfg in (_tiny(scan_layers=scan), _tiny(head="lm"), _tiny(head="lm", tie_word_embeddings=True)):
        assert cfg.num_params() == sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_params(cfg)))
    # FLOPs count the LM head: a matmul every token pays for, tied or not
    assert _tiny(head="lm", tie_word_embeddings=True).num_params(include_embedding=False) == _tiny(
        head="lm"
    ).num_params(include_embedding=False)
    with pytest.raises(ValueError, match="head="):
        _tiny(head="value")


def _dots(text: str) -> Counter:
    found = [
        re.search(r"precision = \[(\w+), (\w+)\]", line) for line in text.split("\n") if "stablehlo.dot_general" in line
    ]
    return Counter(m.groups() if m else ("none", "none") for m in found)


@pytest.mark.parametrize(
    "dtype,want,attention",
    [("float32", "HIGHEST", "xla"), ("bfloat16", "DEFAULT", "xla"), ("float32", "HIGHEST", "splash")],
)
def test_every_dot_of_training_and_decoding_carries_the_precision(dtype, want, attention):
    """Lowered programs only (no compile): the gradient of the chunked target log-probs (through the
    configured attention kernel: splash in Pallas interpret mode off a TPU), and one decode step."""
    for scan in (False, True):
        cfg = _tiny(head="lm", dtype=dtype, scan_layers=scan, remat="full", attention=attention)
        ids = jax.ShapeDtypeStruct((2, 16), jnp.int32)

        def loss(p, i, s, pos):
            return CausalLM(cfg, logits_chunk=8).apply({"params": p}, i, s, pos, targets=i).sum()

        grad = _dots(jax.jit(jax.grad(loss)).lower(abstract_params(cfg), ids, ids, ids).as_text())

        def step(p, i, s, pos):
            return CausalLM(cfg).apply({"params": p}, i, s, pos, cache=init_cache(cfg, 2, 24))[0]

        one = jax.ShapeDtypeStruct((2, 1), jnp.int32)
        decode = _dots(jax.jit(step).lower(abstract_params(cfg), one, one, one).as_text())
        for got, least in ((grad, 40), (decode, 10)):
            assert sum(got.values()) >= least and set(got) == {(want, want)}, got


@requires_devices(4)
def test_decoding_under_a_mesh_shards_the_cache_and_gives_the_same_logits(made):
    """data=2 x tensor=2: the cache is split by batch and kv heads, as the activations are."""
    from rm_jax.models.hf_io import load_hf_causal_lm as load
    from rm_jax.models.sharding import activate, make_mesh

    d, _, lm = made(("llama", False))
    mesh = make_mesh(data=2, tensor=2, devices=jax.devices()[:4])
    sharded = load(d, mesh)
    ids = np.asarray(random_conversations(2, 8, 8, seed=2), np.int32)
    seg, pos = np.ones_like(ids), np.tile(np.arange(8, dtype=np.int32), (2, 1))

    def prefill(params, on):
        with activate(on):
            return CausalLM(lm.cfg).apply({"params": params}, ids, seg, pos, cache=init_cache(lm.cfg, 2, 12))

    logits, cache = jax.jit(lambda p: prefill(p, mesh))(sharded.params)
    assert tuple(cache.k.sharding.spec)[:4] == (None, "data", None, "tensor")
    want, _ = jax.jit(lambda p: prefill(p, None))(lm.params)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), atol=1e-5, rtol=0)


def test_export_round_trip(export_pair, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    _, model, lm = export_pair
    out = export_hf_causal_lm(lm.cfg, lm.params, str(tmp_path / "out"), base_hf_config=lm.hf_config)
    back = AutoModelForCausalLM.from_pretrained(out).float().eval()
    assert type(back).__name__ == type(model).__name__
    ids = random_conversations(1, 15, 15, seed=9)[0]
    theirs, ours = model.state_dict(), back.state_dict()
    assert set(ours) == set(theirs)
    for k, v in theirs.items():  # the same weights, bit for bit (a tied head is the embedding)
        np.testing.assert_array_equal(ours[k].numpy(), v.numpy(), err_msg=k)
    with torch.no_grad():
        got = back(input_ids=torch.as_tensor(ids[None].astype(np.int64))).logits[0].numpy()
    np.testing.assert_allclose(got, _torch_logits(model, ids), atol=1e-6, rtol=0)
    again = load_hf_causal_lm(out)  # and back into rm_jax: the same config
    assert again.cfg == lm.cfg


def test_load_errors_and_the_rm_path_for_causal_folders(made, tmp_path):
    import json
    import shutil

    from rm_jax.core.errors import ModelLoadError
    from rm_jax.models.hf_io import load_hf_reward_model

    d = str(tmp_path / "rm")
    make_hf_model("llama", d, kind="seqcls")
    with pytest.raises(ModelLoadError, match=r"a policy needs \*ForCausalLM"):
        load_hf_causal_lm(d)
    src, _, _ = made(("llama", False))
    rm = load_hf_reward_model(src)  # task: rm from a base LM: the decoder with a new reward head
    assert rm.cfg.head == "reward" and not rm.head_loaded and "lm_head_kernel" not in rm.params
    # an untied config whose folder lacks lm_head.weight
    from safetensors.numpy import load_file, save_file

    broken = str(tmp_path / "broken")
    shutil.copytree(src, broken)
    tensors = load_file(f"{broken}/model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, f"{broken}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="no lm_head.weight"):
        load_hf_causal_lm(broken)
    with open(f"{broken}/config.json") as f:
        cfg = json.load(f)
    with pytest.raises(ValueError, match="use export_hf"):
        export_hf_causal_lm(rm.cfg, rm.params, str(tmp_path / "x"), base_hf_config=cfg)
