"""Attention kernels for the decoder: causal, segment-masked (packing), optional sliding window.

``flash_attention`` is the default (``model.attention: xla``): query blocks in a ``lax.scan``, each
block scored only against the keys it can see, with a hand-written backward that recomputes the
probabilities from a saved log-sum-exp instead of storing them. Which keys a block can see is
decided at run time from the segment ids: a block inside a packed conversation skips every key
before that conversation's start as well as the causal upper triangle. The key window is a whole
number of blocks, picked by ``lax.switch`` among at most 16 static widths, so the program stays
static-shaped and compiles one body, not one per block. Pads (segment 0) read their own block only.

A shared-prompt row (``rm_jax.data.prefix_sharing``) gives a block two key ranges: the own range, from
the block's earliest own-segment start (not its prompt's) to the block, with the full mask; and, where
a query of the block reads a prompt, the prompt range: that prompt's keys before the own range, from a
start per row (rows differ) and a width out of the same static widths (the widest row's). The two are
disjoint by position and merged by their log-sum-exp, forward and backward, so a response never reads
the keys of the siblings between its prompt and itself; an unshared batch skips the prompt range.

Why by hand: XLA's autodiff of a blockwise softmax keeps every [block, T] probability tile alive for
the backward and, on CPU, transposes them for the gradient dots; a packed 2048-token row of ~600-token
conversations also wastes ~70% of a causal kernel's work on other conversations' keys.

Inside a scanned layer stack the segment ids are loop-invariant, and JAX's scan partial evaluation
hoists every value computed from loop-invariant inputs alone out of the loop, stacked over the
iterations it came from: the per-block segment masks, broadcast to the score tiles, for every query
block and every compiled width. That was 90 GiB for one Llama-1B layer at 4 x 4096 and why the
step asked for 99.85 GiB on an H100. ``_prepare`` ties the segment ids to q through an optimization
barrier so none of it is loop-invariant (docs/performance.md, "Memory").

``pooled_query_attention`` serves the last layer of a reward model, which only needs outputs at the
few tokens the head reads. ``attention_mask`` is the dense mask for the ``cudnn_dense`` path and the
tests' reference. ``attend`` dispatches to the kernel ``model.attention`` names (``resolve_kernel``):
this module's (``xla``), cuDNN's (``rm_jax.models.cudnn``) or Pallas splash (``rm_jax.models.splash``).
Every dot takes the model's matmul precision (``rm_jax.models.precision``).
"""

from __future__ import annotations

import functools
from typing import Optional, get_args

import jax
import jax.numpy as jnp
from jax import lax

from rm_jax.core.config import Attention
from rm_jax.models import cudnn, pallas_shared, pallas_shared_tpu, splash
from rm_jax.models.cudnn import KernelUnavailableError
from rm_jax.models.shared_layout import shared_spans, shared_token_info

Precision = Optional[lax.Precision]

# Large finite instead of -inf: a masked score must not turn exp() or its gradient into NaN.
_NEG = -1e30
# Segment id of the tokens that pad a row to whole blocks: below -T, so never a shared prompt's id.
_BLOCK_PAD = -(2**30)


def _visible(qs, ks, qg, qi, ki, qv, kv, window: Optional[int]) -> jax.Array:
    """Whether query (segment qs, prompt id qg, index qi, virtual index qv) sees key (ks, ki, kv): causal,
    and the key is in the query's segment or is a token of the prompt the query reads (id -qg); inside the
    sliding window measured in virtual indices (= positions in the unshared layout). Broadcasts."""
    allowed = (qi >= ki) & ((qs == ks) | ((qg > 0) & (ks == -qg)))
    if window is not None:
        allowed &= (qv - kv) < window
    return allowed


def attention_mask(segment_ids: jax.Array, sliding_window: Optional[int]) -> jax.Array:
    """[B, 1, 1, T, T] bool: causal, within one segment (and, in a shared-prompt row, a response to its
    prompt). Pads (segment 0) see only pads, so no row is fully masked and no NaN appears; their outputs
    are never read."""
    t = segment_ids.shape[-1]
    idx = jnp.arange(t)
    group, vidx, _ = shared_token_info(segment_ids)
    mask = _visible(
        segment_ids[:, :, None],
        segment_ids[:, None, :],
        group[:, :, None],
        idx[None, :, None],
        idx[None, None, :],
        vidx[:, :, None],
        vidx[:, None, :],
        sliding_window,
    )
    return mask[:, None, None]


def pooled_query_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    query_index: jax.Array,
    sliding_window: Optional[int],
    precision: Precision = None,
) -> jax.Array:
    """Attention for a few queries per row: q [B,S,N,D] sits at tokens query_index [B,S]; k/v [B,T,K,D].
    Each query sees the keys of its own segment up to itself, and of its prompt in a shared-prompt row
    (and inside the sliding window)."""
    b, s, n, d = q.shape
    t, kv = k.shape[1], k.shape[2]
    qg = q.reshape(b, s, kv, n // kv, d)
    scores = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32, precision=precision) * (d**-0.5)
    idx = jnp.arange(t)[None, None, :]
    group, vidx, _ = shared_token_info(segment_ids)
    at = functools.partial(jnp.take_along_axis, indices=query_index, axis=1)
    # The query's own token always passes, so no row is fully masked (absent segments point at token 0).
    mask = _visible(
        at(segment_ids)[:, :, None],
        segment_ids[:, None, :],
        at(group)[:, :, None],
        query_index[:, :, None],
        idx,
        at(vidx)[:, :, None],
        vidx[:, None, :],
        sliding_window,
    )
    scores = jnp.where(mask[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgst,btkd->bskgd", probs, v, precision=precision).reshape(b, s, n, d)


# ---------------------------------------------------------------- flash-style blockwise attention


def first_visible_key(segment_ids: jax.Array) -> jax.Array:
    """[B, T]: index of the first token carrying each token's segment id (the earliest key a causal,
    segment-masked query can see). Ids outside [-1, T-1] are clipped together, which can only make
    the answer earlier, never later, so block skipping stays exact."""
    b, t = segment_ids.shape
    ids = jnp.clip(segment_ids + 1, 0, t)
    idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    first = jax.vmap(lambda i, s: jax.ops.segment_min(i, s, num_segments=t + 1))(idx, ids)
    return jnp.take_along_axis(first, ids, axis=1)


def _key_blocks(segment_ids: jax.Array, block: int, window: Optional[int], from_prompt: bool = False) -> jax.Array:
    """[T / block] int32: how many key blocks (ending with its own) each query block needs for its own
    range (keys of each query's own segment), the maximum over the batch (one program runs every row).
    A shared row's prompt keys are the other range (``_prompt_spans``), so a response block starts at its
    own response, not at its prompt: the siblings in between are never read. ``from_prompt``: one range
    only, a response block's starting at its prompt (siblings between read and masked)."""
    b, t = segment_ids.shape
    nb = t // block
    group, vidx, first, prompt_first, _ = shared_spans(segment_ids)
    if from_prompt:
        first = jnp.where(group > 0, prompt_first, first)
    idx = jnp.arange(t, dtype=jnp.int32)
    # A pad's output is never read: its block alone keeps it from a fully masked row. Otherwise the pads
    # after a short row's last conversation would read the whole causal triangle over themselves.
    first = jnp.where(segment_ids == 0, (idx // block) * block, first)
    if window is not None:  # own keys keep the query's offset, so plain indices measure the window
        first = jnp.maximum(first, (vidx if from_prompt else idx) - window + 1)
    need = first.reshape(b, nb, block).min(axis=(0, 2))
    starts = jnp.arange(nb, dtype=jnp.int32) * block
    need = jnp.clip(need, 0, starts)  # a query always sees itself, so need <= the block's start
    return (starts + block - (need // block) * block) // block


def _prompt_spans(
    segment_ids: jax.Array, block: int, window: Optional[int], before: Optional[jax.Array] = None
) -> tuple[jax.Array, jax.Array]:
    """The prompt range of each query block, per row: ([B, T / block] first prompt key any of the block's
    response queries reads, [T / block] key blocks to read, the maximum over rows; 0 where no query of the
    block reads a prompt, in any row). Only keys before ``before`` [T / block] (the own range's first key:
    the own range reads the rest) count. A block holding responses of two groups spans both prompts, or
    the earlier one only where the later one lies in the own range."""
    b, t = segment_ids.shape
    nb = t // block
    group, vidx, _, lo, hi = shared_spans(segment_ids)
    if window is not None:  # prompt keys keep their indices; the query's is virtual
        lo = jnp.maximum(lo, vidx - window + 1)
    if before is not None:
        hi = jnp.minimum(hi, jnp.repeat(before, block)[None])
    reads = (group > 0) & (lo < hi)
    lo = jnp.where(reads, lo, t).reshape(b, nb, block).min(axis=2)
    hi = jnp.where(reads, hi, 0).reshape(b, nb, block).max(axis=2)
    span = jnp.maximum(hi - lo, 0).max(axis=0)
    return lo, -(-span // block)


class _Tokens:
    """The per-token arrays the block masks read: segment ids, prompt ids, virtual indices ([B, T] each)."""

    def __init__(self, seg: jax.Array):
        self.seg = seg
        self.group, self.vidx, _, _, _ = shared_spans(seg)


def _own_mask(tok: _Tokens, q0: jax.Array, k0: jax.Array, tq: int, tk: int, window: Optional[int]) -> jax.Array:
    """[B, tq, tk] bool for queries [q0, q0+tq) against the own range's keys [k0, k0+tk): every key the
    query sees there (its segment's, and a response's prompt keys that fall inside the range)."""
    qi = q0 + jnp.arange(tq)[None, :, None]
    ki = k0 + jnp.arange(tk)[None, None, :]

    def q(x):
        return jax.lax.dynamic_slice_in_dim(x, q0, tq, axis=1)[:, :, None]

    def k(x):
        return jax.lax.dynamic_slice_in_dim(x, k0, tk, axis=1)[:, None, :]

    return _visible(q(tok.seg), k(tok.seg), q(tok.group), qi, ki, q(tok.vidx), k(tok.vidx), window)


def _rows_slice(x: jax.Array, starts: jax.Array, size: int) -> jax.Array:
    """x[r, ..., starts[r] : starts[r] + size, ...] along the token axis (axis 2 of [B, kv, T, D], axis 1 of
    [B, T]): each row its own start. One dynamic slice per row (rows are few and static): a vmapped slice
    lowers to a gather, 2-3x slower on CPU."""
    axis = 1 if x.ndim == 2 else 2
    rows = [
        jax.lax.dynamic_slice_in_dim(jax.lax.dynamic_slice_in_dim(x, r, 1, axis=0), starts[r], size, axis=axis)
        for r in range(x.shape[0])
    ]
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=0)


def _rows_add(x: jax.Array, starts: jax.Array, upd: jax.Array) -> jax.Array:
    """x [B, kv, T, D] with upd [B, kv, size, D] added at each row's start (``_rows_slice``'s transpose), as
    in-place updates of one row's window each (a vmapped update lowers to a scatter)."""
    size = upd.shape[2]
    for r in range(x.shape[0]):
        at = (r, 0, starts[r], 0)
        old = jax.lax.dynamic_slice(x, at, (1, x.shape[1], size, x.shape[3]))
        x = jax.lax.dynamic_update_slice(x, old + upd[r : r + 1], at)
    return x


def _prompt_mask(
    tok: _Tokens, q0: jax.Array, starts: jax.Array, own0: jax.Array, tq: int, tk: int, window: Optional[int]
) -> jax.Array:
    """[B, tq, tk] bool, queries [q0, q0+tq) against the keys [starts[r], starts[r]+tk) of row r: the
    tokens of the prompt a response query reads that lie before the own range's first key own0. The own
    range reads those from own0 on, so the two ranges are disjoint and no key is counted twice."""
    qg = jax.lax.dynamic_slice_in_dim(tok.group, q0, tq, axis=1)[:, :, None]
    qv = jax.lax.dynamic_slice_in_dim(tok.vidx, q0, tq, axis=1)[:, :, None]
    ks = _rows_slice(tok.seg, starts, tk)[:, None, :]
    ki = starts[:, None, None] + jnp.arange(tk)[None, None, :]
    allowed = (qg > 0) & (ks == -qg) & (ki < own0)  # prompt keys precede their responses: causal already
    if window is not None:
        allowed &= (qv - _rows_slice(tok.vidx, starts, tk)[:, None, :]) < window
    return allowed


def _pad_to_blocks(x: jax.Array, tp: int, value: int = 0) -> jax.Array:
    t = x.shape[1]
    if tp == t:
        return x
    return jnp.pad(x, [(0, 0), (0, tp - t)] + [(0, 0)] * (x.ndim - 2), constant_values=value)


def _heads_major(x: jax.Array, kv: int) -> jax.Array:
    """[B, T, N, D] -> [B, kv, T, N/kv, D]: one kv head's query group is contiguous per token, so a
    block of queries is a [block * group, D] matrix and every score dot is a plain batched matmul."""
    b, t, n, d = x.shape
    return x.reshape(b, t, kv, n // kv, d).transpose(0, 2, 1, 3, 4)


class _Plan:
    """Shapes shared by the forward and the backward."""

    def __init__(self, q: jax.Array, k: jax.Array, block: int, precision: Precision = None):
        self.b, self.t, self.n, self.d = q.shape
        self.precision = precision
        self.kv = k.shape[2]
        self.g = self.n // self.kv
        self.block = max(1, min(block if block > 0 else self.t, self.t))
        self.tp = -(-self.t // self.block) * self.block
        self.nb = self.tp // self.block
        self.scale = self.d**-0.5
        # Key-window widths (in blocks) with a compiled branch each. Capped so compile time stays
        # flat in T: every width up to a quarter of the cap (short conversations, a shared row's responses
        # and prompts, pads), then evenly spaced, so past the cap a block reads up to about
        # nb / (0.75 cap) blocks more than it needs.
        n = min(self.nb, MAX_WIDTHS)
        small = n // 4
        rest = n - small
        self.widths = list(range(1, small + 1)) + [small + -(-(j + 1) * (self.nb - small) // rest) for j in range(rest)]

    def key_start(self, i: jax.Array, tk: int) -> jax.Array:
        """First key of a window of tk keys ending at block i's end; a window wider than what
        precedes the block is moved right (the causal mask hides the keys past the block)."""
        return jnp.clip((i + 1) * self.block - tk, 0, self.tp - tk)


MAX_WIDTHS = 16


def _switch(plan: _Plan, needed: jax.Array, i: jax.Array, branch, *args):
    """Run branch(width_in_blocks, *args) with the narrowest compiled width that covers the
    needed[i] key blocks of query block i (own range); each branch has static shapes."""
    need = jnp.clip(needed[i], 1, i + 1)
    choice = jnp.searchsorted(jnp.asarray(plan.widths, jnp.int32), need)
    return jax.lax.switch(choice, [functools.partial(branch, w) for w in plan.widths], *args)


def _prompt_switch(plan: _Plan, needed: jax.Array, i: jax.Array, branch, skip, *args):
    """Run branch(width_in_blocks, *args) for query block i's prompt range with the narrowest compiled width
    covering needed[i] blocks, or skip(*args) where no query of the block reads a prompt (needed[i] == 0:
    every block of an unshared batch, which then costs what it did before the prompt range existed)."""
    choice = jnp.searchsorted(jnp.asarray([0, *plan.widths], jnp.int32), needed[i])
    return jax.lax.switch(choice, [skip] + [functools.partial(branch, w) for w in plan.widths], *args)


class _Ranges:
    """The key ranges of every query block: ``own`` [nb] key blocks ending with the block's own, and the
    prompt range's per-row first key ``prompt_lo`` [B, nb] and width in blocks ``prompt`` [nb]."""

    def __init__(self, p: _Plan, seg: jax.Array, window: Optional[int], prompt_range: bool = True):
        self.own = _key_blocks(seg, p.block, window, from_prompt=not prompt_range)
        self.prompt: Optional[jax.Array] = None  # no prompt range: the own range starts at the prompt
        if not prompt_range:
            return
        # The own range's first key per block, as _switch and _Plan.key_start place it.
        i = jnp.arange(p.nb, dtype=jnp.int32)
        widths = jnp.asarray(p.widths, jnp.int32)
        tk = widths[jnp.searchsorted(widths, jnp.clip(self.own, 1, i + 1))] * p.block
        self.own0 = jnp.clip((i + 1) * p.block - tk, 0, p.tp - tk)
        self.prompt_lo, self.prompt = _prompt_spans(seg, p.block, window, self.own0)

    def prompt_start(self, p: _Plan, i: jax.Array, tk: int) -> jax.Array:
        """[B] first key of each row's tk-key prompt window for block i (moved left to fit the row)."""
        return jnp.clip(self.prompt_lo[:, i], 0, p.tp - tk)


def _prepare(q, k, v, segment_ids, window, block, precision, prompt_range):
    """The forward's and the backward's common inputs: rows padded to whole blocks (pad tokens get
    segment _BLOCK_PAD: they see only themselves and are sliced off at the end), heads-major layouts
    ([B, kv, T, group, D] and [B, kv, T, D]) and the key ranges each query block reads."""
    p = _Plan(q, k, block, precision)
    # Make the segment ids depend on q, so nothing below is loop-invariant in a layer scan (see the
    # module docstring: otherwise JAX hoists every block's mask, for every width, out of the scan).
    q, segment_ids = jax.lax.optimization_barrier((q, segment_ids))
    seg = _pad_to_blocks(segment_ids, p.tp, _BLOCK_PAD)
    qh = _heads_major(_pad_to_blocks(q, p.tp), p.kv)
    kh = _pad_to_blocks(k, p.tp).transpose(0, 2, 1, 3)
    vh = _pad_to_blocks(v, p.tp).transpose(0, 2, 1, 3)
    return p, _Tokens(seg), qh, kh, vh, _Ranges(p, seg, window, prompt_range)


def _forward(q, k, v, segment_ids, window, block, precision, prompt_range):
    """Per query block: softmax statistics and the unnormalized output over the own range, then (shared
    rows only) over the prompt range, merged by their running maxima: exactly the softmax over both."""
    p, seg, qh, kh, vh, ranges = _prepare(q, k, v, segment_ids, window, block, precision, prompt_range)
    b, kv, g, d, blk = p.b, p.kv, p.g, p.d, p.block

    def scores_pv(qb, kb, vb, mask, tk, own: bool):
        """(max, sum of exp, unnormalized output) of one range. The own range always holds the query itself,
        so exp(_NEG - max) = 0 at its masked keys; the prompt range can mask a whole row (max = _NEG)."""
        s = jnp.einsum("bkrd,bksd->bkrs", qb, kb, preferred_element_type=jnp.float32, precision=p.precision).reshape(
            b, kv, blk, g, tk
        )
        s = jnp.where(mask[:, None, :, None, :], s * p.scale, _NEG)
        m = jnp.max(s, axis=-1, keepdims=True)
        e = jnp.exp(s - m)
        if not own:
            e = jnp.where(mask[:, None, :, None, :], e, 0.0)
        o = jnp.einsum(
            "bkrs,bksd->bkrd",
            e.reshape(b, kv, blk * g, tk).astype(v.dtype),
            vb,
            preferred_element_type=jnp.float32,
            precision=p.precision,
        )
        return m, jnp.sum(e, axis=-1, keepdims=True), o.reshape(b, kv, blk, g, d)

    def own(w: int, i: jax.Array):
        tk = w * blk
        q0, k0 = i * blk, p.key_start(i, tk)
        qb = jax.lax.dynamic_slice_in_dim(qh, q0, blk, axis=2).reshape(b, kv, blk * g, d)
        kb = jax.lax.dynamic_slice_in_dim(kh, k0, tk, axis=2)
        vb = jax.lax.dynamic_slice_in_dim(vh, k0, tk, axis=2)
        return scores_pv(qb, kb, vb, _own_mask(seg, q0, k0, blk, tk, window), tk, True)

    def prompt(w: int, i: jax.Array, m, l, o):
        tk = w * blk
        q0, k0 = i * blk, ranges.prompt_start(p, i, tk)
        qb = jax.lax.dynamic_slice_in_dim(qh, q0, blk, axis=2).reshape(b, kv, blk * g, d)
        m2, l2, o2 = scores_pv(
            qb,
            _rows_slice(kh, k0, tk),
            _rows_slice(vh, k0, tk),
            _prompt_mask(seg, q0, k0, ranges.own0[i], blk, tk, window),
            tk,
            False,
        )
        mm = jnp.maximum(m, m2)  # the own range always has the query itself: mm is finite
        c, c2 = jnp.exp(m - mm), jnp.exp(m2 - mm)
        return mm, l * c + l2 * c2, o * c + o2 * c2

    def one_block(i: jax.Array):
        m, l, o = _switch(p, ranges.own, i, own, i)
        if ranges.prompt is not None:
            m, l, o = _prompt_switch(p, ranges.prompt, i, prompt, lambda i, *mlo: mlo, i, m, l, o)
        return (o / l).astype(q.dtype), (m + jnp.log(l))[..., 0]

    _, (ob, lse) = jax.lax.scan(lambda c, i: (c, one_block(i)), None, jnp.arange(p.nb))
    out = ob.transpose(1, 0, 3, 2, 4, 5).reshape(b, p.tp, p.n, d)[:, : p.t]  # [nb,B,kv,blk,g,D] -> [B,T,N,D]
    return out, lse


def _flash_fwd(q, k, v, segment_ids, window, block, precision, prompt_range):
    out, lse = _forward(q, k, v, segment_ids, window, block, precision, prompt_range)
    return out, (q, k, v, segment_ids, out, lse)


def _flash_bwd(window, block, precision, prompt_range, res, dout):
    q, k, v, segment_ids, out, lse = res
    p, seg, qh, kh, vh, ranges = _prepare(q, k, v, segment_ids, window, block, precision, prompt_range)
    b, kv, g, d, blk = p.b, p.kv, p.g, p.d, p.block
    doh = _heads_major(_pad_to_blocks(dout, p.tp), kv)
    # delta_i = sum_j P_ij dP_ij = dO_i . O_i  (the softmax backward's row term)
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, T, N]
    delta = _pad_to_blocks(delta, p.tp).reshape(b, p.tp, kv, g).transpose(0, 2, 1, 3)  # [B, kv, T, g]

    def grads(i, kb, vb, mask, tk):
        """(dq, dk, dv) of one key range of block i; the probabilities from the forward's log-sum-exp over
        both ranges, so each range's share is exact on its own."""
        q0 = i * blk
        qb = jax.lax.dynamic_slice_in_dim(qh, q0, blk, axis=2).reshape(b, kv, blk * g, d)
        dob = jax.lax.dynamic_slice_in_dim(doh, q0, blk, axis=2).reshape(b, kv, blk * g, d)
        db = jax.lax.dynamic_slice_in_dim(delta, q0, blk, axis=2)[..., None]
        s = jnp.einsum("bkrd,bksd->bkrs", qb, kb, preferred_element_type=jnp.float32, precision=p.precision).reshape(
            b, kv, blk, g, tk
        )
        prob = jnp.where(mask[:, None, :, None, :], jnp.exp(s * p.scale - lse[i][..., None]), 0.0)
        dprob = jnp.einsum(
            "bkrd,bksd->bkrs", dob, vb, preferred_element_type=jnp.float32, precision=p.precision
        ).reshape(b, kv, blk, g, tk)
        ds = (prob * (dprob - db) * p.scale).reshape(b, kv, blk * g, tk).astype(q.dtype)
        prob = prob.reshape(b, kv, blk * g, tk).astype(v.dtype)
        dv_b = jnp.einsum("bkrs,bkrd->bksd", prob, dob, preferred_element_type=jnp.float32, precision=p.precision)
        dk_b = jnp.einsum("bkrs,bkrd->bksd", ds, qb, preferred_element_type=jnp.float32, precision=p.precision)
        dq_b = jnp.einsum("bkrs,bksd->bkrd", ds, kb, preferred_element_type=jnp.float32, precision=p.precision)
        return dq_b, dk_b, dv_b

    def own(w: int, carry, i: jax.Array):
        dk, dv = carry
        tk = w * blk
        k0 = p.key_start(i, tk)
        kb = jax.lax.dynamic_slice_in_dim(kh, k0, tk, axis=2)
        vb = jax.lax.dynamic_slice_in_dim(vh, k0, tk, axis=2)
        dq_b, dk_b, dv_b = grads(i, kb, vb, _own_mask(seg, i * blk, k0, blk, tk, window), tk)
        dk = jax.lax.dynamic_update_slice_in_dim(
            dk, jax.lax.dynamic_slice_in_dim(dk, k0, tk, axis=2) + dk_b, k0, axis=2
        )
        dv = jax.lax.dynamic_update_slice_in_dim(
            dv, jax.lax.dynamic_slice_in_dim(dv, k0, tk, axis=2) + dv_b, k0, axis=2
        )
        return (dk, dv), dq_b

    def prompt(w: int, carry, dq, i: jax.Array):
        dk, dv = carry
        tk = w * blk
        k0 = ranges.prompt_start(p, i, tk)
        mask = _prompt_mask(seg, i * blk, k0, ranges.own0[i], blk, tk, window)
        dq_b, dk_b, dv_b = grads(i, _rows_slice(kh, k0, tk), _rows_slice(vh, k0, tk), mask, tk)
        return (_rows_add(dk, k0, dk_b), _rows_add(dv, k0, dv_b)), dq + dq_b

    def one_block(carry, i: jax.Array):
        carry, dq = _switch(p, ranges.own, i, own, carry, i)
        if ranges.prompt is not None:
            carry, dq = _prompt_switch(p, ranges.prompt, i, prompt, lambda *a: a[:2], carry, dq, i)
        return carry, dq.reshape(b, kv, blk, g, d).astype(q.dtype)

    zeros = jnp.zeros((b, kv, p.tp, d), jnp.float32)
    (dk, dv), dqb = jax.lax.scan(one_block, (zeros, zeros), jnp.arange(p.nb))
    dq = dqb.transpose(1, 0, 3, 2, 4, 5).reshape(b, p.tp, p.n, d)[:, : p.t]
    dk = dk.transpose(0, 2, 1, 3)[:, : p.t].astype(k.dtype)
    dv = dv.transpose(0, 2, 1, 3)[:, : p.t].astype(v.dtype)
    return dq, dk, dv, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash(q, k, v, segment_ids, window, block, precision, prompt_range):
    return _forward(q, k, v, segment_ids, window, block, precision, prompt_range)[0]


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    sliding_window: Optional[int] = None,
    block: int = 128,
    precision: Precision = None,
    prompt_range: bool = False,
) -> jax.Array:
    """Causal, segment-masked attention; q [B,T,N,D], k/v [B,T,K,D] (K divides N) -> [B,T,N,D].

    ``prompt_range``: a shared-prompt row's response blocks read their prompt as a second key range
    (siblings skipped), for batches of shared prompts (``DecoderConfig.shared_prompts``); False (default)
    compiles one range per block, from the prompt on (siblings read and masked): exact on every layout,
    and about 3x quicker to compile.

    Softmax in float32 whatever the compute dtype. Pads (segment 0) attend to some pads before them
    (their own block's at least, themselves always), so no row is fully masked; their outputs are
    finite, never read, and not ``reference_attention``'s (which reads every earlier pad): nothing but
    pads sees a pad, so every other output and gradient is. block <= 0 means one block of the whole row."""
    return _flash(q, k, v, segment_ids, sliding_window, int(block), precision, bool(prompt_range))


KERNELS = tuple(k for k in get_args(Attention) if k != "auto")  # model.attention, "auto" resolved below


def resolve_kernel(
    name: str,
    backend: Optional[str] = None,
    *,
    dtype: Optional[str] = None,
    compute_capability: Optional[tuple[int, int]] = None,
) -> str:
    """The kernel ``model.attention: name`` runs on ``backend`` (default: JAX's default backend).

    ``auto``: TPU -> ``splash``; GPU -> packed ``cudnn`` (Hopper or newer, bfloat16/float16),
    ``cudnn_dense`` on older GPUs, ``xla`` for float32 (cuDNN flash attention has no float32, and
    float32 is for scoring parity); CPU and anything else -> ``xla``. ``dtype`` is model.dtype (None:
    assume bfloat16). Explicit names come back as they are, except that ``cudnn`` / ``cudnn_dense``
    without a GPU raise KernelUnavailableError here, before anything is traced or compiled."""
    backend = backend or jax.default_backend()
    if name != "auto":
        if name not in KERNELS:
            raise ValueError(f"model.attention={name!r}; choose auto or one of {', '.join(KERNELS)}")
        if name in ("cudnn", "cudnn_dense"):
            cudnn.check_backend(name, backend)
        return name
    if backend == "tpu":
        return "splash"
    if backend in ("gpu", "cuda"):
        if dtype == "float32":
            return "xla"
        cc = compute_capability or cudnn.gpu_compute_capability()
        return "cudnn" if cc is None or cc >= (9, 0) else "cudnn_dense"
    return "xla"  # cpu, and rocm (no cuDNN)


# Kernels whose mask reads the shared-prompt layout's negative prompt ids (rm_jax.data.prefix_sharing).
SHARED_KERNELS = ("xla", "cudnn_dense", "pallas", "pallas_tpu")


def shared_layout_kernel(name: str, backend: Optional[str] = None, *, dtype: Optional[str] = None) -> str:
    """The ``model.attention`` setting a shared-prompt batch runs with: ``name`` itself when the kernel it
    resolves to reads prompt ids (``SHARED_KERNELS``), else the blockwise ``xla`` kernel, which runs on every
    backend (cuDNN's packed layout and splash take plain segment ids only)."""
    return name if resolve_kernel(name, backend, dtype=dtype) in SHARED_KERNELS else "xla"


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    kernel: str,
    sliding_window: Optional[int] = None,
    block: int = 128,
    precision: Precision = None,
    max_segments: Optional[int] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
    prompt_range: bool = False,
) -> jax.Array:
    """Causal, segment-masked attention by the named kernel (already resolved: see resolve_kernel).
    q [B,T,N,D], k/v [B,T,K,D] -> [B,T,N,D]. ``max_segments`` (conversations per row) bounds the
    packed cuDNN layout; ``mesh`` lets splash run per shard; ``prompt_range``: the xla kernel's
    (``flash_attention``)."""
    if kernel == "xla":
        return flash_attention(q, k, v, segment_ids, sliding_window, block, precision, prompt_range)
    if kernel == "cudnn":
        if max_segments is None:
            raise ValueError("attention kernel 'cudnn' needs max_segments (conversations per row) to size its layout")
        return cudnn.packed_attention(q, k, v, segment_ids, max_segments=max_segments, sliding_window=sliding_window)
    if kernel == "cudnn_dense":
        cudnn.check_backend(kernel)  # before building the T x T mask
        mask = attention_mask(segment_ids, sliding_window)[:, 0]  # [B, 1, T, T]
        return cudnn.dense_mask_attention(q, k, v, mask)
    if kernel == "splash":
        return splash.splash_attention(
            q, k, v, segment_ids, sliding_window=sliding_window, precision=precision, mesh=mesh
        )
    if kernel == "pallas":  # its own block (BLOCK): attention_block sizes the xla kernel's scan
        return pallas_shared.pallas_shared_attention(
            q, k, v, segment_ids, sliding_window=sliding_window, precision=precision
        )
    if kernel == "pallas_tpu":  # Mosaic; per shard under a mesh, as splash
        return pallas_shared_tpu.pallas_shared_tpu_attention(
            q, k, v, segment_ids, sliding_window=sliding_window, precision=precision, mesh=mesh
        )
    raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {', '.join(KERNELS)}")


def reference_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    sliding_window: Optional[int] = None,
    precision: Precision = lax.Precision.HIGHEST,
) -> jax.Array:
    """The same function as a dense T x T softmax, differentiated by XLA: the tests' yardstick."""
    b, t, n, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, n // kv, d)
    s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32, precision=precision) * (d**-0.5)
    s = jnp.where(attention_mask(segment_ids, sliding_window), s, _NEG)
    probs = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v, precision=precision).reshape(b, t, n, d)


__all__ = [
    "KERNELS",
    "KernelUnavailableError",
    "SHARED_KERNELS",
    "attend",
    "attention_mask",
    "flash_attention",
    "pooled_query_attention",
    "reference_attention",
    "resolve_kernel",
    "shared_layout_kernel",
    "shared_token_info",
]
