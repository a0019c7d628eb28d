"""cuDNN flash attention on GPU: packed (segment offsets and lengths) and dense-mask.

``cudnn`` (packed) gives cuDNN each row's segments as start offsets and lengths, so the kernel
skips every key outside a query's own conversation and nothing of size T x T exists anywhere.
Measured on an H100 (B=4, T=4096, 32/8 heads, D=64, bf16, fwd+bwd of one layer): 1.68 ms packed
against 8.3 ms with the dense [B, 1, T, T] mask (``cudnn_dense``, kept for comparison).

How the layout reaches the kernel: :func:`segment_runs` turns ``segment_ids`` [B, T] into
``offsets`` [B, M+1] and ``lengths`` [B, M] inside the jitted step (a pure function, static
shapes). Every maximal run of equal ids is one cuDNN segment, padding runs (id 0) included: a token
outside every segment would get no output from cuDNN (uninitialised memory), and a NaN there would
reach the weight gradients through ``x^T @ dy`` even though no loss reads it. The bound M is
static: the model passes ``max_segments`` (conversations per row) and M = max_segments + 2 leaves
room for a padding run before (left padding) and after (the packed row's tail) the conversations.
The pipeline (rm_jax.data.packing.build_batch) never makes more runs than that; a row that does
anyway gets NaN outputs, so the train step's finite check stops the run instead of letting
conversations see each other. Segment ids must be contiguous runs (the pipeline's layout): the
same id in two separate runs is two segments here, but one segment for the xla kernel.

The packed call is a private JAX function (``jax._src.cudnn.fused_attention_stablehlo``); it is
pinned behind :func:`_packed_attention_fn`, which names what is missing when it cannot be used.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rm_jax.core.errors import ConfigError

# Runs beyond the conversations: one padding run before them and one after.
EXTRA_RUNS = 2


class KernelUnavailableError(ConfigError):
    """The chosen attention kernel cannot run here (backend, dtype, GPU generation, JAX or cuDNN version)."""


def max_runs(max_segments: int) -> int:
    """The static bound M on cuDNN segments per row for ``max_segments`` conversations per row."""
    return int(max_segments) + EXTRA_RUNS


def segment_runs(segment_ids: jax.Array, m: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each row's maximal runs of equal segment ids, as cuDNN's packed layout wants them.

    Returns ``offsets`` [B, m+1] int32 (start of each run, then -1; the last column is always -1 as
    jax's packed API asks), ``lengths`` [B, m] int32 (length of each run, then -1), and ``count`` [B]
    (runs in the row, which may exceed m: the caller must treat such rows as unusable).
    Example, m = 4: ids [1,1,1,2,2,0,0,0] -> offsets [0,3,5,-1,-1], lengths [3,2,3,-1], count 3.
    """
    b, t = segment_ids.shape
    new_run = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    run = jnp.cumsum(new_run, axis=1, dtype=jnp.int32) - 1  # [B, T]: which run each token is in
    count = run[:, -1] + 1
    idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    # Runs numbered >= m fall outside num_segments and are dropped (count says so).
    starts = jax.vmap(lambda i, r: jax.ops.segment_min(i, r, num_segments=m))(idx, run)
    lengths = jax.vmap(lambda r: jax.ops.segment_sum(jnp.ones_like(r), r, num_segments=m))(run)
    present = jnp.arange(m, dtype=jnp.int32)[None, :] < count[:, None]
    starts = jnp.where(present, starts, -1)
    lengths = jnp.where(present, lengths, -1)
    offsets = jnp.concatenate([starts, jnp.full((b, 1), -1, jnp.int32)], axis=1)
    return offsets.astype(jnp.int32), lengths.astype(jnp.int32), count


# ---------------------------------------------------------------- availability


def check_backend(kernel: str, backend: Optional[str] = None) -> None:
    """Fail at trace time (before anything compiles) when there is no GPU to run cuDNN on."""
    backend = backend or jax.default_backend()
    if backend not in ("gpu", "cuda"):
        raise KernelUnavailableError(
            f"model.attention={kernel} needs an NVIDIA GPU with cuDNN, but the JAX backend is {backend!r}; "
            f"use model.attention=auto (picks xla on CPU, splash on TPU) or xla"
        )


def check_dtype(kernel: str, dtype: Any) -> None:
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise KernelUnavailableError(
            f"model.attention={kernel}: cuDNN flash attention takes bfloat16 or float16, not {jnp.dtype(dtype).name}; "
            f"use model.dtype=bfloat16, or model.attention=auto (float32 on a GPU runs the xla kernel)"
        )


def gpu_compute_capability() -> Optional[tuple[int, int]]:
    """(major, minor) of the first GPU, or None without one."""
    try:
        dev = jax.devices("gpu")[0]
    except RuntimeError:
        return None
    cc = getattr(dev, "compute_capability", None)
    if not cc:
        return None
    major, minor = (int(x) for x in str(cc).split(".")[:2])
    return major, minor


@functools.lru_cache(maxsize=None)
def _packed_attention_fn() -> tuple[Callable, Any, bool]:
    """(dot_product_attention, MaskType, kv_offsets_follow_kv_heads) from JAX's private cuDNN module.

    The one place that touches the private API. Raises KernelUnavailableError naming what is
    missing: the module or function, cuDNN itself, or a GPU older than Hopper (packed layout)."""
    try:
        from jax._src.cudnn import fused_attention_stablehlo as fa

        fn, mask_type = fa.dot_product_attention, fa.MaskType
        mask_type.PADDING_CAUSAL  # noqa: B018  (must exist)
    except (ImportError, AttributeError) as e:
        raise KernelUnavailableError(
            f"model.attention=cudnn: this JAX ({jax.__version__}) has no packed cuDNN attention "
            f"(jax._src.cudnn.fused_attention_stablehlo.dot_product_attention: {e}); use cudnn_dense or xla"
        ) from e
    try:
        version = fa.check_cudnn_version()
    except Exception as e:  # RuntimeError("cuDNN is not detected.") and friends
        raise KernelUnavailableError(f"model.attention=cudnn: cuDNN is not usable here ({e})") from e
    if int(version) < 90100:  # packed (ragged offset) layouts need cuDNN 9.1+
        raise KernelUnavailableError(
            f"model.attention=cudnn: packed attention needs cuDNN >= 9.1, found {version}; use cudnn_dense or xla"
        )
    cc = gpu_compute_capability()
    if cc is not None and cc < (9, 0):
        raise KernelUnavailableError(
            f"model.attention=cudnn: packed attention needs a Hopper or newer GPU (compute capability >= 9.0), "
            f"found {cc[0]}.{cc[1]}; use cudnn_dense or xla"
        )
    return fn, mask_type, _kv_offsets_follow_kv_heads(fa)


def _kv_offsets_follow_kv_heads(fa: Any) -> bool:
    """Whether this JAX scales the key/value offsets by the number of kv heads.

    jax <= 0.11.0 multiplied kv offsets by the *query* head count (fixed upstream in "Fix cuDNN
    packed-attention kv_offsets for GQA/MQA", July 2026), which reads the wrong keys whenever
    kv heads < query heads. Probed on tiny arrays (pure jnp, no GPU needed) rather than by version
    number; if the probe cannot run, assume the old behaviour (repeating kv heads is always right)."""
    try:
        with jax.ensure_compile_time_eval():  # called while a step is being traced: compute now
            q = jnp.zeros((1, 4, 2, 8), jnp.bfloat16)  # 2 query heads
            k = jnp.zeros((1, 4, 1, 8), jnp.bfloat16)  # 1 kv head
            seqlen = jnp.asarray([[2, 2]], jnp.int32)
            offsets = jnp.asarray([[0, 2, -1]], jnp.int32)
            out = fa._fix_seqlen_offsets(seqlen, seqlen, offsets, offsets, q, k)
            return int(np.asarray(out[3])[0, 1]) == 2 * 1 * 8  # second start (token 2) x 1 kv head x D
    except Exception:
        return False


# ---------------------------------------------------------------- kernels


def packed_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    max_segments: int,
    sliding_window: Optional[int] = None,
) -> jax.Array:
    """Causal attention within each segment by cuDNN's packed layout. q [B,T,N,D], k/v [B,T,K,D]."""
    check_backend("cudnn")
    check_dtype("cudnn", q.dtype)
    fn, mask_type, gqa_ok = _packed_attention_fn()
    n, kv = q.shape[2], k.shape[2]
    if kv != n and not gqa_ok:  # see _kv_offsets_follow_kv_heads
        k, v = jnp.repeat(k, n // kv, axis=2), jnp.repeat(v, n // kv, axis=2)
    m = max_runs(max_segments)
    offsets, lengths, count = segment_runs(segment_ids, m)
    out = fn(
        q,
        k,
        v,
        q_seqlen=lengths,
        kv_seqlen=lengths,
        q_offsets=offsets,
        kv_offsets=offsets,
        scale=q.shape[-1] ** -0.5,
        mask_type=mask_type.PADDING_CAUSAL,
        sliding_window_length=sliding_window,
    )
    # A row with more runs than the bound was cut short: poison it rather than return a wrong answer.
    return jnp.where((count <= m)[:, None, None, None], out, jnp.asarray(jnp.nan, out.dtype))


def dense_mask_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """cuDNN with a dense [B, 1, T, T] boolean mask (``cudnn_dense``): the pre-packing path, for comparison."""
    check_backend("cudnn_dense")
    check_dtype("cudnn_dense", q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=q.shape[-1] ** -0.5, implementation="cudnn")
