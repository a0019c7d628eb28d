"""LoRA in the decoder: a fresh adapter (B = 0) leaves the base's outputs unchanged, a trained one equals its
merge into the base, scanned or unrolled, and the adapters carry logical axes the sharding rules place."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
