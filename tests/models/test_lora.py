"""LoRA in the decoder: a fresh adapter (B = 0) leaves the base's outputs unchanged, a trained one equals its
merge into the base, scanned or unrolled, and the adapters carry logical axes the sharding rules place."""

from __future__ import annotations

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
