"""LoRA in the decoder: a fresh adapter (B = 0) leaves the base's outputs unchanged, a trained one equals its
merge into the base, scanned or unrolled, and the adapters carry logical axes the sharding rules place."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.models import apply_model, init_params, param_logical_specs
from rm_jax.models.llama import DecoderConfig
from rm_jax.models.lora import (
    add_adapters,
    cast_frozen,
    combine,
    has_adapters,
    merge_adapters,
    split_trainable,
)
from rm_jax.models.sharding import make_mesh
from tests.helpers import TINY_DECODER

ARCH = {**TINY_DECODER, "num_labels": 3}


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 97, size=(2, 24)).astype(np.int32)
    seg = np.ones_like(ids)
    seg[1, 14:] = 2  # two conversations packed into row 1
    pos = np.concatenate([np.arange(24)[None], np.concatenate([np.arange(14), np.arange(10)])[None]]).astype(np.int32)
    return {"input_ids": ids, "segment_ids": seg, "positions": pos}


@functools.lru_cache(maxsize=None)  # building them is most of a test's time; jax arrays are immutable
def _base_and_lora(scan: bool, head: str = "reward", rank: int = 4):
    mesh = make_mesh(devices=jax.devices()[:1])
    base_cfg = DecoderConfig(**ARCH, scan_layers=scan, head=head)
    base = init_params(base_cfg, mesh, seed=1)
    cfg = base_cfg.replace(lora_rank=rank, lora_alpha=8.0)
    return base_cfg, base, cfg, add_adapters(base, cfg, mesh, seed=2), mesh


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
@pytest.mark.parametrize("head", ["reward", "lm"])
def test_fresh_adapters_leave_the_base_unchanged(scan, head):
    base_cfg, base, cfg, params, _ = _base_and_lora(scan, head)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    a = [v for p, v in flat if str(p[-1].key).endswith("_lora_a")]
    b = [v for p, v in flat if str(p[-1].key).endswith("_lora_b")]
    assert len(a) == len(b) == 7 * (1 if scan else 2)
    assert all(float(jnp.abs(x).max()) > 0 for x in a) and all(float(jnp.abs(x).max()) == 0 for x in b)
    ours = apply_model(cfg, params, _batch(), max_segments=2)
    ref = apply_model(base_cfg, base, _batch(), max_segments=2)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
def test_trained_adapters_equal_their_merge(scan):
    base_cfg, base, cfg, params, _ = _base_and_lora(scan)
    rng = np.random.default_rng(3)
    # Stand-in for training: random B (A is already random), so every adapter changes the output.
    params = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(rng.normal(0, 0.3, v.shape), v.dtype) if str(p[-1].key).endswith("_lora_b") else v,
        params,
    )
    ours = np.asarray(apply_model(cfg, params, _batch(), max_segments=2))
    base_out = np.asarray(apply_model(base_cfg, base, _batch(), max_segments=2))
    assert np.abs(ours - base_out).max() > 1e-2  # the adapters matter
    mcfg, merged = merge_adapters(cfg, params)
    assert mcfg.lora_rank == 0 and not has_adapters(merged)
    np.testing.assert_allclose(np.asarray(apply_model(mcfg, merged, _batch(), max_segments=2)), ours, atol=2e-5)
    # The merged kernels differ from the base by rank <= 4 (per layer, as a 2-D matrix).
    for path, w in jax.tree_util.tree_flatten_with_path(merged)[0]:
        name = str(path[-1].key)
        w0 = base
        for k in path:
            w0 = w0[k.key]
        d = np.asarray(w, np.float64) - np.asarray(w0, np.float64)
        if name in ("q_kernel", "k_kernel", "v_kernel", "o_kernel", "gate_kernel", "up_kernel", "down_kernel"):
            mats = d if scan else d[None]
            for m in mats:  # as the 2-D (in, out) matrix the projection applies
                m2 = (
                    m.reshape(m.shape[0], -1)
                    if name in ("q_kernel", "k_kernel", "v_kernel")
                    else m.reshape(-1, m.shape[-1])
                )
                assert 0 < np.linalg.matrix_rank(m2, tol=1e-6) <= 4, name
        else:
            assert np.array_equal(d, np.zeros_like(d)), name


def test_trainable_split_and_base_dtype():
    _, _, cfg, params, _ = _base_and_lora(scan=False)
    train, frozen = split_trainable(cfg, params)
    names = {str(p[-1].key) for p, _ in jax.tree_util.tree_flatten_with_path(train)[0]}
    assert names == {f"{t}_lora_{x}" for t in "q k v o gate up down".split() for x in "ab"} | {"head_kernel"}
    assert "embedding" in frozen and not has_adapters(frozen)
    assert jax.tree.structure(combine(train, frozen)) == jax.tree.structure(params)
    stored = cast_frozen(cfg, params, "bfloat16")
    t2, f2 = split_trainable(cfg, stored)
    assert {a.dtype for a in jax.tree.leaves(f2)} == {jnp.dtype(jnp.bfloat16)}
    assert {a.dtype for a in jax.tree.leaves(t2)} == {jnp.dtype(jnp.float32)}
    # A policy's LM head trains only when asked.
    lm_cfg = cfg.replace(head="lm")
    assert "lm_head_kernel" not in split_trainable(lm_cfg, {"lm_head_kernel": 0, "a": {"q_lora_a": 1}})[0]
    assert "lm_head_kernel" in split_trainable(lm_cfg.replace(lora_lm_head=True), {"lm_head_kernel": 0})[0]


def test_adapters_carry_logical_axes():
    cfg = DecoderConfig(**ARCH, scan_layers=True, lora_rank=4)
    specs = param_logical_specs(cfg)["layers"]
    assert tuple(specs["attn"]["q_lora_a"]) == ("layers", "embed", "lora")
    assert tuple(specs["attn"]["q_lora_b"]) == ("layers", "lora", "heads", "head_dim")
    assert tuple(specs["attn"]["o_lora_a"]) == ("layers", "heads", "head_dim", "lora")
    assert tuple(specs["mlp"]["down_lora_b"]) == ("layers", "lora", "embed")


def test_adapters_shard_over_a_mesh():
    """On a (fsdp 2, tensor 2) mesh the adapters are split like the kernels they sit beside."""
    if len(jax.devices()) < 4:
        pytest.skip("needs 4 devices")
    mesh = make_mesh(1, 2, 2, jax.devices()[:4])
    cfg = DecoderConfig(**ARCH, lora_rank=4)
    base = init_params(cfg.replace(lora_rank=0), mesh, seed=1)
    params = add_adapters(base, cfg, mesh, seed=2)
    attn = params["layers_0"]["attn"]
    assert tuple(attn["q_lora_a"].sharding.spec) == ("fsdp", None)
    assert tuple(attn["q_lora_b"].sharding.spec)[:2] == (None, "tensor")


# ---------------------------------------------------------------- adapter dropout (PEFT's lora_dropout)


def _trained(params, seed: int = 3):
    """Stand-in for training: random B, so every adapter changes the output."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(rng.normal(0, 0.3, v.shape), v.dtype) if str(p[-1].key).endswith("_lora_b") else v,
        params,
    )


_JITTED: dict = {}


def _apply(cfg, params, key=None, reuse: bool = True):
    """The model as the train step applies it: with a "dropout" rng when ``key`` is given (eval passes none).
    Compiled once per (config, with key) unless ``reuse`` is False (a fresh trace)."""
    from rm_jax.models import model_for

    def run(params, key, ids, seg, pos):
        rngs = {"dropout": key} if key is not None else {}
        return model_for(cfg).apply({"params": params}, ids, seg, pos, max_segments=2, rngs=rngs)

    fn = _JITTED.setdefault((cfg, key is None), jax.jit(run)) if reuse else jax.jit(run)
    b = _batch()
    return np.asarray(fn(params, key, b["input_ids"], b["segment_ids"], b["positions"]))


def test_adapter_dropout_scales_kept_inputs():
    """Inverted dropout as torch.nn.Dropout: about ``rate`` of the entries zeroed, the rest scaled by 1/(1-rate)."""
    from rm_jax.models.llama import adapter_dropout

    x = jnp.full((4, 64, 32), 2.0)
    y = np.asarray(adapter_dropout(x, 0.25, jax.random.key(0)))
    assert set(np.unique(y)) == {0.0, np.float32(2.0 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.03


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
def test_dropout_acts_on_the_adapter_path_in_training_only(scan):
    """PEFT: base(x) + B(A(dropout(x))) * scale, in training only. Rate 0 with a key, or any rate without one
    (eval, score, serve), is the no-dropout model exactly. With B = 0 the adapter adds nothing, so dropout must
    leave the output exactly the base's (dropout on the base path's input would not); with a trained B the
    adapters' contribution changes."""
    base_cfg, base, cfg, fresh, _ = _base_and_lora(scan)
    drop, key = cfg.replace(lora_dropout=0.3), jax.random.key(1)
    base_out = _apply(base_cfg, base)
    np.testing.assert_allclose(_apply(drop, fresh, key), base_out, rtol=0, atol=1e-6)
    trained = _trained(fresh)
    plain = _apply(cfg, trained)
    np.testing.assert_array_equal(_apply(cfg, trained, key), plain)  # rate 0: a key changes nothing
    np.testing.assert_array_equal(_apply(drop, trained), plain)  # no rng: no dropout
    delta, delta_drop = plain - base_out, _apply(drop, trained, key) - base_out
    assert np.abs(delta).max() > 1e-2 and np.abs(delta_drop - delta).max() > 1e-3


def _recorded_masks(cfg, params, key, monkeypatch) -> list[np.ndarray]:
    """Every adapter-dropout mask the model draws, in call order (per layer: q, k, v, o, gate, up, down)."""
    import rm_jax.models.llama as llama

    seen: list = []
    real = llama.adapter_dropout

    def spy(x, rate, k):
        jax.debug.callback(lambda m: seen.append(np.asarray(m)), real(jnp.ones_like(x), rate, k) == 0, ordered=True)
        return real(x, rate, k)

    monkeypatch.setattr(llama, "adapter_dropout", spy)
    out = _apply(cfg, params, key, reuse=False)
    jax.effects_barrier()
    return seen, out


def test_every_layer_and_projection_draws_its_own_mask(monkeypatch):
    """Scanned or unrolled, each layer's adapters (and each projection within a layer) draw a different mask from
    the step's key; both stacks derive the layer keys the same way, so they draw the same masks and agree."""
    from rm_jax.models import relayout_params

    _, _, cfg, params, mesh = _base_and_lora(scan=False, head="lm")
    cfg, params = cfg.replace(lora_dropout=0.5), _trained(params)
    key = jax.random.key(11)
    masks, out = {}, {}
    for scan in (False, True):
        c = cfg.replace(scan_layers=scan)
        masks[scan], out[scan] = _recorded_masks(c, relayout_params(params, c, mesh), key, monkeypatch)
        m = masks[scan]
        assert len(m) == 7 * 2
        for j in range(7):  # layer 0 vs layer 1, same projection
            assert m[j].shape == m[7 + j].shape and not np.array_equal(m[j], m[7 + j]), (scan, j)
        assert not np.array_equal(m[1], m[2])  # k and v read the same x: their own masks
        assert 0.4 < np.mean([x.mean() for x in m]) < 0.6
    for a, b in zip(masks[False], masks[True]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(out[True], out[False], rtol=0, atol=1e-4)


def test_peft_adapter_round_trip_keeps_the_dropout_rate(tmp_path):
    """adapter_config.json records the run's lora_dropout; importing the folder reads it back (an imported adapter
    trains on at its own rate unless the run sets lora.dropout, rm_jax.training.setup.attach_lora)."""
    import json

    from rm_jax.core.errors import ModelLoadError
    from rm_jax.models.lora import export_peft_adapter, import_peft_adapter, read_peft_config

    base_cfg, base, cfg, params, mesh = _base_and_lora(scan=False)
    cfg, params = cfg.replace(lora_dropout=0.05), _trained(params)
    out = export_peft_adapter(cfg, params, str(tmp_path / "adapter"), "/some/base")
    pc = json.load(open(tmp_path / "adapter" / "adapter_config.json"))
    assert pc["lora_dropout"] == 0.05 and pc["r"] == 4
    icfg, iparams = import_peft_adapter(base_cfg, base, out, mesh)
    assert icfg.lora_dropout == 0.05 and icfg.lora_rank == 4 and icfg.lora_alpha == 8.0
    np.testing.assert_allclose(_apply(icfg, iparams), _apply(cfg, params), rtol=0, atol=1e-6)
    pc["lora_dropout"] = 1.0
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(pc))
    with pytest.raises(ModelLoadError, match="lora_dropout 1.0"):
        read_peft_config(out)


# ---------------------------------------------------------------- the LoRA scale, computed by hand


@pytest.mark.parametrize("rslora", [False, True], ids=["alpha_over_r", "rslora"])
def test_adapters_add_the_hand_computed_update(rslora):
    """The model's LoRA forward equals the base with each adapted kernel W replaced by W + s A B, s computed here
    from alpha and r (rank 4, alpha 8: alpha/r = 2, alpha/sqrt(r) = 4 and alpha = 8 all differ), not taken
    from the config, so a wrong scale in the model or in merge_adapters fails."""
    import math

    base_cfg, base, cfg, params, _ = _base_and_lora(scan=False)
    cfg, params = cfg.replace(lora_rslora=rslora), _trained(params)
    scale = 8.0 / (math.sqrt(4) if rslora else 4)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    leaves = {tuple(k.key for k in p): np.asarray(v, np.float64) for p, v in flat}
    hand = {}
    for path, w in leaves.items():
        if "_lora_" in path[-1]:
            continue
        name = path[-1][: -len("_kernel")] if path[-1].endswith("_kernel") else None
        a_path = path[:-1] + (f"{name}_lora_a",)
        if name and a_path in leaves:
            a, b = leaves[a_path], leaves[path[:-1] + (f"{name}_lora_b",)]
            w = w + scale * (a.reshape(-1, 4) @ b.reshape(4, -1)).reshape(w.shape)
        hand[path] = jnp.asarray(w, jnp.float32)
    from flax import traverse_util

    hand_params = traverse_util.unflatten_dict(hand)
    want = np.asarray(apply_model(base_cfg, hand_params, _batch(), max_segments=2))
    assert np.abs(want - np.asarray(apply_model(base_cfg, base, _batch(), max_segments=2))).max() > 1e-2
    np.testing.assert_allclose(np.asarray(apply_model(cfg, params, _batch(), max_segments=2)), want, atol=2e-5)
    mcfg, merged = merge_adapters(cfg, params)
    np.testing.assert_allclose(np.asarray(apply_model(mcfg, merged, _batch(), max_segments=2)), want, atol=2e-5)


def test_rslora_is_a_typed_config_option():
    from rm_jax.core.config import RunConfig
    from rm_jax.training.setup import lora_opts

    cfg = RunConfig()
    cfg.lora.rank, cfg.lora.rslora = 4, True
    assert lora_opts(cfg)["lora_rslora"] is True
    dcfg = DecoderConfig(**ARCH, **lora_opts(cfg))
    assert dcfg.lora_scale == pytest.approx(cfg.lora.alpha / 2)


# ---------------------------------------------------------------- PEFT adapters made by peft itself

R, ALPHA = 4, 6  # alpha/r = 1.5, alpha/sqrt(r) = 3, alpha = 6


@pytest.fixture(scope="module")
def hf_bases(tmp_path_factory):
    """A tiny random HF reward model (5 attributes) and causal LM, each with the bundled tokenizer."""
    from tests.helpers import make_hf_causal_lm_with_tokenizer, make_hf_rm_with_tokenizer

    d = tmp_path_factory.mktemp("peft_bases")
    make_hf_rm_with_tokenizer("llama", str(d / "rm"), seed=1)
    make_hf_causal_lm_with_tokenizer("llama", str(d / "lm"), seed=2)
    return {"rm": str(d / "rm"), "lm": str(d / "lm")}


def _peft_adapter(base: str, out: str, num_labels=None, **lora_kw):
    """peft.get_peft_model on ``base`` (as a sequence classifier), every trainable tensor randomised so each one
    matters, saved to ``out``; returns the PeftModel (eval, float32)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    kw = {"num_labels": num_labels} if num_labels else {}
    model = AutoModelForSequenceClassification.from_pretrained(base, **kw).float()
    lora = {"r": R, "lora_alpha": ALPHA, "target_modules": ["q_proj", "v_proj", "down_proj"], "task_type": "SEQ_CLS"}
    pm = get_peft_model(model, LoraConfig(**{**lora, **lora_kw}))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if p.requires_grad and "lora_A" not in name:  # B, biases, saved modules, token deltas
                p.normal_(0, 0.2)
    pm.save_pretrained(out)
    return pm.eval()


def _convs():
    from tests.helpers import random_conversations

    return random_conversations(3, 6, 20, seed=4)


def _jax_scores(cfg, params, convs):
    from rm_jax.data.packing import build_batch
    from tests.helpers import PAD

    n = cfg.num_labels
    z = np.zeros((len(convs), n), np.float32)
    b = build_batch(convs, z, z + 1, [[i] for i in range(len(convs))], 24, 1, PAD)
    return np.asarray(apply_model(cfg, params, b, 1))[:, 0]


def _rm_jax_adapter_scores(adapter: str):
    from rm_jax.runs.read import load_scoring_model

    sm = load_scoring_model(adapter)
    return _jax_scores(sm.cfg, sm.params, _convs()), sm


@pytest.mark.parametrize(
    "kw",
    [{}, {"use_rslora": True}, {"target_modules": "all-linear"}],
    ids=["alpha_over_r", "rslora", "all-linear"],
)
def test_peft_adapter_scores_as_peft(hf_bases, tmp_path, kw):
    """An adapter (and score head) peft made scores in rm_jax as PeftModel scores it, within 1e-4."""
    from tests.helpers import torch_scores

    pm = _peft_adapter(hf_bases["rm"], str(tmp_path / "a"), **kw)
    want = torch_scores(pm, _convs())
    with pm.disable_adapter():
        assert np.abs(want - torch_scores(pm, _convs())).max() > 1e-2  # the adapters matter
    got, sm = _rm_jax_adapter_scores(str(tmp_path / "a"))
    assert sm.cfg.lora_rslora == bool(kw.get("use_rslora")) and sm.attributes == list(ATTRIBUTES)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


UNSUPPORTED = [
    ({"lora_bias": True}, "lora_bias"),
    ({"modules_to_save": ["embed_tokens"]}, "modules_to_save"),
    ({"trainable_token_indices": [3, 5]}, "trainable_token_indices"),
    ({"use_dora": True}, "use_dora"),
    ({"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
    ({"alpha_pattern": {"v_proj": 3}}, "alpha_pattern"),
    ({"layer_replication": [[0, 2], [1, 2]]}, "layer_replication"),
    ({"alora_invocation_tokens": [5, 6]}, "alora_invocation_tokens"),
]


@pytest.mark.parametrize("kw,field", UNSUPPORTED, ids=[f for _, f in UNSUPPORTED])
def test_peft_features_rm_jax_does_not_apply_stop_naming_the_field(hf_bases, tmp_path, kw, field):
    """Each feature changes peft's scores (so ignoring it would be a silent difference); rm_jax stops, one line
    naming the field."""
    from rm_jax.core.errors import ModelLoadError
    from tests.helpers import torch_scores

    plain = torch_scores(_peft_adapter(hf_bases["rm"], str(tmp_path / "plain")), _convs())
    if field != "alora_invocation_tokens":  # aLoRA acts only after its invocation tokens, absent here
        assert (
            np.abs(torch_scores(_peft_adapter(hf_bases["rm"], str(tmp_path / "a"), **kw), _convs()) - plain).max()
            > 1e-3
        )
    else:
        _peft_adapter(hf_bases["rm"], str(tmp_path / "a"), **kw)
    with pytest.raises(ModelLoadError) as e:
        _rm_jax_adapter_scores(str(tmp_path / "a"))
    assert "\n" not in str(e.value) and f"{field}=" in str(e.value), str(e.value)


def test_fan_in_fan_out_stops(hf_bases, tmp_path):
    """peft refuses fan_in_fan_out on nn.Linear itself; a config that says it (e.g. GPT-2 style) stops here."""
    import json

    from rm_jax.core.errors import ModelLoadError

    _peft_adapter(hf_bases["rm"], str(tmp_path / "a"))
    p = tmp_path / "a" / "adapter_config.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "fan_in_fan_out": True}))
    with pytest.raises(ModelLoadError, match="fan_in_fan_out=true"):
        _rm_jax_adapter_scores(str(tmp_path / "a"))


def test_every_tensor_is_applied_or_the_import_stops(hf_bases, tmp_path):
    """The config check's backstop: a lora_bias adapter whose config no longer says so still stops, naming the
    first tensor rm_jax would not apply."""
    import json

    from rm_jax.core.errors import ModelLoadError

    _peft_adapter(hf_bases["rm"], str(tmp_path / "a"), lora_bias=True)
    p = tmp_path / "a" / "adapter_config.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "lora_bias": False}))
    with pytest.raises(ModelLoadError, match=r"tensor '.*lora_B\.bias' \(and \d+ more\) is not applied"):
        _rm_jax_adapter_scores(str(tmp_path / "a"))


def test_one_label_adapter_on_a_causal_lm_base(hf_bases, tmp_path):
    """TRL's reward trainer: AutoModelForSequenceClassification(num_labels=1) on a causal LM + LoRA. rm_jax scores
    it as a one-attribute RM named "reward", as peft does; on a 5-attribute config or base it stops clearly."""
    import json

    from rm_jax.core.errors import ModelLoadError
    from rm_jax.models.hf_io import load_hf_reward_model
    from rm_jax.models.lora import import_peft_adapter
    from tests.helpers import torch_scores

    pm = _peft_adapter(hf_bases["lm"], str(tmp_path / "trl"), num_labels=1)
    got, sm = _rm_jax_adapter_scores(str(tmp_path / "trl"))
    assert sm.attributes == ["reward"] and got.shape == (3, 1)
    np.testing.assert_allclose(got, torch_scores(pm, _convs()), atol=1e-4, rtol=0)
    five = load_hf_reward_model(hf_bases["lm"])  # a training config with the five HelpSteer2 attributes
    with pytest.raises(ModelLoadError, match="has 1 outputs; this model predicts 5 attributes"):
        import_peft_adapter(five.cfg, five.params, str(tmp_path / "trl"), make_mesh(devices=jax.devices()[:1]))
    p = tmp_path / "trl" / "adapter_config.json"  # the same adapter named onto the 5-attribute reward model
    p.write_text(p.read_text().replace(json.dumps(hf_bases["lm"]), json.dumps(hf_bases["rm"])))
    with pytest.raises(ModelLoadError, match="score head has 1 outputs but its base .* has 5"):
        _rm_jax_adapter_scores(str(tmp_path / "trl"))


def test_adapter_without_a_score_head(hf_bases, tmp_path, caplog):
    """No score in modules_to_save: on a reward-model base the base's head scores (as peft), with a warning line;
    on a causal LM base there is no head to score with, and loading stops saying so."""
    import logging

    from rm_jax.core.errors import ModelLoadError
    from tests.helpers import torch_scores

    pm = _peft_adapter(hf_bases["rm"], str(tmp_path / "rm"), task_type=None)
    with caplog.at_level(logging.WARNING, logger="rm_jax"):
        got, _ = _rm_jax_adapter_scores(str(tmp_path / "rm"))
    assert any("no score head" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(got, torch_scores(pm, _convs()), atol=1e-4, rtol=0)
    _peft_adapter(hf_bases["lm"], str(tmp_path / "lm"), task_type=None)
    with pytest.raises(ModelLoadError, match="no score head .* not a reward model"):
        _rm_jax_adapter_scores(str(tmp_path / "lm"))


# ---------------------------------------------------------------- rm-jax export --adapter, loaded as docs/lora.md shows


def docs_loading_snippet() -> str:
    """The Python lines docs/lora.md gives for loading an ``--adapter`` export with peft, exactly as written."""
    import os
    import re

    from tests.helpers import ROOT

    text = open(os.path.join(ROOT, "docs", "lora.md"), encoding="utf-8").read()
    blocks = re.findall(r"python - <<'PY'\n(.*?)\nPY\n", text, re.S)
    found = [b for b in blocks if "PeftModel.from_pretrained" in b]
    assert len(found) == 1, "docs/lora.md: one python block loads the adapter export with peft"
    return found[0]


def run_docs_snippet(cwd, monkeypatch, capsys) -> dict:
    """Runs :func:`docs_loading_snippet` in ``cwd`` (which holds runs/tiny-lora-adapter); its names and output."""
    monkeypatch.chdir(cwd)
    scope: dict = {}
    exec(compile(docs_loading_snippet(), "docs/lora.md", "exec"), scope)
    scope["printed"] = capsys.readouterr().out
    return scope


def test_adapter_export_of_a_causal_lm_base_loads_as_the_docs_show(tmp_path, monkeypatch, capsys):
    """The usual case: a reward model trained with LoRA from a causal LM (its score head new). The --adapter
    folder (tokenizer, chat template, config.json with the attribute names) loads with docs/lora.md's lines as
    written and scores as rm_jax does within 1e-4, rsLoRA scale included; rm-jax reads the folder back the same."""
    import ast
    import json
    import os

    import torch

    from rm_jax.models.hf_io import load_hf_reward_model, load_tokenizer
    from rm_jax.models.lora import export_peft_adapter
    from rm_jax.runs.read import load_scoring_model
    from tests.helpers import make_hf_causal_lm_with_tokenizer

    runs = tmp_path / "runs"
    make_hf_causal_lm_with_tokenizer("llama", str(runs / "tiny-base"), seed=6)
    monkeypatch.chdir(tmp_path)
    lm = load_hf_reward_model("runs/tiny-base", seed=1)
    assert not lm.head_loaded  # a causal LM: the reward head is new
    mesh = make_mesh(devices=jax.devices()[:1])
    cfg = lm.cfg.replace(lora_rank=R, lora_alpha=float(ALPHA), lora_rslora=True, lora_targets=("q", "v", "up"))
    params = _trained(add_adapters(lm.params, cfg, mesh, seed=4), seed=5)
    tok = load_tokenizer("runs/tiny-base")
    names = ["help", "correct", "coherent", "complex", "verbose"]  # not HelpSteer2's: the folder must carry them
    export_peft_adapter(cfg, params, "runs/tiny-lora-adapter", "runs/tiny-base", tok, names, lm.hf_config)
    files = set(os.listdir(runs / "tiny-lora-adapter"))
    assert {"config.json", "tokenizer_config.json", "adapter_config.json", "adapter_model.safetensors"} <= files
    pc = json.loads((runs / "tiny-lora-adapter" / "adapter_config.json").read_text())
    assert pc["use_rslora"] is True and pc["base_model_name_or_path"] == "runs/tiny-base"

    scope = run_docs_snippet(tmp_path, monkeypatch, capsys)
    ids = scope["ids"][0].numpy().astype(np.int32)
    assert list(ids) == list(tok.apply_chat_template(scope["chat"], return_dict=False))  # the run's template
    want = _jax_scores(cfg, params, [ids])
    with torch.no_grad():
        got = scope["model"](scope["ids"]).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert list(ast.literal_eval(scope["printed"])) == names
    sm = load_scoring_model("runs/tiny-lora-adapter")
    assert sm.attributes == names and sm.cfg.lora_rslora
    np.testing.assert_allclose(_jax_scores(sm.cfg, sm.params, [ids]), want, atol=1e-5, rtol=0)


def test_adapter_base_name_is_the_model_path_as_given(tmp_path, monkeypatch):
    """base_model_name_or_path: a hub id as typed (not the cache snapshot), a local path as typed while it names
    the recorded base from here, else the recorded absolute path."""
    import os

    from rm_jax.runs.read import adapter_base_name

    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "base").mkdir()
    snapshot = str(tmp_path / "hub" / "models--org--model" / "snapshots" / "abc")

    def given(path):
        (run / "config.yaml").write_text(f"model:\n  path: {path}\n")

    given("org/model")
    assert adapter_base_name(str(run), snapshot) == "org/model"
    given("org/other")  # not the id the recorded snapshot came from
    assert adapter_base_name(str(run), snapshot) == snapshot
    monkeypatch.chdir(tmp_path)
    given("base")
    assert adapter_base_name(str(run), str(tmp_path / "base")) == "base"
    monkeypatch.chdir(run)  # "base" no longer names it from here
    assert adapter_base_name(str(run), str(tmp_path / "base")) == str(tmp_path / "base")
    os.remove(run / "config.yaml")
    assert adapter_base_name(str(run), snapshot) == snapshot


def test_every_reward_head_leaf_trains_and_is_checkpointed_with_the_adapters():
    """An ordinal head's thresholds and a separate reward output are head leaves: trained and kept in a LoRA run's
    checkpoints (the frozen base is re-read from its folder, which has neither)."""
    import dataclasses

    from rm_jax.models import lora as lora_mod
    from rm_jax.models.llama import DecoderConfig

    cfg = dataclasses.replace(DecoderConfig(), lora_rank=2)
    for leaf in ("head_kernel", "head_thresholds", "reward_head_kernel"):
        assert lora_mod.is_trainable(cfg, (leaf,)) and lora_mod.is_checkpointed((leaf,)), leaf
    assert not lora_mod.is_trainable(cfg, ("layers", "mlp", "up_kernel"))
    assert not lora_mod.is_trainable(cfg, ("lm_head_kernel",)) and lora_mod.is_checkpointed(("lm_head_kernel",))
