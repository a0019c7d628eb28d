"""Pallas flash attention whose mask reads the shared-prompt layout (``model.attention: pallas``).

The mask is a predicate on per-token arrays (segment id, prompt id, virtual index: what
``attention.shared_token_info`` returns), evaluated inside the kernel tile by tile, so nothing of size
T x T exists and one kernel serves plain packed rows and shared-prompt rows alike: a token sees earlier
tokens of its own segment, and a response token also sees the tokens of the prompt it reads (id -g),
never a sibling's; a sliding window is measured in virtual indices (positions in the unshared layout).

Written for the Pallas Triton lowering (GPU): a grid over (batch, query head, query block), every dot
2-D, an online softmax over key blocks. Which key blocks a query block reads is decided outside the
kernel, in JAX, per row: every query block gets two ranges of key blocks, the prompt its responses read
and the span from its earliest own-segment key to its diagonal (merged into one when they touch), so a
response block skips its earlier siblings' keys as well as other conversations' and the upper triangle.
The backward is FlashAttention-2's: a dq kernel over the same key ranges, and a dk/dv kernel per key
block over the query blocks whose ranges hold it (the same table, transposed). GQA: k/v are read
through the query head's kv head; dk/dv come out per query head in float32 and are summed over the
group outside (simple, and each program writes its own tile). Softmax in float32 for every input dtype.

Off a GPU it runs in Pallas interpret mode (the same program evaluated by XLA): exact and slow, which is
how the tests check it on CPU. It has not been compiled by Triton here (no GPU), so ``auto`` never picks
it and shared batches default to the ``xla`` kernel; docs/sharing.md ("Kernels: pallas") has the command
that measures it. The TPU (Mosaic) variant, with these block ranges in scalar memory and splash's
lane-dense layout, is ``rm_jax.models.pallas_shared_tpu``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from rm_jax.models.shared_layout import shared_token_info

Precision = Optional[lax.Precision]

BLOCK = 64  # query and key block; Triton tiles are powers of two, and dots want >= 16 per side
_NEG = -1e30  # finite: a masked score must not make exp() or the online softmax's correction NaN
_BLOCK_PAD = -(2**30)  # segment id of the tokens that pad a row to whole blocks (attention._BLOCK_PAD)
_WIDTH = 4  # the per-block bound vectors: (lo, hi, lo2, unused), a power of two for Triton


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _token_arrays(seg: jax.Array, window: Optional[int]) -> tuple[jax.Array, ...]:
    """Per token of block-padded rows: (prompt id, virtual index, the prompt keys it may read [lo, hi),
    the first own-segment key it may read). Empty prompt range for every token but a response's."""
    b, t = seg.shape
    idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    group, vidx, first = shared_token_info(seg)
    # The first token of each token's own segment (shared_token_info returns the prompt's for responses).
    code = jnp.where(seg < -t, 2 * t + 1, jnp.clip(seg + t, 0, 2 * t))
    seg_min = jax.vmap(lambda i, c: jax.ops.segment_min(i, c, num_segments=2 * t + 2))(idx, code)
    own_first = jnp.take_along_axis(seg_min, code, axis=1)
    shared = group > 0
    prompt_lo = first
    prompt_hi = own_first - (idx - vidx)  # the prompt's end: vidx = idx - (own_first - prompt_end)
    own_lo = own_first
    if window is not None:  # inside the window, in virtual indices (prompt keys keep their own index)
        prompt_lo = jnp.maximum(prompt_lo, vidx - window + 1)
        own_lo = jnp.maximum(own_lo, idx - window + 1)  # own keys: virtual distance = real distance
    has_prompt = shared & (prompt_lo < prompt_hi)
    return group, vidx, jnp.where(has_prompt, prompt_lo, t), jnp.where(has_prompt, prompt_hi, 0), own_lo


def block_ranges(
    segment_ids: jax.Array, block: int, window: Optional[int] = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The key blocks each query block reads, per row of block-padded ``segment_ids`` [B, T]: ``q_ranges``
    [B, nb, 4] = (prompt lo, prompt hi, own lo, 0) in blocks (prompt range [lo, hi) may be empty; the own
    range is [own lo, the block itself]), and ``k_ranges`` [B, nb, 4] = (first, last + 1, 0, 0): the query
    blocks whose ranges hold each key block. Also the prompt ids and virtual indices [B, T] the mask reads.

    The ranges come from each block's min / max over its tokens of the first visible key, so they cover
    every key any query of the block sees (exactness never depends on them: the mask is applied within)."""
    b, t = segment_ids.shape
    nb = t // block
    group, vidx, p_lo, p_hi, own_lo = _token_arrays(segment_ids, window)
    blocks = jnp.arange(nb, dtype=jnp.int32)
    a_lo = p_lo.reshape(b, nb, block).min(-1) // block
    a_hi = -(-p_hi.reshape(b, nb, block).max(-1) // block)
    c_lo = own_lo.reshape(b, nb, block).min(-1) // block
    empty = a_lo >= a_hi
    merge = empty | (a_hi >= c_lo)  # the two ranges touch: read them as one
    c_lo = jnp.where(merge, jnp.where(empty, c_lo, jnp.minimum(a_lo, c_lo)), c_lo)
    a_lo, a_hi = jnp.where(merge, 0, a_lo), jnp.where(merge, 0, jnp.minimum(a_hi, blocks + 1))
    c_lo = jnp.clip(c_lo, 0, blocks)  # a query always sees itself
    zero = jnp.zeros_like(a_lo)
    q_ranges = jnp.stack([a_lo, a_hi, c_lo, zero], axis=-1)
    # need[b, i, j]: query block i reads key block j
    j = blocks[None, None, :]
    need = ((a_lo[..., None] <= j) & (j < a_hi[..., None])) | ((c_lo[..., None] <= j) & (j <= blocks[None, :, None]))
    k_first = jnp.argmax(need, axis=1).astype(jnp.int32)  # every key block is read by its own query block
    k_last = nb - jnp.argmax(need[:, ::-1, :], axis=1).astype(jnp.int32)
    k_ranges = jnp.stack([k_first, k_last, zero, zero], axis=-1)
    return q_ranges, k_ranges, group, vidx


def _pick(vec: jax.Array, i: int) -> jax.Array:
    """vec[i] of a small int vector as a scalar, by a masked sum (Triton has no vector element access)."""
    return jnp.sum(jnp.where(jnp.arange(vec.shape[0]) == i, vec, 0))


def _sees(qs, qg, qi, qv, ks, ki, kv, window: Optional[int]) -> jax.Array:
    """The shared-layout mask for a [bq, 1] x [1, bk] tile: causal; the key is in the query's segment or
    in the prompt the query reads (id -qg); inside the window in virtual indices. The same rule as
    ``attention._visible``, written here so the tests compare two implementations, not one with itself."""
    ok = (qi >= ki) & ((qs == ks) | ((qg > 0) & (ks == -qg)))
    if window is not None:
        ok = ok & ((qv - kv) < window)
    return ok


def _dot(a, b, precision, ta: bool = False, tb: bool = False):
    """2-D a @ b (a^T with ta, b^T with tb), float32 accumulation."""
    dims = (((0,) if ta else (1,)), ((1,) if tb else (0,)))
    return lax.dot_general(a, b, (dims, ((), ())), precision=precision, preferred_element_type=jnp.float32)


class _Cfg(NamedTuple):
    """The kernels' static settings (hashable: a custom_vjp's non-differentiable argument)."""

    blk: int
    scale: float
    window: Optional[int]
    precision: Precision


# ---------------------------------------------------------------- kernels


def _fwd_kernel(rng_ref, qseg_ref, qgrp_ref, qvid_ref, seg_ref, vid_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, c):
    blk = c.blk
    i = pl.program_id(2)
    q = q_ref[...]
    qs, qg, qv = qseg_ref[...][:, None], qgrp_ref[...][:, None], qvid_ref[...][:, None]
    qi = (i * blk + jnp.arange(blk, dtype=jnp.int32))[:, None]
    rng = rng_ref[...]

    def body(j, carry):
        o, m, l = carry
        k0 = pl.multiple_of(j * blk, blk)
        kb, vb = k_ref[pl.ds(k0, blk), :], v_ref[pl.ds(k0, blk), :]
        ks, kv = seg_ref[pl.ds(k0, blk)][None, :], vid_ref[pl.ds(k0, blk)][None, :]
        ki = (k0 + jnp.arange(blk, dtype=jnp.int32))[None, :]
        mask = _sees(qs, qg, qi, qv, ks, ki, kv, c.window)
        s = jnp.where(mask, _dot(q, kb, c.precision, tb=True) * c.scale, _NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        corr = jnp.exp(m - m_new)
        # A row with no visible key yet would add exp(0) = 1 per key, which the next correction
        # exp(_NEG - m) = 0 erases; zeroed here anyway so l and o never hold it.
        p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
        l = corr * l + jnp.sum(p, axis=1)
        o = corr[:, None] * o + _dot(p.astype(vb.dtype), vb, c.precision)
        return o, m_new, l

    carry = (
        jnp.zeros((blk, q.shape[-1]), jnp.float32),
        jnp.full((blk,), _NEG, jnp.float32),
        jnp.zeros((blk,), jnp.float32),
    )
    carry = lax.fori_loop(_pick(rng, 0), _pick(rng, 1), body, carry)  # the prompt the responses read
    o, m, l = lax.fori_loop(_pick(rng, 2), i + 1, body, carry)  # own segment(s) up to the diagonal
    # Every query sees itself (the diagonal block is always read), so l > 0.
    o_ref[...] = (o / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def _dq_kernel(
    rng_ref, qseg_ref, qgrp_ref, qvid_ref, seg_ref, vid_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, dq_ref, *, c
):
    blk = c.blk
    i = pl.program_id(2)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], dl_ref[...][:, None]
    qs, qg, qv = qseg_ref[...][:, None], qgrp_ref[...][:, None], qvid_ref[...][:, None]
    qi = (i * blk + jnp.arange(blk, dtype=jnp.int32))[:, None]
    rng = rng_ref[...]

    def body(j, dq):
        k0 = pl.multiple_of(j * blk, blk)
        kb, vb = k_ref[pl.ds(k0, blk), :], v_ref[pl.ds(k0, blk), :]
        ks, kv = seg_ref[pl.ds(k0, blk)][None, :], vid_ref[pl.ds(k0, blk)][None, :]
        ki = (k0 + jnp.arange(blk, dtype=jnp.int32))[None, :]
        mask = _sees(qs, qg, qi, qv, ks, ki, kv, c.window)
        p = jnp.where(mask, jnp.exp(_dot(q, kb, c.precision, tb=True) * c.scale - lse), 0.0)
        ds = p * (_dot(do, vb, c.precision, tb=True) - delta)
        return dq + _dot(ds.astype(kb.dtype), kb, c.precision)

    dq = jnp.zeros((blk, q.shape[-1]), jnp.float32)
    dq = lax.fori_loop(_pick(rng, 0), _pick(rng, 1), body, dq)
    dq = lax.fori_loop(_pick(rng, 2), i + 1, body, dq)
    dq_ref[...] = (dq * c.scale).astype(dq_ref.dtype)


def _dkv_kernel(
    rng_ref, kseg_ref, kvid_ref, seg_ref, grp_ref, vid_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref,
    dk_ref, dv_ref, *, c,
):  # fmt: skip
    blk = c.blk
    j = pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    ks, kv = kseg_ref[...][None, :], kvid_ref[...][None, :]
    ki = (j * blk + jnp.arange(blk, dtype=jnp.int32))[None, :]
    rng = rng_ref[...]

    def body(i, carry):
        dk, dv = carry
        q0 = pl.multiple_of(i * blk, blk)
        qb, do = q_ref[pl.ds(q0, blk), :], do_ref[pl.ds(q0, blk), :]
        lse, delta = lse_ref[pl.ds(q0, blk)][:, None], dl_ref[pl.ds(q0, blk)][:, None]
        rows = pl.ds(q0, blk)
        qs, qg, qv = seg_ref[rows][:, None], grp_ref[rows][:, None], vid_ref[rows][:, None]
        qi = (q0 + jnp.arange(blk, dtype=jnp.int32))[:, None]
        mask = _sees(qs, qg, qi, qv, ks, ki, kv, c.window)
        p = jnp.where(mask, jnp.exp(_dot(qb, k, c.precision, tb=True) * c.scale - lse), 0.0)
        dv = dv + _dot(p.astype(do.dtype), do, c.precision, ta=True)
        ds = p * (_dot(do, v, c.precision, tb=True) - delta)
        dk = dk + _dot(ds.astype(qb.dtype), qb, c.precision, ta=True)
        return dk, dv

    zeros = jnp.zeros((blk, k.shape[-1]), jnp.float32)
    dk, dv = lax.fori_loop(_pick(rng, 0), _pick(rng, 1), body, (zeros, zeros))
    dk_ref[...] = dk * c.scale
    dv_ref[...] = dv


# ---------------------------------------------------------------- calls


def _compiler_params(interpret: bool):
    if interpret:
        return None
    from jax.experimental.pallas import triton as plgpu

    return plgpu.CompilerParams(num_warps=4, num_stages=2)


def _specs(b: int, tp: int, dp: int, blk: int, g: int):
    """BlockSpecs over the grid (row, query head, block): this block's slice or the whole row."""
    return {
        "rng": pl.BlockSpec((None, None, _WIDTH), lambda r, h, i: (r, i, 0)),
        "tok_blk": pl.BlockSpec((None, blk), lambda r, h, i: (r, i)),
        "tok_row": pl.BlockSpec((None, tp), lambda r, h, i: (r, 0)),
        "q_blk": pl.BlockSpec((None, blk, None, dp), lambda r, h, i: (r, i, h, 0)),
        "q_row": pl.BlockSpec((None, tp, None, dp), lambda r, h, i: (r, 0, h, 0)),
        "kv_blk": pl.BlockSpec((None, blk, None, dp), lambda r, h, i: (r, i, h // g, 0)),
        "kv_row": pl.BlockSpec((None, tp, None, dp), lambda r, h, i: (r, 0, h // g, 0)),
        "h_blk": pl.BlockSpec((None, None, blk), lambda r, h, i: (r, h, i)),
        "h_row": pl.BlockSpec((None, None, tp), lambda r, h, i: (r, h, 0)),
    }


def _forward(q, k, v, seg, group, vidx, q_ranges, k_ranges, c: _Cfg, interpret: bool):
    del k_ranges
    b, tp, n, dp = q.shape
    g = n // k.shape[2]
    s = _specs(b, tp, dp, c.blk, g)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, c=c),
        grid=(b, n, tp // c.blk),
        in_specs=[s["rng"], s["tok_blk"], s["tok_blk"], s["tok_blk"], s["tok_row"], s["tok_row"]]
        + [s["q_blk"], s["kv_row"], s["kv_row"]],
        out_specs=[s["q_blk"], s["h_blk"]],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, tp), jnp.float32)],
        compiler_params=_compiler_params(interpret),
        interpret=interpret,
        name="pallas_shared_fwd",
    )(q_ranges, seg, group, vidx, seg, vidx, q, k, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9))
def _attention(q, k, v, seg, group, vidx, q_ranges, k_ranges, c: _Cfg, interpret: bool):
    return _forward(q, k, v, seg, group, vidx, q_ranges, k_ranges, c, interpret)[0]


def _attention_fwd(q, k, v, seg, group, vidx, q_ranges, k_ranges, c, interpret):
    out, lse = _forward(q, k, v, seg, group, vidx, q_ranges, k_ranges, c, interpret)
    return out, (q, k, v, seg, group, vidx, q_ranges, k_ranges, out, lse)


def _attention_bwd(c: _Cfg, interpret: bool, res, dout):
    q, k, v, seg, group, vidx, q_ranges, k_ranges, out, lse = res
    b, tp, n, dp = q.shape
    kvh = k.shape[2]
    g = n // kvh
    s = _specs(b, tp, dp, c.blk, g)
    # delta_i = sum_j P_ij dP_ij = dO_i . O_i (the softmax backward's row term)
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1).transpose(0, 2, 1)  # [B, N, T]
    grid = (b, n, tp // c.blk)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, c=c),
        grid=grid,
        in_specs=[s["rng"], s["tok_blk"], s["tok_blk"], s["tok_blk"], s["tok_row"], s["tok_row"]]
        + [s["q_blk"], s["kv_row"], s["kv_row"], s["q_blk"], s["h_blk"], s["h_blk"]],
        out_specs=s["q_blk"],
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler_params(interpret),
        interpret=interpret,
        name="pallas_shared_dq",
    )(q_ranges, seg, group, vidx, seg, vidx, q, k, v, dout, lse, delta)
    # dk / dv per query head (each program owns its tile), summed over the query group below.
    per_head = jax.ShapeDtypeStruct((b, tp, n, dp), jnp.float32)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, c=c),
        grid=grid,
        in_specs=[s["rng"], s["tok_blk"], s["tok_blk"], s["tok_row"], s["tok_row"], s["tok_row"]]
        + [s["q_row"], s["kv_blk"], s["kv_blk"], s["q_row"], s["h_row"], s["h_row"]],
        out_specs=[s["q_blk"], s["q_blk"]],
        out_shape=[per_head, per_head],
        compiler_params=_compiler_params(interpret),
        interpret=interpret,
        name="pallas_shared_dkv",
    )(k_ranges, seg, vidx, seg, group, vidx, q, k, v, dout, lse, delta)
    dk = dk.reshape(b, tp, kvh, g, dp).sum(3).astype(k.dtype)
    dv = dv.reshape(b, tp, kvh, g, dp).sum(3).astype(v.dtype)
    return dq, dk, dv, None, None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def pallas_shared_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    sliding_window: Optional[int] = None,
    block: int = BLOCK,
    precision: Precision = None,
    interpret: Optional[bool] = None,
) -> jax.Array:
    """Causal attention under the shared-prompt (or plain packed) mask; q [B,T,N,D], k/v [B,T,K,D] (K
    divides N) -> [B,T,N,D]. ``block`` (a power of two) is the query and key block; ``interpret``
    defaults to True off a GPU. Pads (segment 0) see only pads, so no row is fully masked."""
    b, t, n, d = q.shape
    if n % k.shape[2]:
        raise ValueError(f"query heads ({n}) must be a multiple of kv heads ({k.shape[2]})")
    if block < 1 or block & (block - 1):
        raise ValueError(f"pallas attention block={block}: a power of two")
    if interpret is None:
        interpret = jax.default_backend() not in ("gpu", "cuda")
    blk = min(block, max(16, _pow2(t)))
    tp = -(-t // blk) * blk
    dp = max(16, _pow2(d))  # Triton tiles: powers of two, >= 16 per dot side; zero columns change nothing

    def pad(x):
        return jnp.pad(x, [(0, 0), (0, tp - t), (0, 0), (0, dp - d)])

    seg = jnp.pad(segment_ids.astype(jnp.int32), [(0, 0), (0, tp - t)], constant_values=_BLOCK_PAD)
    q_ranges, k_ranges, group, vidx = block_ranges(seg, blk, sliding_window)
    c = _Cfg(blk, d**-0.5, sliding_window, precision)
    out = _attention(pad(q), pad(k), pad(v), seg, group, vidx, q_ranges, k_ranges, c, bool(interpret))
    return out[:, :t, :, :d]


__all__ = ["BLOCK", "block_ranges", "pallas_shared_attention"]
