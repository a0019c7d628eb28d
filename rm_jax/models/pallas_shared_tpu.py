"""The shared-prompt flash kernel for TPU (Mosaic): ``model.attention: pallas_tpu``.

The same function as ``rm_jax.models.pallas_shared`` (the Triton-shaped kernel): a token sees earlier tokens
of its own segment, a response token also the tokens of the prompt it reads (id -g), never a sibling's; a
sliding window is measured in virtual indices. The mask is a predicate on per-token arrays evaluated tile by
tile, and which key blocks a query block reads comes from ``pallas_shared.block_ranges`` (its prompt's blocks,
then its own span up to the diagonal). What changes is the shape of the program, laid out as splash's:

- The key-block loop is the innermost grid axis, not a loop inside the kernel. The block ranges are
  scalar-prefetch arrays in SMEM (``PrefetchScalarGridSpec``), and the k/v index_map turns grid step j
  into the j-th key block the query block reads; steps past the last one are clamped to it, so the
  pipeline re-reads the block it holds (no DMA) and ``pl.when`` skips the compute. The grid is static
  (every query block has T / block steps); only the visible blocks are fetched and computed.
- Per-token ids are VMEM blocks broadcast along the other tile axis, as splash's segment ids: a query
  block's ids as [block, 128] (one value per sublane row, tiled across lanes), a key block's as
  [8, block] (read as one row); the dk/dv kernel works on the transposed score tile [key, query] and
  takes the transposed layouts. The running max / sum are [block, 128] float32 scratch, the output
  accumulator [block, D] float32 scratch; the log-sum-exp residual is [.., T, 128] and sliced to lane 0.
- Backward: a dq kernel over the same key steps; a dk/dv kernel per (kv head, key block) whose inner axis
  walks the query blocks that read it (``k_ranges``) for every query head of its group, accumulating the
  group's dk / dv in scratch (GQA without per-head copies). Softmax in float32 for every input dtype.

Blocks are multiples of 128 (TPU lanes), query block = key block. Rows are padded to whole blocks with a
segment id of their own; the head dim is taken whole (a block's last dim equals the array's).

Checked on CPU in Pallas TPU interpret mode (``pltpu.InterpretParams``: the grid, the scalar-prefetch index
maps, VMEM scratch, out-of-bounds block reads) against the dense softmax; not yet compiled by Mosaic on a
TPU, so ``auto`` never picks it (docs/sharing.md, "Kernels: pallas", has the command that measures it).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

from rm_jax.models.pallas_shared import block_ranges

Precision = Optional[lax.Precision]

LANES, SUBLANES = 128, 8
BLOCK = 128
_NEG = -1e30  # finite: a masked score must not make exp() or the online softmax's correction NaN
_BLOCK_PAD = -(2**30)  # segment id of the tokens that pad a row to whole blocks (attention._BLOCK_PAD)
_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_NN = (((1,), (0,)), ((), ()))  # a @ b


class _Cfg(NamedTuple):
    """Static settings (hashable: the custom_vjp's non-differentiable argument)."""

    blk: int
    nb: int  # blocks per padded row
    group: int  # query heads per kv head
    scale: float
    window: Optional[int]
    precision: Precision


def _dot(a, b, dims, c: _Cfg):
    return lax.dot_general(a, b, dims, precision=c.precision, preferred_element_type=jnp.float32)


def _q_range(qtab, b, i, nb: int):
    """Query block i's reads from the SMEM table: (prompt lo, prompt block count, own lo, step count)."""
    base = (b * nb + i) * 4
    a_lo, a_hi, c_lo = qtab[base], qtab[base + 1], qtab[base + 2]
    n_a = a_hi - a_lo
    return a_lo, n_a, c_lo, n_a + i - c_lo + 1


def _kv_step(qtab, b, i, j, nb: int):
    """The key block grid step j of query block i reads: the prompt's blocks, then [own lo, i]; past the
    last step, i again (the block already in VMEM: no fetch)."""
    a_lo, n_a, c_lo, _ = _q_range(qtab, b, i, nb)
    return jnp.where(j < n_a, a_lo + j, jnp.minimum(c_lo + j - n_a, i))


def _tile_lanes(x: jax.Array, width: int) -> jax.Array:
    """[n, 128] (one value per row) -> [n, width], width a multiple of 128; splash's broadcast."""
    return jnp.tile(x, (1, width // LANES))


def _mask(qs, qg, qi, qv, ks, ki, kv, window: Optional[int]) -> jax.Array:
    """The shared-layout predicate on a tile (any orientation, the arguments broadcast to it): causal; key
    in the query's segment or in the prompt the query reads (id -qg); inside the window in virtual indices.
    The rule of ``attention._visible``, written here so the tests compare two implementations."""
    ok = (qi >= ki) & ((qs == ks) | ((qg > 0) & (ks == -qg)))
    if window is not None:
        ok = ok & ((qv - kv) < window)
    return ok


def _row_tile(c: _Cfg, i, kblk, qcols, krows):
    """Mask of the [query, key] tile of query block i and key block kblk; qcols are [blk, 128] refs
    (segment, prompt id, virtual index), krows [8, blk] refs (segment, virtual index)."""
    blk = c.blk
    qs, qg = _tile_lanes(qcols[0][...], blk), _tile_lanes(qcols[1][...], blk)
    ks = krows[0][:1, :]
    qi = i * blk + lax.broadcasted_iota(jnp.int32, (blk, blk), 0)
    ki = kblk * blk + lax.broadcasted_iota(jnp.int32, (blk, blk), 1)
    qv = kv = None
    if c.window is not None:
        qv, kv = _tile_lanes(qcols[2][...], blk), krows[1][:1, :]
    return _mask(qs, qg, qi, qv, ks, ki, kv, c.window)


def _col_tile(c: _Cfg, i, j, qrows, kcols):
    """The transposed tile [key, query] for the dk/dv kernel: qrows [8, blk] refs, kcols [blk, 128] refs."""
    blk = c.blk
    qs, qg = qrows[0][:1, :], qrows[1][:1, :]
    ks = _tile_lanes(kcols[0][...], blk)
    ki = j * blk + lax.broadcasted_iota(jnp.int32, (blk, blk), 0)
    qi = i * blk + lax.broadcasted_iota(jnp.int32, (blk, blk), 1)
    qv = kv = None
    if c.window is not None:
        qv, kv = qrows[2][:1, :], _tile_lanes(kcols[1][...], blk)
    return _mask(qs, qg, qi, qv, ks, ki, kv, c.window)


def _n_ids(c: _Cfg) -> tuple[int, int]:
    """How many per-token arrays the query side and key side pass: the virtual index only with a window."""
    return (3, 2) if c.window is not None else (2, 1)


def _lane_cols(x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(x[..., None], (*x.shape, LANES))


def _sub_rows(x: jax.Array) -> jax.Array:
    return jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], SUBLANES, x.shape[-1]))


# ---------------------------------------------------------------- forward


def _fwd_kernel(qtab, ktab, *refs, c: _Cfg):
    del ktab
    nq_ids, nk_ids = _n_ids(c)
    qcols, refs = refs[:nq_ids], refs[nq_ids:]
    krows, refs = refs[:nk_ids], refs[nk_ids:]
    q_ref, k_ref, v_ref, o_ref, lse_ref, m_sc, l_sc, o_sc = refs
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    _, _, _, steps = _q_range(qtab, b, i, c.nb)
    d = o_sc.shape[-1]

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full_like(m_sc, _NEG)
        l_sc[...] = jnp.zeros_like(l_sc)
        o_sc[...] = jnp.zeros_like(o_sc)

    @pl.when(j < steps)
    def _run():
        kblk = _kv_step(qtab, b, i, j, c.nb)
        mask = _row_tile(c, i, kblk, qcols, krows)
        s = jnp.where(mask, _dot(q_ref[...], k_ref[...], _NT, c) * c.scale, _NEG)
        m_prev, l_prev = m_sc[...], l_sc[...]  # [blk, 128], every lane equal
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
        # A row with no visible key yet would add exp(0) per masked key; the correction below would erase
        # it, zeroed here anyway so l and o never hold it.
        p = jnp.where(mask, jnp.exp(s - _tile_lanes(m_next, c.blk)), 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_sc[...] = alpha * l_prev + jnp.sum(p, axis=-1, keepdims=True)
        m_sc[...] = m_next
        v = v_ref[...]
        o_sc[...] = _lanes_to(alpha, d) * o_sc[...] + _dot(p.astype(v.dtype), v, _NN, c)

    @pl.when(j == c.nb - 1)
    def _end():
        l = l_sc[...]  # every query sees itself (its diagonal block is always read), so l > 0
        o_ref[...] = (o_sc[...] / _lanes_to(l, d)).astype(o_ref.dtype)
        lse_ref[...] = m_sc[...] + jnp.log(l)


def _lanes_to(x: jax.Array, d: int) -> jax.Array:
    """[n, 128] (every lane equal) -> [n, d]: tiled to a whole number of lane tiles, then cut."""
    return jnp.tile(x, (1, -(-d // LANES)))[:, :d]


class _Specs:
    """BlockSpecs over the forward / dq grid (row, query head, query block, key step)."""

    def __init__(self, c: _Cfg, d: int):
        blk, nb, g = c.blk, c.nb, c.group

        def kv(r, h, i, j, qtab, ktab):
            return r, lax.div(h, g), _kv_step(qtab, r, i, j, nb), 0

        def krow(r, h, i, j, qtab, ktab):
            return r, 0, _kv_step(qtab, r, i, j, nb)

        self.q = pl.BlockSpec((None, None, blk, d), lambda r, h, i, j, *_: (r, h, i, 0))
        self.kv = pl.BlockSpec((None, None, blk, d), kv)
        self.qcol = pl.BlockSpec((None, blk, LANES), lambda r, h, i, j, *_: (r, i, 0))
        self.krow = pl.BlockSpec((None, SUBLANES, blk), krow)
        self.hcol = pl.BlockSpec((None, None, blk, LANES), lambda r, h, i, j, *_: (r, h, i, 0))


def _scratch(c: _Cfg, d: int, n_stats: int) -> list:
    return [pltpu.VMEM((c.blk, LANES), jnp.float32)] * n_stats + [pltpu.VMEM((c.blk, d), jnp.float32)]


def _params(interpret: Any, semantics: tuple[str, ...]) -> dict:
    return dict(compiler_params=pltpu.CompilerParams(dimension_semantics=semantics), interpret=interpret)


def _forward(q, k, v, ids, qtab, ktab, c: _Cfg, interpret):
    b, n, tp, d = q.shape
    s = _Specs(c, d)
    nq_ids, nk_ids = _n_ids(c)
    qcols = [_lane_cols(ids[0]), _lane_cols(ids[1])] + ([_lane_cols(ids[2])] if c.window is not None else [])
    krows = [_sub_rows(ids[0])] + ([_sub_rows(ids[2])] if c.window is not None else [])
    out, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, c=c),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(b, n, c.nb, c.nb),
            in_specs=[s.qcol] * nq_ids + [s.krow] * nk_ids + [s.q, s.kv, s.kv],
            out_specs=[s.q, s.hcol],
            scratch_shapes=_scratch(c, d, 2),
        ),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, n, tp, LANES), jnp.float32)],
        name="pallas_shared_tpu_fwd",
        **_params(interpret, ("parallel", "parallel", "parallel", "arbitrary")),
    )(qtab, ktab, *qcols, *krows, q, k, v)
    return out, lse[..., 0]


# ---------------------------------------------------------------- backward


def _dq_kernel(qtab, ktab, *refs, c: _Cfg):
    del ktab
    nq_ids, nk_ids = _n_ids(c)
    qcols, refs = refs[:nq_ids], refs[nq_ids:]
    krows, refs = refs[:nk_ids], refs[nk_ids:]
    q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, dq_ref, dq_sc = refs
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    _, _, _, steps = _q_range(qtab, b, i, c.nb)

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros_like(dq_sc)

    @pl.when(j < steps)
    def _run():
        kblk = _kv_step(qtab, b, i, j, c.nb)
        mask = _row_tile(c, i, kblk, qcols, krows)
        k = k_ref[...]
        s = _dot(q_ref[...], k, _NT, c) * c.scale
        p = jnp.where(mask, jnp.exp(s - _tile_lanes(lse_ref[...], c.blk)), 0.0)
        dp = _dot(do_ref[...], v_ref[...], _NT, c)
        ds = p * (dp - _tile_lanes(dl_ref[...], c.blk))
        dq_sc[...] += _dot(ds.astype(k.dtype), k, _NN, c)

    @pl.when(j == c.nb - 1)
    def _end():
        dq_ref[...] = (dq_sc[...] * c.scale).astype(dq_ref.dtype)


def _dkv_kernel(qtab, ktab, *refs, c: _Cfg):
    nq_ids, nk_ids = _n_ids(c)
    qrows, refs = refs[:nq_ids], refs[nq_ids:]
    kcols, refs = refs[:nk_ids], refs[nk_ids:]
    q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, dk_ref, dv_ref, dk_sc, dv_sc = refs
    b, j, s = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    i, live = _dkv_step(qtab, ktab, b, j, s, c)

    @pl.when(s == 0)
    def _init():
        dk_sc[...] = jnp.zeros_like(dk_sc)
        dv_sc[...] = jnp.zeros_like(dv_sc)

    @pl.when(live)
    def _run():
        mask = _col_tile(c, i, j, qrows, kcols)  # [key, query]
        q, do = q_ref[...], do_ref[...]
        st = _dot(k_ref[...], q, _NT, c) * c.scale
        pt = jnp.where(mask, jnp.exp(st - lse_ref[:1, :]), 0.0)
        dv_sc[...] += _dot(pt.astype(do.dtype), do, _NN, c)
        dpt = _dot(v_ref[...], do, _NT, c)
        dst = pt * (dpt - dl_ref[:1, :])
        dk_sc[...] += _dot(dst.astype(q.dtype), q, _NN, c)

    @pl.when(s == c.group * c.nb - 1)
    def _end():
        dk_ref[...] = (dk_sc[...] * c.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dkv_step(qtab, ktab, b, j, s, c: _Cfg):
    """Step s of key block j's inner axis: (the query block it reads, whether it computes). The axis walks
    the group's query heads, each over the query blocks [first, last) that read key block j; steps past
    last are clamped to its final block (no fetch), and a block inside the span that does not read j
    (a sibling's, between two of the group's) is skipped too."""
    base = (b * c.nb + j) * 4
    first, last = ktab[base], ktab[base + 1]
    t = lax.rem(s, c.nb)
    i = jnp.minimum(first + t, last - 1)
    a_lo, n_a, c_lo, _ = _q_range(qtab, b, i, c.nb)
    reads = ((a_lo <= j) & (j < a_lo + n_a)) | (c_lo <= j)  # j <= i holds: i >= first >= j
    return i, (first + t < last) & reads


def _backward(c: _Cfg, interpret, res, dout):
    q, k, v, ids, qtab, ktab, out, lse = res
    b, n, tp, d = q.shape
    kvh = k.shape[1]
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, N, Tp]: dO . O
    nq_ids, nk_ids = _n_ids(c)
    vid = [ids[2]] if c.window is not None else []
    s = _Specs(c, d)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, c=c),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(b, n, c.nb, c.nb),
            in_specs=[s.qcol] * nq_ids + [s.krow] * nk_ids + [s.q, s.kv, s.kv, s.q, s.hcol, s.hcol],
            out_specs=s.q,
            scratch_shapes=_scratch(c, d, 0),
        ),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        name="pallas_shared_tpu_dq",
        **_params(interpret, ("parallel", "parallel", "parallel", "arbitrary")),
    )(
        qtab, ktab,
        *(_lane_cols(x) for x in [ids[0], ids[1], *vid]), *(_sub_rows(x) for x in [ids[0], *vid]),
        q, k, v, dout, _lane_cols(lse), _lane_cols(delta),
    )  # fmt: skip

    blk, nb, g = c.blk, c.nb, c.group

    def qblk(r, h, j, st, qtab, ktab):
        return _dkv_step(qtab, ktab, r, j, st, c)[0]

    def head(h, st):
        return h * g + lax.div(st, nb)

    q_spec = pl.BlockSpec((None, None, blk, d), lambda r, h, j, st, *t: (r, head(h, st), qblk(r, h, j, st, *t), 0))
    kv_spec = pl.BlockSpec((None, None, blk, d), lambda r, h, j, st, *_: (r, h, j, 0))
    qrow = pl.BlockSpec((None, SUBLANES, blk), lambda r, h, j, st, *t: (r, 0, qblk(r, h, j, st, *t)))
    kcol = pl.BlockSpec((None, blk, LANES), lambda r, h, j, st, *_: (r, j, 0))
    hrow = pl.BlockSpec((None, None, SUBLANES, blk), lambda r, h, j, st, *t: (r, head(h, st), 0, qblk(r, h, j, st, *t)))
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, c=c),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(b, kvh, nb, g * nb),
            in_specs=[qrow] * nq_ids + [kcol] * nk_ids + [q_spec, kv_spec, kv_spec, q_spec, hrow, hrow],
            out_specs=[kv_spec, kv_spec],
            scratch_shapes=[pltpu.VMEM((blk, d), jnp.float32)] * 2,
        ),
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        name="pallas_shared_tpu_dkv",
        **_params(interpret, ("parallel", "parallel", "parallel", "arbitrary")),
    )(
        qtab, ktab,
        *(_sub_rows(x) for x in [ids[0], ids[1], *vid]), *(_lane_cols(x) for x in [ids[0], *vid]),
        q, k, v, dout, _sub_rows(lse), _sub_rows(delta),
    )  # fmt: skip
    return dq, dk, dv, None, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _attention(q, k, v, ids, qtab, ktab, c: _Cfg, interpret):
    return _forward(q, k, v, ids, qtab, ktab, c, interpret)[0]


def _attention_fwd(q, k, v, ids, qtab, ktab, c, interpret):
    out, lse = _forward(q, k, v, ids, qtab, ktab, c, interpret)
    return out, (q, k, v, ids, qtab, ktab, out, lse)


_attention.defvjp(_attention_fwd, _backward)


# ---------------------------------------------------------------- entry points


def _local(q, k, v, segment_ids, *, window, block, precision, interpret):
    b, t, n, d = q.shape
    nb = -(-t // block)
    tp = nb * block
    pad = [(0, 0), (0, tp - t), (0, 0), (0, 0)]
    qh, kh, vh = (jnp.pad(x, pad).transpose(0, 2, 1, 3) for x in (q, k, v))  # heads first: [B, H, Tp, D]
    seg = jnp.pad(segment_ids.astype(jnp.int32), [(0, 0), (0, tp - t)], constant_values=_BLOCK_PAD)
    q_ranges, k_ranges, group, vidx = block_ranges(seg, block, window)
    c = _Cfg(block, nb, n // k.shape[2], d**-0.5, window, precision)
    # Flat int32 tables: SMEM pads a 2-D array's minor dims, a 1-D one only to a word multiple.
    qtab, ktab = q_ranges.reshape(-1), k_ranges.reshape(-1)
    out = _attention(qh, kh, vh, (seg, group, vidx), qtab, ktab, c, interpret)
    return out.transpose(0, 2, 1, 3)[:, :t]


def default_interpret() -> Any:
    """Off a TPU: Pallas TPU interpret mode (simulated VMEM/SMEM, out-of-bounds block reads raise)."""
    return False if jax.default_backend() == "tpu" else pltpu.InterpretParams()


def pallas_shared_tpu_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    sliding_window: Optional[int] = None,
    block: int = BLOCK,
    precision: Precision = None,
    interpret: Any = None,
    mesh: Optional[jax.sharding.Mesh] = None,
) -> jax.Array:
    """Causal attention under the shared-prompt (or plain packed) mask on TPU; q [B,T,N,D], k/v [B,T,K,D]
    (K divides N) -> [B,T,N,D]. ``block`` (a multiple of 128) is the query and key block. ``interpret``:
    None = compiled on a TPU, ``pltpu.InterpretParams()`` elsewhere; True = plain Pallas interpret mode.
    ``mesh``: per shard in ``shard_map`` (rows over data/fsdp, heads over tensor), as splash."""
    n, kvh = q.shape[2], k.shape[2]
    if n % kvh:
        raise ValueError(f"query heads ({n}) must be a multiple of kv heads ({kvh})")
    if block < LANES or block % LANES:
        raise ValueError(f"pallas_tpu attention block={block}: a multiple of {LANES} (TPU lanes)")
    if interpret is None:
        interpret = default_interpret()
    run = functools.partial(_local, window=sliding_window, block=block, precision=precision, interpret=interpret)
    if mesh is None or mesh.size == 1:
        return run(q, k, v, segment_ids)
    rows = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1)
    size = 1
    for a in rows:
        size *= mesh.shape[a]
    rows_spec = (rows if len(rows) > 1 else rows[0]) if rows and q.shape[0] % size == 0 else None
    tensor = mesh.shape["tensor"]
    heads_spec = "tensor" if tensor > 1 and n % tensor == 0 and kvh % tensor == 0 else None
    qkv = P(rows_spec, None, heads_spec, None)
    return jax.shard_map(run, mesh=mesh, in_specs=(qkv, qkv, qkv, P(rows_spec, None)), out_specs=qkv, check_vma=False)(
        q, k, v, segment_ids
    )


__all__ = ["BLOCK", "default_interpret", "pallas_shared_tpu_attention"]
