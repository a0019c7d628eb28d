"""The Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2/2.5, Qwen3) and its reward head.

One readable file, pure-functional Linen. The differences between the family members are
config switches: q/k/v bias (Qwen2), q/k RMSNorm (Qwen3), sliding window (Mistral), explicit
head_dim, grouped-query attention with any kv-head count, and RoPE scaling.

Weights are kept in the layout HF checkpoints use after a transpose/reshape only (RoPE in the
``rotate_half`` convention), so safetensors load without permuting q/k rows.

Inputs are always (input_ids, segment_ids, positions): segment 0 is padding, 1..S are the
conversations packed into a row. Padding on either side and packing are the same code path,
so the reward is read from the same place in all three.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rm_jax.core.config import Dtype, Remat
from rm_jax.models import heads
from rm_jax.models.attention import KERNELS, attend, pooled_query_attention, resolve_kernel
from rm_jax.models.precision import PRECISIONS, resolve_precision
from rm_jax.models.sharding import active_mesh, constrain

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
REMAT_POLICIES = get_args(Remat)
DTYPES = get_args(Dtype)
HEADS = ("reward", "lm")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Architecture (from an HF config.json) plus how to run it."""

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None  # {"rope_type": "llama3"|"linear", ...}; None = default
    max_position_embeddings: int = 8192
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    sliding_window: Optional[int] = None
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # Head: "reward" (a linear map to num_labels at each segment's last token) or "lm" (next-token logits).
    num_labels: int = 5
    head: str = "reward"
    # A reward head's kind (rm_jax.models.heads, docs/heads.md): num_labels attributes, each a score
    # (regression) or a distribution over the levels 0..label_levels-1 (categorical, ordinal).
    attribute_head: str = "regression"
    label_levels: int = 5
    # A separate scalar reward output beside the attribute head (loss.pair_target: separate, SMORM's shape):
    # ``reward_head_kernel`` [hidden]; scorers see it as one more output column, named "reward_head".
    reward_head: bool = False
    # How to run: compute dtype (params stay float32), remat policy, scan over layers, attention kernel.
    dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    attention: str = "auto"  # auto | xla | cudnn | cudnn_dense | splash (rm_jax.models.attention)
    attention_block: int = 128  # xla path: query block; each block reads only the keys it can see
    # Batches hold shared-prompt rows (training, policy log-probs): the xla kernel reads a response block's
    # prompt as a key range of its own. Exact either way; False compiles faster (rm_jax.models.attention).
    shared_prompts: bool = False
    matmul_precision: Optional[str] = None  # None: highest for float32, default for bfloat16 (every dot)
    # LoRA: rank 0 = none; else each projection in lora_targets gets x @ A @ B * (alpha / rank) added.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple = LORA_TARGETS
    lora_lm_head: bool = False  # a policy's LM head trains too (a reward head always does)
    # PEFT's lora_dropout: applied to each adapter's input, and only when the model is applied with a "dropout"
    # rng (the train step); scoring, eval, serving and export never pass one.
    lora_dropout: float = 0.0
    lora_rslora: bool = False  # rsLoRA (PEFT's use_rslora): the update is scaled by alpha / sqrt(rank)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))  # JSON gives a list: keep it hashable
        bad = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if bad:
            raise ValueError(f"lora targets {bad}: choose from {', '.join(LORA_TARGETS)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora dropout {self.lora_dropout}: must be in [0, 1)")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"model.remat={self.remat!r}; choose one of {', '.join(REMAT_POLICIES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r}; choose {' or '.join(DTYPES)}")
        if self.attention != "auto" and self.attention not in KERNELS:
            raise ValueError(f"model.attention={self.attention!r}; choose auto or one of {', '.join(KERNELS)}")
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r}; choose one of {', '.join(HEADS)}")
        if self.attribute_head not in heads.ATTRIBUTE_HEADS:
            raise ValueError(f"model.head={self.attribute_head!r}; choose one of {', '.join(heads.ATTRIBUTE_HEADS)}")
        if self.label_levels < 2:
            raise ValueError(f"model.label_levels={self.label_levels}: at least 2 levels")
        if self.matmul_precision is not None and self.matmul_precision not in PRECISIONS:
            raise ValueError(
                f"model.matmul_precision={self.matmul_precision!r}; choose null or one of {', '.join(PRECISIONS)}"
            )

    @property
    def compute_dtype(self) -> Any:
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    @property
    def precision(self) -> jax.lax.Precision:
        """The precision every dot of the model runs at (see rm_jax.models.precision)."""
        return resolve_precision(self.matmul_precision, self.dtype)

    @property
    def head_outputs(self) -> int:
        """Weights per attribute in the reward head: 1, or label_levels for a categorical head (an ordinal
        head has one score per attribute plus label_levels - 1 thresholds)."""
        return self.label_levels if self.attribute_head == "categorical" else 1

    @property
    def num_outputs(self) -> int:
        """Columns of the scores every consumer reads: the attributes (E[y]) plus the separate reward, if any."""
        return self.num_labels + int(self.reward_head)

    @property
    def lora_scale(self) -> float:
        """PEFT's ``scaling``: alpha / rank, or alpha / sqrt(rank) with rsLoRA."""
        if not self.lora_rank:
            return 0.0
        return self.lora_alpha / (math.sqrt(self.lora_rank) if self.lora_rslora else self.lora_rank)

    @property
    def adapter_dropout(self) -> bool:
        """Whether a "dropout" rng changes anything: adapters with a non-zero dropout rate."""
        return self.lora_rank > 0 and self.lora_dropout > 0

    def adapted(self, name: str) -> bool:
        """Whether projection ``name`` (q, k, v, o, gate, up, down) carries a LoRA adapter."""
        return self.lora_rank > 0 and name in self.lora_targets

    def attention_kernel(self, backend: Optional[str] = None) -> str:
        """The attention kernel this config runs on ``backend`` (default: JAX's): what to log."""
        return resolve_kernel(self.attention, backend, dtype=self.dtype)

    def replace(self, **kw: Any) -> "DecoderConfig":
        return dataclasses.replace(self, **kw)

    def num_params(self, include_embedding: bool = True) -> int:
        h, i, n, k, d = (
            self.hidden_size,
            self.intermediate_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        )
        attn = (
            h * n * d * 2 + h * k * d * 2 + (n * d + 2 * k * d if self.qkv_bias else 0) + (2 * d if self.qk_norm else 0)
        )
        layer = attn + 3 * h * i + 2 * h
        # An LM head is a matmul every token pays for, tied or not: counted with the non-embedding params.
        outputs = self.num_labels * self.head_outputs + self.reward_head
        head = h * outputs if self.head == "reward" else h * self.vocab_size
        total = self.num_hidden_layers * layer + h + head
        untied_embedding = self.head == "reward" or not self.tie_word_embeddings
        return total + (self.vocab_size * h if include_embedding and untied_embedding else 0)


# ---------------------------------------------------------------- building blocks


def dense(x: jax.Array, w: jax.Array, precision: Optional[jax.lax.Precision] = None) -> jax.Array:
    """x [B, T, E] times a weight whose first axis is E, as one 2-D matmul over flattened tokens:
    XLA:CPU inserts layout copies around the equivalent 3-D einsum (see docs/performance.md)."""
    b, t = x.shape[:2]
    y = jnp.matmul(x.reshape(b * t, x.shape[-1]), w.reshape(w.shape[0], -1), precision=precision)
    return y.reshape((b, t) + tuple(w.shape[1:]))


def _param(
    module: nn.Module, name: str, init: Any, shape: tuple[int, ...], axes: tuple[Optional[str], ...]
) -> jax.Array:
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def lora_a_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """PEFT's default A: kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in is every
    axis but the last (the rank)."""
    bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def lora_delta(
    module: nn.Module,
    cfg: DecoderConfig,
    name: str,
    x: jax.Array,
    in_shape: tuple[int, ...],
    in_axes: tuple[Optional[str], ...],
    out_shape: tuple[int, ...],
    out_axes: tuple[Optional[str], ...],
    dropout_key: Optional[jax.Array] = None,
) -> jax.Array:
    """The adapter's contribution (x @ A) @ B * alpha/rank for the projection ``name``; ``x`` [B, T, prod(in)].
    B starts at zero, so a fresh adapter leaves the base's output unchanged. ``dropout_key`` (the layer's key,
    training only): x is dropped out at ``cfg.lora_dropout`` on the adapter's path only, as PEFT does."""
    dt, prec, r = cfg.compute_dtype, cfg.precision, cfg.lora_rank
    a = _param(module, f"{name}_lora_a", lora_a_init, (*in_shape, r), (*in_axes, "lora"))
    b = _param(module, f"{name}_lora_b", nn.initializers.zeros, (r, *out_shape), ("lora", *out_axes))
    if dropout_key is not None and cfg.lora_dropout > 0:
        x = adapter_dropout(x, cfg.lora_dropout, jax.random.fold_in(dropout_key, LORA_TARGETS.index(name)))
    xa = dense(x, a.astype(dt).reshape(-1, r), prec)
    return dense(xa, b.astype(dt), prec) * jnp.asarray(cfg.lora_scale, dt)


def adapter_dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout (kept entries scaled by 1 / (1 - rate)), as torch.nn.Dropout in training."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def layer_dropout_key(key: Optional[jax.Array], i: Any) -> Optional[jax.Array]:
    """Layer ``i``'s dropout key (each projection folds in its own index, see :func:`lora_delta`). The unrolled
    and the scanned stacks both derive it here, so they draw the same masks from one key."""
    return None if key is None else jax.random.fold_in(key, i)


class RMSNorm(nn.Module):
    eps: float
    dtype: Any
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), (self.axis_name,))
        # As HF: normalise in float32, cast back, then scale in the compute dtype.
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * xf.astype(self.dtype)


def rope_inv_freq(cfg: DecoderConfig) -> np.ndarray:
    """Inverse frequencies as HF computes them (float32), with linear / llama3 scaling."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    inv = inv.astype(np.float32)
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return (inv / np.float32(rs["factor"])).astype(np.float32)
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs.get("original_max_position_embeddings", cfg.max_position_embeddings)
        lo_wl, hi_wl = old / lo, old / hi
        wl = (2 * math.pi / inv).astype(np.float32)
        out = np.where(wl > lo_wl, inv / factor, inv).astype(np.float32)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wl < hi_wl) & ~(wl > lo_wl)
        return np.where(medium, smoothed, out).astype(np.float32)
    raise ValueError(f"unsupported rope scaling type {kind!r} (supported: default, linear, llama3)")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """x [B, T, heads, D]; HF rotate_half layout: the two halves of D are the (re, im) pairs."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb)[:, :, None, :], jnp.sin(emb)[:, :, None, :]
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    cfg: DecoderConfig
    max_segments: int = 1  # conversations per row: bounds the packed cuDNN layout

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        query_index: Optional[jax.Array] = None,
        cache: Optional["LayerCache"] = None,
        dropout_key: Optional[jax.Array] = None,
    ) -> Any:
        """query_index [B, S] (optional): compute outputs only at these tokens (keys/values still come
        from every token); the result is then [B, S, H] instead of [B, T, H]. With ``cache`` (decoding),
        the new keys/values are written at ``cache.index`` and the queries read every cached token:
        returns (output, updated cache). ``dropout_key``: the layer's adapter-dropout key (training)."""
        cfg, dt, prec = self.cfg, self.cfg.compute_dtype, self.cfg.precision
        h, n, k, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        init = nn.initializers.normal(cfg.initializer_range)

        def proj(name: str, inp: jax.Array, heads: int, heads_axis: str) -> jax.Array:
            w = _param(self, f"{name}_kernel", init, (h, heads, d), ("embed", heads_axis, "head_dim"))
            y = dense(inp, w.astype(dt), prec)
            if cfg.adapted(name):
                y = y + lora_delta(
                    self, cfg, name, inp, (h,), ("embed",), (heads, d), (heads_axis, "head_dim"), dropout_key
                )
            if cfg.qkv_bias:
                y = y + _param(
                    self, f"{name}_bias", nn.initializers.zeros, (heads, d), (heads_axis, "head_dim")
                ).astype(dt)
            return y

        xq, qpos = x, positions
        if query_index is not None:
            xq = jnp.take_along_axis(x, query_index[..., None], axis=1)
            qpos = jnp.take_along_axis(positions, query_index, axis=1)
        q, kk, v = proj("q", xq, n, "heads"), proj("k", x, k, "kv_heads"), proj("v", x, k, "kv_heads")
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, dt, "head_dim", name="q_norm")(q)
            kk = RMSNorm(cfg.rms_norm_eps, dt, "head_dim", name="k_norm")(kk)
        inv_freq = rope_inv_freq(cfg)
        q, kk = apply_rope(q, qpos, inv_freq), apply_rope(kk, positions, inv_freq)
        q = constrain(q, ("act_batch", "act_length", "act_heads", None))
        kk = constrain(kk, ("act_batch", "act_length", "act_kv_heads", None))
        v = constrain(v, ("act_batch", "act_length", "act_kv_heads", None))

        if cache is not None:
            cache = cache.write(kk, v)
            out = cached_attention(q, cache, cfg.sliding_window, prec)
        elif query_index is not None:
            out = pooled_query_attention(q, kk, v, segment_ids, query_index, cfg.sliding_window, prec)
        else:
            out = attend(
                q,
                kk,
                v,
                segment_ids,
                kernel=cfg.attention_kernel(),
                sliding_window=cfg.sliding_window,
                block=cfg.attention_block,
                precision=prec,
                max_segments=self.max_segments,
                mesh=active_mesh(),
                prompt_range=cfg.shared_prompts,
            )

        wo = _param(self, "o_kernel", init, (n, d, h), ("heads", "head_dim", "embed"))
        b, t = out.shape[:2]
        flat = out.reshape(b, t, n * d)
        y = dense(flat, wo.astype(dt).reshape(n * d, h), prec)
        if cfg.adapted("o"):
            y = y + lora_delta(self, cfg, "o", flat, (n, d), ("heads", "head_dim"), (h,), ("embed",), dropout_key)
        if cfg.o_bias:
            y = y + _param(self, "o_bias", nn.initializers.zeros, (h,), ("norm",)).astype(dt)
        return y if cache is None else (y, cache)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerCache:
    """One layer's view of a :class:`KVCache`: the whole stacked buffers and the layer's index. Writing
    updates the stacked buffer in place (``dynamic_update_slice`` at [layer, :, index]); slicing a layer
    out and stacking the layers back would copy the whole cache for every decoded token."""

    k: jax.Array  # [L, B, Tmax, K, D]
    v: jax.Array
    valid: jax.Array  # [B, Tmax]
    index: jax.Array  # first slot the current tokens are written to (the same for every row)
    layer: jax.Array  # int32 scalar

    def write(self, k: jax.Array, v: jax.Array) -> "LayerCache":
        def upd(buf: jax.Array, new: jax.Array) -> jax.Array:
            zero = jnp.zeros((), jnp.int32)
            return jax.lax.dynamic_update_slice(
                buf, new.astype(buf.dtype)[None], (self.layer, zero, self.index, zero, zero)
            )

        return dataclasses.replace(self, k=upd(self.k, k), v=upd(self.v, v))

    def keys_values(self) -> tuple[jax.Array, jax.Array]:
        """This layer's [B, Tmax, K, D] keys and values."""
        return (
            jax.lax.dynamic_index_in_dim(self.k, self.layer, keepdims=False),
            jax.lax.dynamic_index_in_dim(self.v, self.layer, keepdims=False),
        )


def cached_attention(
    q: jax.Array, cache: LayerCache, sliding_window: Optional[int], precision: Optional[jax.lax.Precision] = None
) -> jax.Array:
    """q [B, L, N, D] for the tokens just written at slots index..index+L-1, against every cached slot:
    causal by slot, real slots only (and the sliding window, by slot distance: with left padding a
    slot distance is a position distance). Dense over Tmax: decoding reads the whole cache anyway."""
    b, l, n, d = q.shape
    keys, values = cache.keys_values()
    kv, tmax = keys.shape[2], keys.shape[1]
    qg = q.reshape(b, l, kv, n // kv, d)
    s = jnp.einsum("blkgd,btkd->bkglt", qg, keys, preferred_element_type=jnp.float32, precision=precision) * (d**-0.5)
    q_slot = cache.index + jnp.arange(l)
    k_slot = jnp.arange(tmax)
    mask = cache.valid[:, None, :] & (k_slot[None, None, :] <= q_slot[None, :, None])  # [B, L, Tmax]
    if sliding_window is not None:
        mask &= (q_slot[None, :, None] - k_slot[None, None, :]) < sliding_window
    mask |= k_slot[None, None, :] == q_slot[None, :, None]  # a pad query sees itself: no empty row, no NaN
    s = jnp.where(mask[:, None, None], s, -1e30)
    p = jax.nn.softmax(s, axis=-1).astype(values.dtype)
    return jnp.einsum("bkglt,btkd->blkgd", p, values, precision=precision).reshape(b, l, n, d).astype(q.dtype)


class MLP(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x: jax.Array, dropout_key: Optional[jax.Array] = None) -> jax.Array:
        cfg, dt, prec = self.cfg, self.cfg.compute_dtype, self.cfg.precision
        init = nn.initializers.normal(cfg.initializer_range)
        h, i = cfg.hidden_size, cfg.intermediate_size
        gate = _param(self, "gate_kernel", init, (h, i), ("embed", "mlp"))
        up = _param(self, "up_kernel", init, (h, i), ("embed", "mlp"))
        down = _param(self, "down_kernel", init, (i, h), ("mlp", "embed"))

        def proj(name: str, inp: jax.Array, w: jax.Array, in_dim: tuple, out_dim: tuple) -> jax.Array:
            y = dense(inp, w.astype(dt), prec)
            if cfg.adapted(name):
                y = y + lora_delta(self, cfg, name, inp, in_dim[:1], in_dim[1:], out_dim[:1], out_dim[1:], dropout_key)
            return y

        hx, ix = (h, "embed"), (i, "mlp")
        a = jax.nn.silu(proj("gate", x, gate, hx, ix)) * proj("up", x, up, hx, ix)
        a = constrain(a, ("act_batch", "act_length", "act_mlp"))
        return proj("down", a, down, ix, hx)


class DecoderLayer(nn.Module):
    cfg: DecoderConfig
    max_segments: int = 1

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        query_index: Optional[jax.Array] = None,
        cache: Optional[LayerCache] = None,
        dropout_key: Optional[jax.Array] = None,
    ) -> Any:
        """With query_index [B, S], the layer's output only at those tokens ([B, S, H]): a reward
        model's last layer matters only where the head reads, so its queries and MLP run there only.
        With ``cache``, returns (output, updated cache). ``dropout_key``: this layer's adapter-dropout key."""
        cfg, dt = self.cfg, self.cfg.compute_dtype
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        attn = Attention(cfg, self.max_segments, name="attn")(
            RMSNorm(cfg.rms_norm_eps, dt, name="input_norm")(x), segment_ids, positions, query_index, cache, dropout_key
        )
        if cache is not None:
            attn, cache = attn
        if query_index is not None:
            x = jnp.take_along_axis(x, query_index[..., None], axis=1)
        x = x + attn
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg.rms_norm_eps, dt, name="post_attn_norm")(x), dropout_key)
        return x if cache is None else (x, cache)


class _ScanLayer(DecoderLayer):
    """DecoderLayer with the (carry, xs) -> (carry, ys) signature nn.scan wants (creates the stacked params)."""

    def __call__(self, x, segment_ids, positions):  # type: ignore[override]
        return super().__call__(x, segment_ids, positions), None


def _remat_policy(name: str) -> Any:
    return {
        "full": None,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    }[name]


def last_token_index(segment_ids: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array]:
    """Index of the last token of segments 1..S in each row ([B, S]) and whether the segment exists.

    Uses segment ids, never the pad token id, so it is right for left, right and packed layouts.
    """
    t = segment_ids.shape[-1]
    idx = jnp.arange(t, dtype=jnp.int32)

    def one_row(seg: jax.Array) -> jax.Array:
        return jax.ops.segment_max(idx, seg, num_segments=max_segments + 1)[1:]

    last = jax.vmap(one_row)(segment_ids)
    present = last >= 0
    return jnp.where(present, last, 0), present


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Every layer's decoding cache in static shapes: k, v [L, B, Tmax, K, D]; ``valid`` [B, Tmax] marks
    slots holding real tokens (the left padding of a batch of prompts does not); ``index`` is the first
    slot the next tokens are written to, the same for every row (prompts are left-padded to one length).
    Sharded like the activations: batch over (data, fsdp), kv heads over tensor."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array

    def layer(self, i: Any) -> LayerCache:
        return LayerCache(self.k, self.v, self.valid, self.index, jnp.asarray(i, jnp.int32))

    def mark(self, segment_ids: jax.Array) -> "KVCache":
        """The slots the tokens about to be written occupy: real unless their segment is 0 (padding)."""
        valid = jax.lax.dynamic_update_slice_in_dim(self.valid, segment_ids > 0, self.index, axis=1)
        return dataclasses.replace(self, valid=valid)

    def advanced(self, by: int) -> "KVCache":
        return dataclasses.replace(self, index=self.index + by)

    def constrained(self) -> "KVCache":
        axes = (None, "act_batch", "act_length", "act_kv_heads", None)
        return dataclasses.replace(
            self,
            k=constrain(self.k, axes),
            v=constrain(self.v, axes),
            valid=constrain(self.valid, ("act_batch", "act_length")),
        )


def init_cache(cfg: DecoderConfig, batch: int, max_len: int) -> KVCache:
    """An empty cache for ``batch`` rows of up to ``max_len`` tokens (prompt + new tokens), in the compute
    dtype; under an active mesh (inside a jitted function) it is created sharded."""
    shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
    return KVCache(
        jnp.zeros(shape, cfg.compute_dtype),
        jnp.zeros(shape, cfg.compute_dtype),
        jnp.zeros((batch, max_len), bool),
        jnp.zeros((), jnp.int32),
    ).constrained()


def _scanned_stack(
    cfg: DecoderConfig,
    stacked: Any,
    x: jax.Array,
    segment_ids: jax.Array,
    positions: jax.Array,
    last: Optional[jax.Array],
    max_segments: int,
    full_last_layer: bool,
    cache: Optional[KVCache] = None,
    dropout_key: Optional[jax.Array] = None,
) -> tuple[jax.Array, Optional[KVCache]]:
    """The scanned layer stack as a pure function of its stacked params ([L, ...] leaves, the
    ``layers`` param that nn.scan created): a ``lax.scan`` over the layers; with ``last`` (a reward
    model's head tokens) the last layer runs at those tokens only ([B, S, H]), as the unrolled stack does.

    Each step indexes its layer's slice of ``stacked`` inside the (rematerialised) body, so neither
    a copy of L-1 layers' params nor a per-step slice is stored for the backward; the gradient of
    the slice becomes an in-place update of the stacked gradient (checked in the compiled HLO). Each step
    derives its layer's dropout key from ``dropout_key`` and the layer index, as the unrolled stack does."""
    layer = DecoderLayer(cfg, max_segments, parent=None)
    n = cfg.num_hidden_layers

    def run(params: Any, i: jax.Array, x: jax.Array, query_index: Optional[jax.Array]) -> jax.Array:
        p = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), params)
        return layer.apply(
            {"params": p}, x, segment_ids, positions, query_index, None, layer_dropout_key(dropout_key, i)
        )

    if cache is not None:  # decoding: no remat; the stacked cache is carried and updated in place

        def step(carry: tuple, i: jax.Array) -> tuple:
            h, k, v = carry
            p = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), stacked)
            h, lc = layer.apply(
                {"params": p}, h, segment_ids, positions, None, LayerCache(k, v, cache.valid, cache.index, i)
            )
            return (h, lc.k, lc.v), None

        (x, k, v), _ = jax.lax.scan(step, (x, cache.k, cache.v), jnp.arange(n, dtype=jnp.int32))
        return x, dataclasses.replace(cache, k=k, v=v)

    if cfg.remat != "none":
        run = jax.checkpoint(run, policy=_remat_policy(cfg.remat), prevent_cse=False)
    pooled = last is not None and not full_last_layer
    n_scanned = n - 1 if pooled else n
    x, _ = jax.lax.scan(lambda h, i: (run(stacked, i, h, None), None), x, jnp.arange(n_scanned, dtype=jnp.int32))
    if last is None:
        return x, None
    if full_last_layer:
        return jnp.take_along_axis(x, last[..., None], axis=1), None
    return run(stacked, jnp.asarray(n - 1, jnp.int32), x, last), None


def decoder_stack(
    module: nn.Module,
    cfg: DecoderConfig,
    input_ids: jax.Array,
    segment_ids: jax.Array,
    positions: jax.Array,
    max_segments: int,
    last: Optional[jax.Array] = None,
    full_last_layer: bool = False,
    cache: Optional[KVCache] = None,
) -> tuple[jax.Array, jax.Array, Optional[KVCache]]:
    """The decoder both heads share, creating its params in ``module``'s scope (``embedding``, then
    ``layers_i`` unrolled or the stacked ``layers`` scanned): (hidden states, embedding, cache).

    ``last`` [B, S] (a reward model's head tokens): the hidden states at those tokens only [B, S, H],
    the last layer computed there only. Otherwise every token's [B, T, H]; with ``cache``, the tokens
    are written to it and read it (decoding).

    Adapter dropout runs when ``module`` is applied with a "dropout" rng (the train step) and the config has
    adapters with a non-zero rate; otherwise no random numbers are drawn at all."""
    dt = cfg.compute_dtype
    drop = None
    if cfg.adapter_dropout and cache is None and not module.is_initializing() and module.has_rng("dropout"):
        drop = module.make_rng("dropout")
    emb = _param(
        module,
        "embedding",
        nn.initializers.normal(cfg.initializer_range),
        (cfg.vocab_size, cfg.hidden_size),
        ("vocab", "embed"),
    )
    x = jnp.take(emb, input_ids, axis=0).astype(dt)
    x = constrain(x, ("act_batch", "act_length", "act_embed"))
    n = cfg.num_hidden_layers
    if cache is not None:
        cache = cache.mark(segment_ids)
    if n == 0:
        return (jnp.take_along_axis(x, last[..., None], axis=1) if last is not None else x), emb, cache
    if cfg.scan_layers:
        if module.is_initializing():  # nn.scan creates the stacked ``layers`` params (layout: rm_jax.models.hf_io)
            stack = nn.scan(
                _ScanLayer,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast),
                length=n,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            stack(cfg, max_segments, name="layers")(x, segment_ids, positions)
        stacked = nn.meta.unbox(module.variables["params"]["layers"])
        x, cache = _scanned_stack(
            cfg, stacked, x, segment_ids, positions, last, max_segments, full_last_layer, cache, drop
        )
        return x, emb, (cache.constrained() if cache is not None else None)
    layer_cls = DecoderLayer
    if cfg.remat != "none" and cache is None:
        layer_cls = nn.remat(DecoderLayer, policy=_remat_policy(cfg.remat))
    if cache is not None:
        for i in range(n):
            x, lc = layer_cls(cfg, max_segments, name=f"layers_{i}")(x, segment_ids, positions, None, cache.layer(i))
            cache = dataclasses.replace(cache, k=lc.k, v=lc.v)
        return x, emb, cache.constrained()
    pooled = last is not None and not full_last_layer
    for i in range(n - 1 if pooled else n):
        x = layer_cls(cfg, max_segments, name=f"layers_{i}")(
            x, segment_ids, positions, None, None, layer_dropout_key(drop, i)
        )
    if last is None:
        return x, emb, None
    if full_last_layer:
        return jnp.take_along_axis(x, last[..., None], axis=1), emb, None
    last_layer = layer_cls(cfg, max_segments, name=f"layers_{n - 1}")
    return last_layer(x, segment_ids, positions, last, None, layer_dropout_key(drop, n - 1)), emb, None  # [B, S, H]


class RewardModel(nn.Module):
    """Decoder + linear head (hidden -> num_labels, no bias, as HF's ``score``) at each segment's last token;
    a categorical head has label_levels outputs per attribute, an ordinal one a score per attribute and
    ordered thresholds (rm_jax.models.heads).

    The last layer runs at the head's tokens only (queries, attention output, MLP: the same
    function, 1/L of the dense work saved), scanned or unrolled. ``full_last_layer=True`` runs it at
    every token instead: the reference the tests compare the pooled layer with."""

    cfg: DecoderConfig
    full_last_layer: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        max_segments: int = 1,
        output: str = "attributes",
    ) -> Any:
        """``output``: "attributes" (E[y] per attribute [B, S, A], what every consumer reads), "raw" (the
        head's own outputs: regression scores [B, S, A], categorical logits [B, S, A, K], ordinal
        z [B, S, A, K-1]), "levels" (E[y] and the level probabilities [B, S, A, K]), "raw_reward" (the raw
        outputs and the separate reward [B, S], None without one) or "features" (the final-norm hidden state the
        head reads [B, S, H], float32). With ``cfg.reward_head`` the attributes ("attributes", "levels") gain the
        separate reward as a last column [B, S, A+1]."""
        cfg, dt = self.cfg, self.cfg.compute_dtype
        last, present = last_token_index(segment_ids, max_segments)
        pooled, _, _ = decoder_stack(
            self, cfg, input_ids, segment_ids, positions, max_segments, last, self.full_last_layer
        )

        # The final norm is per token, so only the pooled tokens need it.
        pooled = RMSNorm(cfg.rms_norm_eps, dt, name="final_norm")(pooled).astype(jnp.float32)
        if output == "features":  # the head's input [B, S, H] (e.g. a prompt embedding for a gate)
            return jnp.where(present[..., None], pooled, 0.0)
        init, kind = nn.initializers.normal(cfg.initializer_range), cfg.attribute_head
        if kind == "categorical":  # [H, A, K]: exported attribute-major as score.weight [A*K, H]
            shape, axes = (cfg.hidden_size, cfg.num_labels, cfg.label_levels), ("embed", "attributes", "levels")
        else:
            shape, axes = (cfg.hidden_size, cfg.num_labels), ("embed", "attributes")
        w = _param(self, "head_kernel", init, shape, axes)
        raw = jnp.einsum("bsh,h...->bs...", pooled, w, precision=cfg.precision)
        if kind == "ordinal":
            # z_k = f - theta_k with thresholds increasing by construction, so P(y > k) never increases with k.
            free = _param(
                self,
                "head_thresholds",
                heads.thresholds_init,
                (cfg.num_labels, cfg.label_levels - 1),
                ("attributes", "levels"),
            )
            raw = raw[..., None] - heads.ordinal_thresholds(free)
        raw = jnp.where(present.reshape(present.shape + (1,) * (raw.ndim - 2)), raw, 0.0)
        reward = None
        if cfg.reward_head:
            rw = _param(self, "reward_head_kernel", init, (cfg.hidden_size,), ("embed",))
            reward = jnp.where(present, jnp.einsum("bsh,h->bs", pooled, rw, precision=cfg.precision), 0.0)
        if output == "raw":
            return raw
        if output == "raw_reward":
            return raw, reward
        scores = jnp.where(present[..., None], heads.expected_level(raw, kind), 0.0)
        if reward is not None:
            scores = jnp.concatenate([scores, reward[..., None]], axis=-1)
        if output == "levels":
            if kind == "regression":
                raise ValueError("a regression head has no level probabilities")
            return scores, heads.level_probs(raw, kind)
        return scores


class CausalLM(nn.Module):
    """The same decoder with a language-model head: ``lm_head_kernel`` [hidden, vocab] (HF's
    ``lm_head``), or the embedding itself when ``tie_word_embeddings``.

    ``targets`` [B, T] given: per-token log-probabilities of the targets [B, T] float32, computed in
    chunks of tokens (each chunk's logits recomputed in the backward) so no [B, T, V] array is ever
    whole in memory. Otherwise logits [B, T, V] float32. With ``cache`` (decoding): the input tokens
    are written to it, and the result is (logits of the last input token [B, V], the updated cache)."""

    cfg: DecoderConfig
    logits_chunk: int = 128

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        targets: Optional[jax.Array] = None,
        cache: Optional[KVCache] = None,
        max_segments: int = 1,
    ) -> Any:
        cfg, dt, prec = self.cfg, self.cfg.compute_dtype, self.cfg.precision
        x, emb, cache = decoder_stack(self, cfg, input_ids, segment_ids, positions, max_segments, cache=cache)
        x = RMSNorm(cfg.rms_norm_eps, dt, name="final_norm")(x)
        if cfg.tie_word_embeddings:
            w = emb.T
        else:
            w = _param(
                self,
                "lm_head_kernel",
                nn.initializers.normal(cfg.initializer_range),
                (cfg.hidden_size, cfg.vocab_size),
                ("embed", "vocab"),
            )
        w = w.astype(dt)

        def logits_of(h: jax.Array) -> jax.Array:
            return jnp.einsum("...h,hv->...v", h, w, preferred_element_type=jnp.float32, precision=prec)

        if cache is not None:
            return logits_of(x[:, -1]), cache
        if targets is None:
            return logits_of(x)
        b, t, hdim = x.shape
        c = min(self.logits_chunk, t)
        tp = -(-t // c) * c
        xs = jnp.pad(x, ((0, 0), (0, tp - t), (0, 0))).reshape(b, tp // c, c, hdim).swapaxes(0, 1)
        ts = jnp.pad(targets, ((0, 0), (0, tp - t))).reshape(b, tp // c, c).swapaxes(0, 1)

        @jax.checkpoint  # keep only the chunk's inputs for the backward: its logits are recomputed
        def chunk(h: jax.Array, tgt: jax.Array) -> jax.Array:
            logits = logits_of(h)
            picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
            return picked - jax.nn.logsumexp(logits, axis=-1)

        logp = jax.lax.map(lambda a: chunk(*a), (xs, ts))  # [T/c, B, c]
        return logp.swapaxes(0, 1).reshape(b, tp)[:, :t]
