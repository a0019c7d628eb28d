"""The TPU (Mosaic) shared-prompt kernel (rm_jax.models.pallas_shared_tpu) in Pallas TPU interpret mode on CPU,
against the dense softmax of ``reference_attention``: forward and gradients on a row of a plain conversation, two
prompt groups and pads, and a plain packed row; GQA; with and without a sliding window; float32 tight, bfloat16
loose. The grid's key steps (scalar-prefetch tables -> key blocks) are checked against the dense mask without
running the kernel. Interpret mode is slow: T=512 with blocks of 128, tiny heads, one compile per case."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from rm_jax.models import pallas_shared_tpu as pst
from rm_jax.models.attention import (
    SHARED_KERNELS,
    attend,
    attention_mask,
    reference_attention,
    resolve_kernel,
    shared_layout_kernel,
)
from rm_jax.models.pallas_shared import block_ranges
from tests.helpers import requires_devices

T, BLK = 512, 128


def _rows() -> np.ndarray:
    """Row 0: a plain conversation, prompt -2 with responses 2 and 3 (all in block 0), prompt -5 (from 128)
    with response 5 (150..384) and 6 (384..510), pads. With blocks of 128, block 3 (response 6) reads its
    prompt's block 1 and itself, skipping block 2 (response 5, a sibling) and block 0 (the first group).
    Row 1: four plain packed conversations and pads."""
    seg = np.zeros((2, T), np.int32)
    seg[0, :510] = np.repeat([1, -2, 2, 3, -5, 5, 6], [10, 60, 30, 28, 22, 234, 126])
    seg[1, :480] = np.repeat([1, 2, 3, 4], [150, 90, 200, 40])
    return seg


def _inputs(dtype, b=2, n=4, kv=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    shapes = ((b, T, n, d), (b, T, kv, d), (b, T, kv, d), (b, T, n, d))
    return tuple(jnp.asarray(rng.standard_normal(s), dtype) for s in shapes)


def _steps(seg: jax.Array, window):
    """What the kernels' index maps compute, for every grid point: [B, nb(query), nb(step)] key blocks the
    forward / dq read with whether the step computes, and [B, nb(key), nb(step)] query blocks the dk/dv
    kernel reads for one head with whether it computes."""
    b, t = seg.shape
    nb = t // BLK
    q_ranges, k_ranges, _, _ = block_ranges(seg, BLK, window)
    qtab, ktab = q_ranges.reshape(-1), k_ranges.reshape(-1)
    c = pst._Cfg(BLK, nb, 1, 1.0, window, None)
    r, x, s = np.meshgrid(np.arange(b), np.arange(nb), np.arange(nb), indexing="ij")
    r, x, s = (jnp.asarray(a.ravel(), jnp.int32) for a in (r, x, s))
    kblk = jax.vmap(lambda r, i, j: pst._kv_step(qtab, r, i, j, nb))(r, x, s)
    kstep = jax.vmap(lambda r, i: pst._q_range(qtab, r, i, nb)[3])(r, x)
    qblk, live = jax.vmap(lambda r, j, s: pst._dkv_step(qtab, ktab, r, j, s, c))(r, x, s)
    shape = (b, nb, nb)
    return (
        np.asarray(kblk).reshape(shape),
        (np.asarray(s) < np.asarray(kstep)).reshape(shape),
        np.asarray(qblk).reshape(shape),
        np.asarray(live).reshape(shape),
    )


@pytest.mark.parametrize("window", [None, 100])
def test_grid_steps_read_every_visible_block_and_skip_siblings(window):
    """Every (query block, key block) pair with a visible key is computed by some forward / dq step and some
    dk/dv step, and no pair is computed twice (the online softmax would count it twice)."""
    seg = jnp.asarray(_rows())
    kblk, run, qblk, live = _steps(seg, window)
    mask = np.asarray(attention_mask(seg, window))[:, 0, 0]
    nb = T // BLK
    seen = mask.reshape(2, nb, BLK, nb, BLK).any(axis=(2, 4))  # [B, query block, key block]
    for r in range(2):
        for i in range(nb):
            got = kblk[r, i][run[r, i]]
            assert len(set(got)) == len(got), (r, i, got)
            assert set(np.nonzero(seen[r, i])[0]) <= set(got), (r, i, got)
            # past the last step: the last block again (held in VMEM, no fetch), computing nothing
            assert np.all(kblk[r, i][~run[r, i]] == i)
        for j in range(nb):
            got = qblk[r, j][live[r, j]]
            assert len(set(got)) == len(got), (r, j, got)
            assert set(np.nonzero(seen[r, :, j])[0]) <= set(got), (r, j, got)
    if window is None:  # response 6's block reads its prompt's block, then its own; not its sibling's
        np.testing.assert_array_equal(kblk[0, 3][run[0, 3]], [1, 3])
        np.testing.assert_array_equal(qblk[0, 2][live[0, 2]], [2])  # the sibling's block: read by itself only
        np.testing.assert_array_equal(qblk[0, 1][live[0, 1]], [1, 2, 3])  # the prompt's: by its responses


def _check(dtype, window, seed, atol, grad_atol, grad_rtol, n=4, kv=2):
    q, k, v, g = _inputs(dtype, n=n, kv=kv, seed=seed)
    seg = jnp.asarray(_rows())
    hi = lax.Precision.HIGHEST if dtype == jnp.float32 else None
    kern = functools.partial(pst.pallas_shared_tpu_attention, sliding_window=window, block=BLK, precision=hi)
    out, vjp = jax.vjp(lambda q, k, v: kern(q, k, v, seg), q, k, v)
    assert out.dtype == dtype
    f32 = tuple(x.astype(jnp.float32) for x in (q, k, v))
    want, vjp_ref = jax.vjp(lambda q, k, v: reference_attention(q, k, v, seg, sliding_window=window), *f32)
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=atol, rtol=0)
    for name, a, b in zip("qkv", vjp(g), vjp_ref(g.astype(jnp.float32))):
        assert a.dtype == dtype, name
        a = np.asarray(a, np.float32)
        assert np.all(np.isfinite(a)), name
        np.testing.assert_allclose(a, b, atol=grad_atol, rtol=grad_rtol, err_msg=f"d{name}")


@pytest.mark.parametrize("window", [100])  # no window: the grid-steps test and the bfloat16 test run it
def test_float32_forward_and_gradients_match_the_dense_softmax(window):
    _check(jnp.float32, window, seed=0, atol=2e-6, grad_atol=1e-5, grad_rtol=1e-5)


def test_bfloat16_inputs_follow_the_float32_function():
    # Probabilities and outputs rounded to bf16 (as for the other kernels' tests); gradients pass more roundings.
    _check(jnp.bfloat16, None, seed=1, atol=2e-2, grad_atol=6e-2, grad_rtol=6e-2, n=2, kv=1)


def test_model_attention_pallas_tpu_is_a_shared_kernel_never_picked_by_auto():
    assert "pallas_tpu" in SHARED_KERNELS and shared_layout_kernel("pallas_tpu", "tpu") == "pallas_tpu"
    for backend in ("cpu", "gpu", "tpu"):  # not compiled by Mosaic yet: auto never picks it, shared batches stay xla
        assert resolve_kernel("auto", backend, dtype="bfloat16", compute_capability=(9, 0)) != "pallas_tpu"
        assert shared_layout_kernel("auto", backend, dtype="bfloat16") != "pallas_tpu"
    assert shared_layout_kernel("auto", "tpu", dtype="bfloat16") == "xla"  # splash reads no prompt ids
    q, k, v, _ = _inputs(jnp.float32, b=1, n=2, kv=1, d=16)
    with pytest.raises(ValueError, match="multiple of 128"):
        pst.pallas_shared_tpu_attention(q, k, v, jnp.ones((1, T), jnp.int32), block=64)


@requires_devices(4)
def test_attend_runs_it_per_shard_on_a_mesh():
    """attend(kernel="pallas_tpu", mesh=...): rows over data, heads over tensor (one kv head per shard), a row
    length that is no whole number of blocks (200: padded to 256 inside); forward only (the gradients are
    the single-device tests')."""
    from rm_jax.models.sharding import make_mesh

    mesh = make_mesh(data=2, tensor=2, devices=jax.devices()[:4])
    q, k, v, _ = _inputs(jnp.float32, n=4, kv=2, d=16)
    q, k, v = (x[:, :200] for x in (q, k, v))
    seg = jnp.asarray(_rows()[:, :200])
    out = attend(q, k, v, seg, kernel="pallas_tpu", precision=lax.Precision.HIGHEST, mesh=mesh)
    np.testing.assert_allclose(out, reference_attention(q, k, v, seg), atol=2e-6, rtol=1e-5)
