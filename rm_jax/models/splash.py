"""Pallas splash attention (TPU): causal or local mask, segment ids, grouped-query heads.

``jax.experimental.pallas.ops.tpu.splash_attention`` skips whole [block_q, block_kv] tiles that
the static mask (causal, or the sliding window's band) hides, and masks packed conversations
element-wise with ``SegmentIds``. Off a TPU it runs in Pallas interpret mode: the same kernel
program evaluated by XLA, exact but slow; that is how the tests check it on CPU.

Layout handled here: the kernel takes one row at a time with heads first ([N, T, D]; k/v
[K, T, D] with K dividing N, GQA native), has no softmax scale (q is scaled first) and needs T to
be a whole number of 128-token blocks. Rows are padded to that with segment id -1, so pad
queries see only pad keys and real tokens never see them; the padding is sliced off. Padding
tokens of the batch (id 0) attend to each other like any segment, so no query row is ever fully
masked (the kernel's softmax would divide by zero) and every output is finite; no loss reads them.

Under a multi-device mesh the kernel runs per shard in ``shard_map`` (a Pallas TPU kernel cannot
be split by the compiler): rows over (data, fsdp), heads over tensor when both q and kv heads divide.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas.ops.tpu import splash_attention as sa
from jax.sharding import PartitionSpec as P

from rm_jax.models.precision import dots_inside

LANES = 128  # the kernel's minimum block (TPU lane width)


def _block(tp: int) -> int:
    """Largest of 512 / 256 / 128 dividing the padded length (bigger tiles run faster on TPU)."""
    return next(b for b in (512, 256, LANES) if tp % b == 0)


def _kernel(tp: int, heads: int, window: Optional[int], interpret: bool) -> sa.SplashAttentionKernel:
    """The kernel for one padded length. Built per trace, not cached: it holds its block tables as
    arrays of the trace that built it (reusing them in another trace leaks tracers). Building costs
    ~0.15 s at T=4096 (the mask processing on the host is cached inside JAX)."""
    if window is None:
        mask = sa.CausalMask((tp, tp))
    else:
        mask = sa.LocalMask((tp, tp), window_size=(window - 1, 0), offset=0)  # keys q-window+1 .. q: causal band
    blk = _block(tp)
    sizes = sa.BlockSizes(
        block_q=blk,
        block_kv=blk,
        block_kv_compute=blk,
        block_q_dkv=blk,
        block_kv_dkv=blk,
        block_kv_dkv_compute=blk,
        block_q_dq=blk,
        block_kv_dq=blk,
    )
    return sa.make_splash_mha(
        sa.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def _local(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    window: Optional[int],
    interpret: bool,
    precision: Optional[lax.Precision],
) -> jax.Array:
    b, t, n, d = q.shape
    tp = -(-t // LANES) * LANES
    pad = [(0, 0), (0, tp - t), (0, 0), (0, 0)]
    scale = d**-0.5
    qh = jnp.pad((q.astype(jnp.float32) * scale).astype(q.dtype), pad).transpose(0, 2, 1, 3)  # [B, N, Tp, D]
    kh = jnp.pad(k, pad).transpose(0, 2, 1, 3)
    vh = jnp.pad(v, pad).transpose(0, 2, 1, 3)
    seg = jnp.pad(segment_ids, [(0, 0), (0, tp - t)], constant_values=-1)

    def call(q_: jax.Array, k_: jax.Array, v_: jax.Array, s_: jax.Array) -> jax.Array:
        kernel = _kernel(tp, n, window, interpret)  # inside: its tables belong to the trace that runs it
        return jax.vmap(kernel)(q_, k_, v_, sa.SegmentIds(q=s_, kv=s_))

    out = _under_precision(call, precision)(qh, kh, vh, seg)
    return out.transpose(0, 2, 1, 3)[:, :t].astype(q.dtype)


def _under_precision(fn, precision: Optional[lax.Precision]):
    """fn(q, k, v, segment_ids) with every dot it traces under ``precision``, the backward's too.

    The kernel's dots take their precision from JAX's config when they are traced, and the
    backward kernels are traced during differentiation, after a ``with`` around the forward call
    has ended; this custom_vjp enters the setting again around the backward."""
    if precision is None:
        return fn

    @jax.custom_vjp
    def run(q, k, v, seg):
        with dots_inside(precision):
            return fn(q, k, v, seg)

    def fwd(q, k, v, seg):
        with dots_inside(precision):
            out, vjp = jax.vjp(lambda q_, k_, v_: fn(q_, k_, v_, seg), q, k, v)
        return out, vjp

    def bwd(vjp, g):
        with dots_inside(precision):
            return (*vjp(g), None)

    run.defvjp(fwd, bwd)
    return run


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    sliding_window: Optional[int] = None,
    precision: Optional[lax.Precision] = None,
    interpret: Optional[bool] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
) -> jax.Array:
    """Causal, segment-masked attention by splash; q [B,T,N,D], k/v [B,T,K,D] -> [B,T,N,D].
    ``interpret`` defaults to True off a TPU."""
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    run = functools.partial(_local, window=sliding_window, interpret=interpret, precision=precision)
    if mesh is None or mesh.size == 1:
        return run(q, k, v, segment_ids)
    rows = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1)
    rows_spec = (rows if len(rows) > 1 else rows[0]) if rows and q.shape[0] % _size(mesh, rows) == 0 else None
    tensor = mesh.shape["tensor"]
    heads_spec = "tensor" if tensor > 1 and q.shape[2] % tensor == 0 and k.shape[2] % tensor == 0 else None
    qkv = P(rows_spec, None, heads_spec, None)
    return jax.shard_map(run, mesh=mesh, in_specs=(qkv, qkv, qkv, P(rows_spec, None)), out_specs=qkv, check_vma=False)(
        q, k, v, segment_ids
    )


def _size(mesh: jax.sharding.Mesh, axes: tuple[str, ...]) -> int:
    out = 1
    for a in axes:
        out *= mesh.shape[a]
    return out
