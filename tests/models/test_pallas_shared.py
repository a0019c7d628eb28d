"""The Pallas shared-prompt kernel (rm_jax.models.pallas_shared) in interpret mode on CPU, against the dense
softmax of ``reference_attention`` (same mask rule, differentiated by XLA): forward and gradients, on rows
that mix a plain conversation, two prompt groups and pads, a plain packed row and a row of pads; GQA;
with and without a sliding window; float32 tight, bfloat16 loose. Interpret mode is slow: tiny shapes,
one compile per case."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from rm_jax.models.attention import (
    SHARED_KERNELS,
    attend,
    attention_mask,
    reference_attention,
    resolve_kernel,
    shared_layout_kernel,
)
from rm_jax.models.pallas_shared import block_ranges, pallas_shared_attention

_ranges = jax.jit(block_ranges, static_argnums=(1, 2))


def _rows() -> np.ndarray:
    """Row 0: a plain conversation, a prompt (-2) with three responses, a prompt (-5) with two, pads; with
    blocks of 16 the later responses' blocks read the first prompt's blocks and skip their siblings'.
    Row 1: four plain packed conversations and pads. Row 2: pads only."""
    seg = np.zeros((3, 128), np.int32)
    seg[0, :124] = np.repeat([1, -2, 2, 3, 4, -5, 5, 6], [6, 16, 28, 30, 20, 8, 8, 8])
    seg[1, :120] = np.repeat([1, 2, 3, 4], [37, 21, 50, 12])
    return seg


def _inputs(dtype, b=3, t=128, n=4, kv=2, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(
        jnp.asarray(rng.standard_normal(s), dtype) for s in ((b, t, n, d), (b, t, kv, d), (b, t, kv, d), (b, t, n, d))
    )


def _loss(fn):
    return lambda q, k, v, seg, g: jnp.sum(fn(q, k, v, seg).astype(jnp.float32) * g.astype(jnp.float32))


def test_block_ranges_skip_siblings_on_a_hand_worked_row():
    # Blocks of 8: plain [0,8), prompt -2 [8,16), responses 2 [16,24), 3 [24,32), 4 [32,40), pads [40,48).
    seg = jnp.asarray(np.repeat([1, -2, 2, 3, 4, 0], 8)[None], jnp.int32)
    q_ranges, k_ranges, group, vidx = _ranges(seg, 8)
    # Response 2's block touches its prompt's: one range. Responses 3 and 4 read the prompt block and
    # their own, skipping the siblings between.
    np.testing.assert_array_equal(
        q_ranges[0], [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [1, 2, 3, 0], [1, 2, 4, 0], [0, 0, 5, 0]]
    )
    # Key blocks: the prompt's is read by every block of its group, each response's by itself only.
    np.testing.assert_array_equal(k_ranges[0, :, :2], [[0, 1], [1, 5], [2, 3], [3, 4], [4, 5], [5, 6]])
    np.testing.assert_array_equal(group[0], np.repeat([0, 0, 2, 2, 2, 0], 8))
    np.testing.assert_array_equal(vidx[0, 24:32], np.arange(16, 24))  # response 3 continues the prompt


@pytest.mark.parametrize("window", [None, 5, 21])
def test_block_ranges_cover_every_visible_key(window):
    """Against the dense mask: every (query block, key block) pair with a visible key is read by the forward
    and dq ranges, and by the dk/dv ranges; and a sibling-only block is skipped (the ranges are not all)."""
    seg = jnp.asarray(_rows())
    mask = np.asarray(attention_mask(seg, window))[:, 0, 0]  # [B, T, T]
    blk = 16
    nb = seg.shape[1] // blk
    seen = mask.reshape(3, nb, blk, nb, blk).any(axis=(2, 4))  # [B, q block, k block]
    q_ranges, k_ranges, _, _ = (np.asarray(a) for a in _ranges(seg, blk, window))
    i, j = np.arange(nb)[:, None], np.arange(nb)[None, :]
    lo, hi, lo2 = (q_ranges[..., c][:, :, None] for c in range(3))
    read = ((lo <= j) & (j < hi)) | ((lo2 <= j) & (j <= i))
    assert not np.any(seen & ~read), np.argwhere(seen & ~read)
    k_read = (k_ranges[..., 0][:, None, :] <= i) & (i < k_ranges[..., 1][:, None, :])
    assert not np.any(seen & ~k_read), np.argwhere(seen & ~k_read)
    if window is None:  # response 4's block (80..96) reads the prompt's blocks and its own, not 2..4
        np.testing.assert_array_equal(np.nonzero(read[0, 5])[0], [0, 1, 5])


@pytest.mark.parametrize("window", [None, 6])
def test_float32_forward_and_gradients_match_the_dense_softmax(window):
    q, k, v, g = _inputs(jnp.float32)
    seg = jnp.asarray(_rows())
    hi = lax.Precision.HIGHEST
    kern = lambda *a: pallas_shared_attention(*a, sliding_window=window, block=16, precision=hi, interpret=True)  # noqa: E731
    ref = lambda *a: reference_attention(*a, sliding_window=window)  # noqa: E731
    out, vjp = jax.vjp(lambda q, k, v: kern(q, k, v, seg), q, k, v)
    want, vjp_ref = jax.vjp(lambda q, k, v: ref(q, k, v, seg), q, k, v)
    np.testing.assert_allclose(out, want, atol=2e-6, rtol=1e-5)
    for name, a, b in zip("qkv", vjp(g), vjp_ref(g)):
        assert np.all(np.isfinite(np.asarray(a))), name
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4, err_msg=f"d{name}")


def test_bfloat16_inputs_follow_the_float32_function():
    q, k, v, g = _inputs(jnp.bfloat16, seed=1)
    seg = jnp.asarray(_rows())
    out, vjp = jax.vjp(lambda q, k, v: pallas_shared_attention(q, k, v, seg, block=16, interpret=True), q, k, v)
    assert out.dtype == jnp.bfloat16
    f32 = tuple(x.astype(jnp.float32) for x in (q, k, v))
    want, vjp_ref = jax.vjp(lambda q, k, v: reference_attention(q, k, v, seg), *f32)
    # Probabilities and the output rounded to bf16 (2 u max|v|, u = 2^-9), as for the xla kernel's test.
    bound = 2 * 2.0**-9 * float(jnp.abs(f32[2]).max()) + 1e-5
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=bound, rtol=0)
    # Gradients pass more bf16 roundings (dO V^T, dS, the outputs): 6e-2 + 6e-2 |x|.
    for name, a, b in zip("qkv", vjp(g), vjp_ref(g.astype(jnp.float32))):
        assert a.dtype == jnp.bfloat16, name
        np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=6e-2, rtol=6e-2, err_msg=f"d{name}")


def test_model_attention_pallas_is_dispatched_and_never_auto():
    q, k, v, _ = _inputs(jnp.float32, b=1, t=40, d=16)
    seg = jnp.asarray(np.repeat([1, -2, 2, 3, 0], [5, 10, 9, 8, 8])[None], jnp.int32)
    out = attend(q, k, v, seg, kernel="pallas", precision=lax.Precision.HIGHEST)
    np.testing.assert_allclose(out, reference_attention(q, k, v, seg), atol=2e-6, rtol=1e-5)
    assert "pallas" in SHARED_KERNELS and shared_layout_kernel("pallas", "gpu") == "pallas"
    for backend in ("cpu", "gpu", "tpu"):  # unmeasured on a GPU: auto never picks it, shared batches stay xla
        assert resolve_kernel("auto", backend, dtype="bfloat16", compute_capability=(9, 0)) != "pallas"
        assert shared_layout_kernel("auto", backend, dtype="float32") != "pallas"
    with pytest.raises(ValueError, match="power of two"):
        pallas_shared_attention(q, k, v, seg, block=24)
