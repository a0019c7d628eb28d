"""Train-step throughput: rm_jax's jitted step against transformers + torch AdamW, on this machine.

Two modes, both fp32, both on the same small Llama-shaped reward model (hidden 512, 4 layers,
8 heads / 2 kv heads, head_dim 64, MLP 1536, vocab 32000, 5 attributes):

1. Fixed shapes (``seq512``, ``seq2048``): the same batch of full-length rows (one conversation
   per row, no padding) through one whole train step each: forward, backward, global-norm clip and
   AdamW. rm_jax runs the real ``make_train_step`` jitted with in/out shardings and a donated state
   exactly as ``rm_jax.train`` does (leading grad-accumulation axis of 1, ``put_batch`` and the
   metrics fetched every step). torch runs ``LlamaForSequenceClassification`` (sdpa attention,
   transformers' default) with ``torch.optim.AdamW`` and ``clip_grad_norm_``.
2. HelpSteer2-shaped stream (``packed``): conversations whose prompt / response lengths follow
   the paper's Table 2 (prompt 712.6 +- 877.8 chars, response 1492.6 +- 1065.7 chars, lognormals
   matched to mean and std, ~4 chars per token, + the Nemotron template's ~10 tokens). rm_jax packs
   them (``plan_packed`` / ``build_batch``, seq 2048, 16 segments per row); torch trains TRL's way:
   a fixed number of conversations per batch, right-padded to the batch's longest. Both see the
   same conversations; the figure is real (non-pad) tokens per second.

Method: warm-up first (rm_jax's compile is timed and reported apart), then the two trainers are
interleaved step by step so machine noise hits both, and the median step time is used (the sum
for the packed stream). torch gets as many threads as jax has cores. MFU divides model FLOPs per
second, ``rm_jax.train.flops_per_token`` x tokens/s, by a peak measured here: the best of a large
fp32 ``jnp.dot`` and ``torch.matmul`` (best of several repeats, as a ceiling).

    python scripts/bench_train.py --quick --json      # < 3 minutes on 2 cores
    python scripts/bench_train.py --json              # the numbers in docs/performance.md

Load matters: on a shared 2-core machine torch's OpenMP pool slows down several times when another
process takes a core while XLA's pool degrades gently, so ratios measured under load flatter rm_jax.
The JSON records the load average at start and end and, for the fixed shapes, ``ratio_*_best`` (the
fastest step of each side); compare runs made in the same conditions.

Proposals (docs/performance.md), swapped in by monkeypatch in this process only, never in rm_jax:
``--variant flat+blockwise+pooled`` (any '+'-joined subset): ``flat`` = projections as 2-D matmuls
over flattened tokens; ``blockwise`` = causal attention per query block against only the keys it can
see (``--block``); ``pooled`` = the last decoder layer only at the tokens the head reads. All three
compute the same function with the same parameters (checked to fp32 rounding). ``--variants
shipped,flat+blockwise`` times several variants and torch interleaved in one process.
``--xla-flags`` appends to XLA_FLAGS before jax starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Optional

import numpy as np

# ---------------------------------------------------------------- shared helpers (bench_score / bench_data import these)

HELPSTEER2 = {
    "rows": 21362,
    "prompt_chars": (712.6, 877.8),  # mean, std (paper Table 2, train + validation)
    "response_chars": (1492.6, 1065.7),
    "multi_turn_fraction": 0.29,
}
CHARS_PER_TOKEN = 4.0
TEMPLATE_TOKENS = 10  # <extra_id_0>System\n\n<extra_id_1>User\n ... \n<extra_id_1>Assistant\n ... \n

FLOORS = {"ratio_padded_seq512": 1.3, "ratio_padded_seq2048": 1.0, "ratio_packed_vs_padded": 2.0, "mfu_cpu": 0.35}


def cores() -> int:
    """Cores this process may run on: XLA's CPU thread pool uses this many."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def lognormal_params(mean: float, std: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and standard deviation."""
    s2 = math.log1p((std / mean) ** 2)
    return math.log(mean) - s2 / 2, math.sqrt(s2)


def sample_helpsteer_chars(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and response character counts with HelpSteer2's mean and spread (>= 1 char each)."""
    out = []
    for key in ("prompt_chars", "response_chars"):
        mu, sigma = lognormal_params(*HELPSTEER2[key])
        out.append(np.maximum(1, np.rint(rng.lognormal(mu, sigma, n))).astype(np.int64))
    return out[0], out[1]


def helpsteer_token_lengths(rng: np.random.Generator, n: int, seq_len: Optional[int] = None) -> tuple[np.ndarray, int]:
    """Token counts of n templated conversations (~4 chars/token); over-long ones are truncated to
    seq_len (rm_jax's default policy keeps the response and cuts the prompt). Returns (lengths, truncated)."""
    p, r = sample_helpsteer_chars(rng, n)
    lens = np.ceil(p / CHARS_PER_TOKEN).astype(np.int64) + np.ceil(r / CHARS_PER_TOKEN).astype(np.int64) + TEMPLATE_TOKENS
    truncated = 0
    if seq_len is not None:
        truncated = int((lens > seq_len).sum())
        lens = np.minimum(lens, seq_len)
    return lens, truncated


def environment() -> dict:
    import jax
    info = {"python": platform.python_version(), "jax": jax.__version__, "cores": cores(),
            "cpu": _cpu_name(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    try:
        import torch
        import transformers
        info.update(torch=torch.__version__, transformers=transformers.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure_matmul_peak(n: int = 2048, repeats: int = 8, with_torch: bool = True) -> dict:
    """Best fp32 matmul rate of jnp.dot and torch.matmul on n x n random operands (FLOP/s)."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((n, n), dtype=np.float32)
    b_np = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n ** 3
    f = jax.jit(jnp.dot)
    a, b = jnp.asarray(a_np), jnp.asarray(b_np)
    f(a, b).block_until_ready()
    jt = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        jt.append(time.perf_counter() - t)
    out = {"n": n, "jax_flops_best": flops / min(jt), "jax_flops_median": flops / statistics.median(jt)}
    if with_torch:
        import torch
        ta, tb = torch.from_numpy(a_np), torch.from_numpy(b_np)
        torch.matmul(ta, tb)
        tt = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.matmul(ta, tb)
            tt.append(time.perf_counter() - t)
        out.update(torch_flops_best=flops / min(tt), torch_flops_median=flops / statistics.median(tt))
    out["peak_flops"] = max(v for k, v in out.items() if k.endswith("_best"))
    return out


def bench_model_config(**over: Any) -> Any:
    """The hidden-512 Llama-shaped reward model these benchmarks use."""
    from rm_jax.models.llama import DecoderConfig
    kw = dict(model_type="llama", vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
              num_attention_heads=8, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
              rope_theta=10000.0, rms_norm_eps=1e-6, num_labels=5, dtype="float32")
    kw.update(over)
    return DecoderConfig(**kw)


def hf_llama_config(cfg: Any, pad_token_id: int = 0) -> Any:
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                       num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim,
                       max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
                       rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings,
                       num_labels=cfg.num_labels, pad_token_id=pad_token_id, problem_type="regression",
                       attention_bias=False, mlp_bias=False)


def new_train_state(cfg: Any, tx: Any, mesh: Any, seed: int = 0) -> tuple:
    """(state, shardings) exactly as rm_jax.train creates them."""
    from rm_jax.models import init_params
    from rm_jax.step import create_state
    return create_state(cfg, tx, mesh, init_params(cfg, mesh, seed))


# ---------------------------------------------------------------- proposed attention (monkeypatch, opt-in)

def blockwise_causal_attention(q: Any, k: Any, v: Any, segment_ids: Any, block: int = 256,
                               sliding_window: Optional[int] = None) -> Any:
    """Causal, segment-masked attention computed per query block against only the keys at or before
    the block's end: ~half the score work of the full T x T formulation, and T x T temporaries
    become [block, <=T] pieces that stay in cache. q [B,T,N,D] (pre-scaled), k/v [B,T,K,D] -> [B,T,N,D].
    Exactly the same function as rm_jax's "xla" path (mask: same segment and causal)."""
    import jax
    import jax.numpy as jnp
    b, t, n, d = q.shape
    kv = k.shape[2]
    g = n // kv
    qg = q.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4)  # [B,K,G,T,D]: scores come out [.., Tq, S]
    kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B,K,S,D]
    neg = jnp.finfo(jnp.float32).min
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        lo = 0 if sliding_window is None else max(0, (start - sliding_window + 1) // block * block)
        s = jnp.einsum("bkgtd,bksd->bkgts", qg[:, :, :, start:end], kt[:, :, lo:end]).astype(jnp.float32)
        qi = jnp.arange(start, end)[:, None]
        ki = jnp.arange(lo, end)[None, :]
        allowed = qi >= ki
        if sliding_window is not None:
            allowed &= (qi - ki) < sliding_window
        mask = allowed[None] & (segment_ids[:, start:end, None] == segment_ids[:, None, lo:end])
        s = jnp.where(mask[:, None, None], s, neg)
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("bkgts,bksd->bkgtd", p, vt[:, :, lo:end]))
    o = jnp.concatenate(outs, axis=3) if len(outs) > 1 else outs[0]
    return o.transpose(0, 3, 1, 2, 4).reshape(b, t, n, d)


def _dense(x: Any, w: Any, flat: bool, spec: str) -> Any:
    """x [B,T,E] times a weight whose first axis is E. ``flat`` does it as one 2-D [B*T, E] x [E, F]
    matmul (what XLA:CPU runs fastest); otherwise the einsum ``spec`` exactly as rm_jax writes it."""
    import jax.numpy as jnp
    if not flat:
        return jnp.einsum(spec, x, w)
    b, t = x.shape[:2]
    y = x.reshape(b * t, x.shape[-1]) @ w.reshape(w.shape[0], -1)
    return y.reshape((b, t) + tuple(w.shape[1:]))


def install_model_variant(blockwise: bool = False, block: int = 256, flat: bool = False) -> None:
    """Swap rm_jax.models.llama's Attention (and, with ``flat``, MLP) for versions with the same
    parameters and the same function but the proposed formulation (this process only):
    ``blockwise`` = blockwise_causal_attention for the xla path; ``flat`` = projections as 2-D matmuls
    over flattened tokens instead of 3-D einsums."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from rm_jax.models import llama as L
    from rm_jax.sharding import constrain
    Original = L.Attention

    class VariantAttention(Original):
        @nn.compact
        def __call__(self, x, segment_ids, positions):  # same parameters and layout as L.Attention
            cfg, dt = self.cfg, self.cfg.compute_dtype
            h, n, k, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
            init = nn.initializers.normal(cfg.initializer_range)

            def proj(name, heads, heads_axis):
                w = L._param(self, f"{name}_kernel", init, (h, heads, d), ("embed", heads_axis, "head_dim"))
                y = _dense(x, w.astype(dt), flat, "bte,ehd->bthd")
                if cfg.qkv_bias:
                    y = y + L._param(self, f"{name}_bias", nn.initializers.zeros, (heads, d), (heads_axis, "head_dim")).astype(dt)
                return y

            q, kk, v = proj("q", n, "heads"), proj("k", k, "kv_heads"), proj("v", k, "kv_heads")
            if cfg.qk_norm:
                q = L.RMSNorm(cfg.rms_norm_eps, dt, "head_dim", name="q_norm")(q)
                kk = L.RMSNorm(cfg.rms_norm_eps, dt, "head_dim", name="k_norm")(kk)
            inv_freq = L.rope_inv_freq(cfg)
            q, kk = L.apply_rope(q, positions, inv_freq), L.apply_rope(kk, positions, inv_freq)
            q = constrain(q, ("act_batch", "act_length", "act_heads", None))
            kk = constrain(kk, ("act_batch", "act_length", "act_kv_heads", None))
            v = constrain(v, ("act_batch", "act_length", "act_kv_heads", None))
            b, t = x.shape[:2]
            if blockwise and cfg.attention == "xla":
                out = blockwise_causal_attention(q * jnp.asarray(d ** -0.5, q.dtype), kk, v, segment_ids, block,
                                                 cfg.sliding_window)
            elif cfg.attention == "cudnn":
                mask = L.attention_mask(segment_ids, cfg.sliding_window)[:, 0]
                out = jax.nn.dot_product_attention(q, kk, v, mask=mask, scale=d ** -0.5, implementation="cudnn")
            else:  # rm_jax's own xla formulation
                g = n // k
                qg = q.reshape(b, t, k, g, d)
                scores = jnp.einsum("btkgd,bskd->bkgts", qg, kk).astype(jnp.float32) * (d ** -0.5)
                scores = jnp.where(L.attention_mask(segment_ids, cfg.sliding_window), scores, jnp.finfo(jnp.float32).min)
                probs = jax.nn.softmax(scores, axis=-1).astype(dt)
                out = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, n, d)
            wo = L._param(self, "o_kernel", init, (n, d, h), ("heads", "head_dim", "embed"))
            if flat:
                y = (out.reshape(b * t, n * d) @ wo.astype(dt).reshape(n * d, h)).reshape(b, t, h)
            else:
                y = jnp.einsum("bthd,hde->bte", out, wo.astype(dt))
            if cfg.o_bias:
                y = y + L._param(self, "o_bias", nn.initializers.zeros, (h,), ("norm",)).astype(dt)
            return y

    L.Attention = VariantAttention
    if flat:
        class FlatMLP(L.MLP):
            @nn.compact
            def __call__(self, x):
                cfg, dt = self.cfg, self.cfg.compute_dtype
                init = nn.initializers.normal(cfg.initializer_range)
                h, i = cfg.hidden_size, cfg.intermediate_size
                gate = L._param(self, "gate_kernel", init, (h, i), ("embed", "mlp"))
                up = L._param(self, "up_kernel", init, (h, i), ("embed", "mlp"))
                down = L._param(self, "down_kernel", init, (i, h), ("mlp", "embed"))
                b, t = x.shape[:2]
                x2 = x.reshape(b * t, h)
                a = jax.nn.silu(x2 @ gate.astype(dt)) * (x2 @ up.astype(dt))
                a = constrain(a.reshape(b, t, i), ("act_batch", "act_length", "act_mlp")).reshape(b * t, i)
                return (a @ down.astype(dt)).reshape(b, t, h)

        L.MLP = FlatMLP


def install_pooled_last_layer(flat: bool = False) -> None:
    """RewardModel whose last decoder layer runs only where the head reads: queries, attention output
    and MLP at each segment's last token (keys / values still for every token). The same function and
    parameters as rm_jax's RewardModel (unrolled layers only); saves ~1/num_layers of the dense work."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from rm_jax.models import llama as L

    class PooledAttention(nn.Module):
        cfg: Any

        @nn.compact
        def __call__(self, x, segment_ids, positions, last):
            cfg, dt = self.cfg, self.cfg.compute_dtype
            h, n, k, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
            init = nn.initializers.normal(cfg.initializer_range)
            xq = jnp.take_along_axis(x, last[..., None], axis=1)  # [B,S,H]
            qpos = jnp.take_along_axis(positions, last, axis=1)  # [B,S]

            def proj(name, inp, heads, heads_axis):
                w = L._param(self, f"{name}_kernel", init, (h, heads, d), ("embed", heads_axis, "head_dim"))
                y = _dense(inp, w.astype(dt), flat, "bte,ehd->bthd")
                if cfg.qkv_bias:
                    y = y + L._param(self, f"{name}_bias", nn.initializers.zeros, (heads, d), (heads_axis, "head_dim")).astype(dt)
                return y

            q, kk, v = proj("q", xq, n, "heads"), proj("k", x, k, "kv_heads"), proj("v", x, k, "kv_heads")
            if cfg.qk_norm:
                q = L.RMSNorm(cfg.rms_norm_eps, dt, "head_dim", name="q_norm")(q)
                kk = L.RMSNorm(cfg.rms_norm_eps, dt, "head_dim", name="k_norm")(kk)
            inv_freq = L.rope_inv_freq(cfg)
            q, kk = L.apply_rope(q, qpos, inv_freq), L.apply_rope(kk, positions, inv_freq)
            b, s_, t = q.shape[0], q.shape[1], x.shape[1]
            g = n // k
            qg = q.reshape(b, s_, k, g, d)
            scores = jnp.einsum("bskgd,btkd->bkgst", qg, kk).astype(jnp.float32) * (d ** -0.5)
            idx = jnp.arange(t)
            qseg = jnp.take_along_axis(segment_ids, last, axis=1)
            mask = (qseg[:, :, None] == segment_ids[:, None, :]) & (idx[None, None, :] <= last[:, :, None])
            if cfg.sliding_window is not None:
                mask &= (last[:, :, None] - idx[None, None, :]) < cfg.sliding_window
            scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(scores, axis=-1).astype(dt)
            out = jnp.einsum("bkgst,btkd->bskgd", probs, v).reshape(b, s_, n, d)
            wo = L._param(self, "o_kernel", init, (n, d, h), ("heads", "head_dim", "embed"))
            y = jnp.einsum("bshd,hde->bse", out, wo.astype(dt))
            if cfg.o_bias:
                y = y + L._param(self, "o_bias", nn.initializers.zeros, (h,), ("norm",)).astype(dt)
            return y

    class PooledLayer(nn.Module):
        cfg: Any

        @nn.compact
        def __call__(self, x, segment_ids, positions, last):
            cfg, dt = self.cfg, self.cfg.compute_dtype
            hn = L.RMSNorm(cfg.rms_norm_eps, dt, name="input_norm")(x)
            y = jnp.take_along_axis(x, last[..., None], axis=1)
            y = y + PooledAttention(cfg, name="attn")(hn, segment_ids, positions, last)
            return y + L.MLP(cfg, name="mlp")(L.RMSNorm(cfg.rms_norm_eps, dt, name="post_attn_norm")(y))

    class PooledRewardModel(L.RewardModel):
        @nn.compact
        def __call__(self, input_ids, segment_ids, positions, max_segments=1):
            cfg, dt = self.cfg, self.cfg.compute_dtype
            if cfg.scan_layers:
                raise NotImplementedError("the pooled-last-layer variant is written for unrolled layers")
            emb = L._param(self, "embedding", nn.initializers.normal(cfg.initializer_range),
                           (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
            x = jnp.take(emb, input_ids, axis=0).astype(dt)
            layer_cls = L.DecoderLayer if cfg.remat == "none" else nn.remat(L.DecoderLayer, policy=L._remat_policy(cfg.remat))
            for i in range(cfg.num_hidden_layers - 1):
                x = layer_cls(cfg, name=f"layers_{i}")(x, segment_ids, positions)
            last, present = L.last_token_index(segment_ids, max_segments)
            x = PooledLayer(cfg, name=f"layers_{cfg.num_hidden_layers - 1}")(x, segment_ids, positions, last)
            pooled = L.RMSNorm(cfg.rms_norm_eps, dt, name="final_norm")(x).astype(jnp.float32)
            w = L._param(self, "head_kernel", nn.initializers.normal(cfg.initializer_range),
                         (cfg.hidden_size, cfg.num_labels), ("embed", "attributes"))
            scores = jnp.einsum("bsh,ha->bsa", pooled, w)
            return jnp.where(present[..., None], scores, 0.0)

    _swap_reward_model(PooledRewardModel)


def _swap_reward_model(cls: Any) -> None:
    """RewardModel is imported by name into rm_jax.step and rm_jax.models: point all of them at cls."""
    import rm_jax.models as M
    import rm_jax.step as S
    from rm_jax.models import llama as L
    L.RewardModel = M.RewardModel = S.RewardModel = cls


VARIANTS = ("shipped", "flat", "blockwise", "pooled", "flat+blockwise", "flat+blockwise+pooled")
_ORIGINALS: dict = {}


def set_variant(name: str, block: int = 128) -> None:
    """Put rm_jax.models.llama back as shipped, then install the named proposals: any "+"-joined
    subset of flat, blockwise, pooled ("shipped" = none)."""
    from rm_jax.models import llama as L
    if not _ORIGINALS:
        _ORIGINALS.update(Attention=L.Attention, MLP=L.MLP, RewardModel=L.RewardModel)
    L.Attention, L.MLP = _ORIGINALS["Attention"], _ORIGINALS["MLP"]
    _swap_reward_model(_ORIGINALS["RewardModel"])
    parts = set() if name == "shipped" else set(name.split("+"))
    if parts - {"flat", "blockwise", "pooled"}:
        raise ValueError(f"unknown variant {name!r}; use shipped or a '+'-joined subset of flat, blockwise, pooled")
    if parts & {"flat", "blockwise"}:
        install_model_variant(blockwise="blockwise" in parts, block=block, flat="flat" in parts)
    if "pooled" in parts:
        install_pooled_last_layer(flat="flat" in parts)


def install_blockwise_attention(block: int = 256) -> None:
    """Only the attention proposal (kept for callers of the earlier name)."""
    install_model_variant(blockwise=True, block=block)


# ---------------------------------------------------------------- the two trainers

class JaxTrainer:
    """rm_jax's real train step, set up and fed as rm_jax.train does."""

    def __init__(self, cfg: Any, max_segments: int, seed: int = 0):
        import jax
        from rm_jax.config import LossConfig, TrainConfig
        from rm_jax.sharding import make_mesh
        from rm_jax.step import lr_schedule, make_optimizer, make_train_step
        self.jax = jax
        self.cfg, self.max_segments = cfg, max_segments
        self.mesh = make_mesh(devices=jax.devices()[:1])
        tc = TrainConfig(lr=1e-4, warmup_steps=0, weight_decay=0.0, clip_norm=1.0)
        tx = make_optimizer(tc, 1000)
        self.state, shard = new_train_state(cfg, tx, self.mesh, seed)
        self.step_fn = jax.jit(make_train_step(cfg, LossConfig(), tx, max_segments, lr_schedule(tc, 1000), self.mesh),
                               in_shardings=(shard, None), out_shardings=(shard, None), donate_argnums=0)
        self._sh: dict = {}
        self.compile_s: dict = {}

    def step(self, batch: dict) -> float:
        from rm_jax.step import batch_shardings, put_batch
        host = {k: v[None] for k, v in batch.items() if k != "example_index"}  # grad-accum axis of 1
        key = tuple(host["input_ids"].shape)
        if key not in self._sh:
            self._sh[key] = batch_shardings(self.mesh, host, accum=True)
        t = time.perf_counter()
        self.state, m = self.step_fn(self.state, put_batch(host, self._sh[key]))
        m = self.jax.device_get(m)
        dt = time.perf_counter() - t
        if not bool(m["ok"]):
            raise RuntimeError(f"rm_jax step not finite: loss={m['loss']}")
        return dt

    def warm(self, batch: dict) -> float:
        """First call for a shape: compile + run (reported apart, never in a median)."""
        key = tuple(batch["input_ids"].shape)
        dt = self.step(batch)
        self.compile_s.setdefault(f"{key[0]}x{key[1]}", round(dt, 2))
        return dt


class TorchTrainer:
    """transformers LlamaForSequenceClassification + torch AdamW, TRL's RewardTrainer-style step (MSE here)."""

    def __init__(self, cfg: Any, seed: int = 0):
        import torch
        from transformers import LlamaForSequenceClassification
        self.torch = torch
        torch.manual_seed(seed)
        self.model = LlamaForSequenceClassification(hf_llama_config(cfg)).float().train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        kw = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
        try:
            self.opt = torch.optim.AdamW(params, fused=True, **kw)
            self.opt_kind = "AdamW(fused=True)"
        except (RuntimeError, TypeError):
            self.opt = torch.optim.AdamW(params, **kw)
            self.opt_kind = "AdamW(foreach)"
        self.params = params
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", "?")

    def step(self, ids: np.ndarray, attn: np.ndarray, labels: np.ndarray) -> float:
        torch = self.torch
        t = time.perf_counter()
        ids_t, am_t = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(attn.astype(np.int64))
        lab = torch.from_numpy(labels.astype(np.float32))
        self.opt.zero_grad(set_to_none=True)
        scores = self.model(input_ids=ids_t, attention_mask=am_t).logits
        loss = ((scores - lab) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        dt = time.perf_counter() - t
        if not math.isfinite(loss.detach().item()):
            raise RuntimeError("torch loss not finite")
        return dt


# ---------------------------------------------------------------- batches

def random_examples(rng: np.random.Generator, lengths: np.ndarray, vocab: int) -> list[np.ndarray]:
    # Ids >= 3: never the pad id (0), so transformers' pad-based last-token pooling finds the true end.
    return [rng.integers(3, vocab, int(n), dtype=np.int64).astype(np.int32) for n in lengths]


def fixed_batch(rng: np.random.Generator, rows: int, seq_len: int, vocab: int, max_segments: int) -> tuple[dict, tuple]:
    """rows full-length conversations: (rm_jax batch, (ids, attention_mask, labels) for torch)."""
    from rm_jax.data.packing import build_batch
    ex = random_examples(rng, np.full(rows, seq_len), vocab)
    labels = rng.integers(0, 5, (rows, 5)).astype(np.float32)
    b = build_batch(ex, labels, np.ones_like(labels), [[i] for i in range(rows)], seq_len, max_segments, 0)
    ids = np.stack(ex)
    return b, (ids, np.ones_like(ids), labels)


def padded_batches(examples: list[np.ndarray], labels: np.ndarray, per_batch: int) -> list[tuple]:
    """TRL's way: per_batch conversations in order, right-padded (pad id 0) to the longest in the batch."""
    out = []
    for i in range(0, len(examples), per_batch):
        chunk = examples[i:i + per_batch]
        width = max(len(x) for x in chunk)
        ids = np.zeros((len(chunk), width), np.int32)
        am = np.zeros((len(chunk), width), np.int32)
        for r, x in enumerate(chunk):
            ids[r, :len(x)] = x
            am[r, :len(x)] = 1
        out.append((ids, am, labels[i:i + per_batch]))
    return out


def packed_batches(examples: list[np.ndarray], labels: np.ndarray, seq_len: int, max_segments: int,
                   rows: int) -> list[dict]:
    from rm_jax.data.packing import build_batch, plan_packed
    bins = plan_packed([len(x) for x in examples], seq_len, max_segments)
    mask = np.ones_like(labels)
    return [build_batch(examples, labels, mask, bins[i:i + rows], seq_len, max_segments, 0, rows=rows)
            for i in range(0, len(bins), rows)]


# ---------------------------------------------------------------- modes

def run_fixed(jt: JaxTrainer, tt: Optional[TorchTrainer], seq_len: int, rows: int, repeats: int,
              rng: np.random.Generator, peak: float, log: Any) -> dict:
    from rm_jax.train import flops_per_token
    b, (ids, am, labels) = fixed_batch(rng, rows, seq_len, jt.cfg.vocab_size, jt.max_segments)
    tokens = rows * seq_len
    log(f"seq {seq_len}: {rows} x {seq_len} tokens; rm_jax compile + first step ...")
    jt.warm(b)
    jt.step(b)  # one warm step after compile
    if tt is not None:
        log(f"seq {seq_len}: torch warm-up step ...")
        tt.step(ids, am, labels)
    j_times, t_times = [], []
    for r in range(repeats):
        j_times.append(jt.step(b))
        if tt is not None:
            t_times.append(tt.step(ids, am, labels))
        log(f"seq {seq_len}: repeat {r + 1}/{repeats}: rm_jax {j_times[-1]:.2f}s"
            + (f", torch {t_times[-1]:.2f}s" if t_times else ""))
    fpt = flops_per_token(jt.cfg, seq_len)
    jm = statistics.median(j_times)
    out = {"seq_len": seq_len, "rows": rows, "tokens_per_step": tokens, "flops_per_token": fpt,
           "rm_jax_step_s": jm, "rm_jax_step_s_all": [round(x, 3) for x in j_times],
           "rm_jax_tokens_per_s": tokens / jm, "rm_jax_mfu": tokens / jm * fpt / peak}
    if t_times:
        tm = statistics.median(t_times)
        out.update(torch_step_s=tm, torch_step_s_all=[round(x, 3) for x in t_times], torch_tokens_per_s=tokens / tm,
                   torch_mfu=tokens / tm * fpt / peak, ratio=(tokens / jm) / (tokens / tm),
                   # Fastest step of each side: the least-disturbed estimate when other processes share the cores.
                   ratio_best=min(t_times) / min(j_times))
    return out


def run_fixed_variants(cfg: Any, variants: list, tt: Optional[TorchTrainer], seq_len: int, rows: int,
                       repeats: int, block: int, seed: int, rng: np.random.Generator, peak: float, log: Any) -> dict:
    """The fixed-shape mode for several model variants at once, all interleaved with torch in one loop
    (same process, same batch, same load), so variant-to-variant differences are not machine noise."""
    from rm_jax.train import flops_per_token
    b, (ids, am, labels) = fixed_batch(rng, rows, seq_len, cfg.vocab_size, 16)
    trainers = {}
    for v in variants:
        set_variant(v, block)
        t = time.perf_counter()
        trainers[v] = JaxTrainer(cfg, 16, seed)
        trainers[v].warm(b)  # traces (with this variant installed) and compiles
        trainers[v].step(b)
        log(f"variants seq {seq_len}: {v} ready ({time.perf_counter() - t:.1f}s)")
    set_variant("shipped")
    if tt is not None:
        tt.step(ids, am, labels)
    times: dict = {v: [] for v in variants}
    times["torch"] = []
    for r in range(repeats):
        for v in variants:
            times[v].append(trainers[v].step(b))
        if tt is not None:
            times["torch"].append(tt.step(ids, am, labels))
        log(f"variants seq {seq_len}: repeat {r + 1}/{repeats}: "
            + ", ".join(f"{k} {x[-1]:.2f}s" for k, x in times.items() if x))
    tokens = rows * seq_len
    fpt = flops_per_token(cfg, seq_len)
    out: dict = {"seq_len": seq_len, "rows": rows, "block": block}
    for k, x in times.items():
        if not x:
            continue
        med = statistics.median(x)
        out[k] = {"step_s": med, "step_s_all": [round(y, 3) for y in x], "tokens_per_s": tokens / med,
                  "mfu": tokens / med * fpt / peak}
        if k != "torch" and times["torch"]:
            out[k]["ratio_vs_torch"] = statistics.median(times["torch"]) / med
            out[k]["ratio_vs_torch_best"] = min(times["torch"]) / min(x)
        if k != "shipped" and "shipped" in times:
            out[k]["speedup_vs_shipped"] = statistics.median(times["shipped"]) / med
    return out


def run_packed(jt: JaxTrainer, tt: Optional[TorchTrainer], n_conv: int, seq_len: int, rows: int, per_batch: int,
               rng: np.random.Generator, peak: float, log: Any) -> dict:
    from rm_jax.train import flops_per_token
    lengths, truncated = helpsteer_token_lengths(rng, n_conv, seq_len)
    examples = random_examples(rng, lengths, jt.cfg.vocab_size)
    labels = rng.integers(0, 5, (n_conv, 5)).astype(np.float32)
    jb = packed_batches(examples, labels, seq_len, jt.max_segments, rows)
    tb = padded_batches(examples, labels, per_batch) if tt is not None else []
    real = int(lengths.sum())
    # Warm the packed shape (same shape as the fixed seq_len mode when rows match: no new compile).
    w, _ = fixed_batch(rng, rows, seq_len, jt.cfg.vocab_size, jt.max_segments)
    jt.warm(w)
    log(f"packed: {n_conv} conversations, {real} real tokens -> rm_jax {len(jb)} steps of {rows}x{seq_len}, "
        f"torch {len(tb)} padded batches of {per_batch}")
    j_times, t_times = [], []
    # Each side's steps spread evenly over the run (the two sides take different step counts).
    schedule = sorted([((i + 0.5) / len(jb), "rm_jax", i) for i in range(len(jb))]
                      + [((i + 0.5) / len(tb), "torch", i) for i in range(len(tb))])
    for _, side, i in schedule:
        if side == "rm_jax":
            j_times.append(jt.step(jb[i]))
        else:
            t_times.append(tt.step(*tb[i]))
        log(f"packed: {side} step {i + 1}: {(j_times if side == 'rm_jax' else t_times)[-1]:.2f}s")
    j_slots = len(jb) * rows * seq_len
    js = sum(j_times)
    fpt = flops_per_token(jt.cfg, seq_len)
    out = {"conversations": n_conv, "real_tokens": real, "truncated_to_seq_len": truncated,
           "mean_tokens": float(lengths.mean()), "p50_tokens": float(np.median(lengths)),
           "p95_tokens": float(np.percentile(lengths, 95)), "max_tokens": int(lengths.max()),
           "seq_len": seq_len, "rm_jax_rows_per_step": rows, "rm_jax_steps": len(jb), "rm_jax_fill": real / j_slots,
           "rm_jax_time_s": js, "rm_jax_real_tokens_per_s": real / js,
           "rm_jax_mfu_slots": j_slots / js * fpt / peak}
    if tb:
        ts = sum(t_times)
        t_slots = sum(b[0].size for b in tb)
        out.update(torch_conversations_per_batch=per_batch, torch_steps=len(tb), torch_fill=real / t_slots,
                   torch_time_s=ts, torch_real_tokens_per_s=real / ts,
                   ratio=(real / js) / (real / ts))
    return out


# ---------------------------------------------------------------- main

def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small batches, few repeats: < 3 minutes on 2 cores")
    ap.add_argument("--json", action="store_true", help="print one JSON object (all figures) on stdout")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per fixed-shape mode (default 5, quick 3)")
    ap.add_argument("--rows512", type=int, default=None, help="rows per step at seq 512 (default 4, quick 2)")
    ap.add_argument("--rows2048", type=int, default=None, help="rows per step at seq 2048 and packed (default 2, quick 1)")
    ap.add_argument("--conversations", type=int, default=None, help="HelpSteer2-shaped conversations in the packed mode (default 32, quick 8)")
    ap.add_argument("--per-batch", type=int, default=None, help="torch conversations per padded batch (default 8 = TRL's default, quick 4)")
    ap.add_argument("--modes", default="seq512,seq2048,packed")
    ap.add_argument("--no-torch", action="store_true", help="rm_jax only")
    ap.add_argument("--attention-variant", choices=["model", "blockwise"], default="model",
                    help="model = rm_jax as shipped; blockwise = the proposed causal block-skipping attention (monkeypatch)")
    ap.add_argument("--block", type=int, default=128, help="query block for --attention-variant blockwise")
    ap.add_argument("--flat-proj", action="store_true",
                    help="the proposed 2-D projections (tokens flattened) instead of rm_jax's 3-D einsums (monkeypatch)")
    ap.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before jax starts")
    ap.add_argument("--variant", default=None,
                    help="run the normal benchmark with these proposals swapped in (monkeypatch): a '+'-joined "
                         "subset of flat, blockwise, pooled (overrides --attention-variant / --flat-proj)")
    ap.add_argument("--variants", default=None,
                    help="instead of the normal run: compare model variants (comma list of "
                         + ", ".join(VARIANTS) + ") against torch at seq 512 and 2048, all interleaved")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    q = a.quick
    repeats = a.repeats or (3 if q else 5)
    rows512 = a.rows512 or (2 if q else 4)
    rows2048 = a.rows2048 or (1 if q else 2)
    n_conv = a.conversations or (8 if q else 32)
    per_batch = a.per_batch or (4 if q else 8)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]

    if a.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + a.xla_flags).strip()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench_train {time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import jax  # noqa: F401  (after XLA_FLAGS)
    n_cores = cores()
    if not a.no_torch:
        import torch
        torch.set_num_threads(n_cores)
    set_variant("shipped")  # remembers rm_jax's own classes before any proposal is swapped in
    if a.variant is None:
        parts = (["flat"] if a.flat_proj else []) + (["blockwise"] if a.attention_variant == "blockwise" else [])
        a.variant = "+".join(parts) or "shipped"
    set_variant(a.variant, a.block)

    env = environment()
    log(f"{env['cpu']}, {n_cores} cores, load {env['loadavg_1m_start']}; measuring matmul peak ...")
    peak = measure_matmul_peak(2048 if q else 3072, 5 if q else 8, with_torch=not a.no_torch)
    log(f"peak fp32 matmul: jax {peak['jax_flops_best'] / 1e9:.1f} GFLOP/s"
        + (f", torch {peak['torch_flops_best'] / 1e9:.1f} GFLOP/s" if "torch_flops_best" in peak else ""))

    cfg = bench_model_config()
    max_segments = 16
    rng = np.random.default_rng(a.seed)
    jt = None if a.variants else JaxTrainer(cfg, max_segments, a.seed)
    tt = None if a.no_torch else TorchTrainer(cfg, a.seed)

    res: dict = {"benchmark": "train_step", "quick": q, "variant": a.variant,
                 "attention_block": a.block if "blockwise" in a.variant else None,
                 "model": {"hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
                           "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": cfg.num_attention_heads,
                           "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
                           "vocab_size": cfg.vocab_size, "params": cfg.num_params(),
                           "non_embedding_params": cfg.num_params(include_embedding=False), "dtype": "float32"},
                 "flop_formula": "rm_jax.train.flops_per_token: 6 * non_embedding_params + "
                                 "12 * layers * heads * head_dim * seq_len / 2 (causal attention), per token",
                 "matmul_peak": peak, "peak_flops": peak["peak_flops"], "environment": env}
    if tt is not None:
        res["torch_setup"] = {"optimizer": tt.opt_kind, "attn_implementation": tt.attn_implementation,
                              "threads": torch.get_num_threads()}
    if a.variants:
        vs = [v.strip() for v in a.variants.split(",") if v.strip()]
        res["variants"] = {}
        for m, (T, rows) in {"seq512": (512, rows512), "seq2048": (2048, rows2048)}.items():
            if m in modes:
                res["variants"][m] = run_fixed_variants(cfg, vs, tt, T, rows, repeats, a.block, a.seed, rng,
                                                        peak["peak_flops"], log)
        res["environment"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        res["wall_s"] = round(time.perf_counter() - t_start, 1)
        print(json.dumps(res, default=float) if a.json else json.dumps(res["variants"], indent=1, default=float))
        return 0
    if "seq512" in modes:
        res["seq512"] = run_fixed(jt, tt, 512, rows512, repeats, rng, peak["peak_flops"], log)
    if "seq2048" in modes:
        res["seq2048"] = run_fixed(jt, tt, 2048, rows2048, max(2, repeats - 1) if q else repeats, rng,
                                   peak["peak_flops"], log)
    if "packed" in modes:
        res["packed"] = run_packed(jt, tt, n_conv, 2048, rows2048, per_batch, rng, peak["peak_flops"], log)
    # The peak again at the end (a ceiling: the better of the two measurements is kept).
    peak2 = measure_matmul_peak(2048 if q else 3072, 3 if q else 5, with_torch=not a.no_torch)
    if peak2["peak_flops"] > res["peak_flops"]:
        scale = res["peak_flops"] / peak2["peak_flops"]
        res["peak_flops"] = peak2["peak_flops"]
        res["matmul_peak_end"] = peak2
        for m in ("seq512", "seq2048"):
            if m in res:
                for k in ("rm_jax_mfu", "torch_mfu"):
                    if k in res[m]:
                        res[m][k] *= scale
        if "packed" in res:
            res["packed"]["rm_jax_mfu_slots"] *= scale
    res["rm_jax_compile_s"] = jt.compile_s if jt is not None else None

    # Headline figures.
    if "seq512" in res:
        res["mfu_cpu"] = res["seq512"]["rm_jax_mfu"]
        res["ratio_padded_seq512"] = res["seq512"].get("ratio")
        res["ratio_padded_seq512_best"] = res["seq512"].get("ratio_best")
    if "seq2048" in res:
        res["mfu_cpu_seq2048"] = res["seq2048"]["rm_jax_mfu"]
        res["ratio_padded_seq2048"] = res["seq2048"].get("ratio")
        res["ratio_padded_seq2048_best"] = res["seq2048"].get("ratio_best")
    if "packed" in res:
        res["ratio_packed_vs_padded"] = res["packed"].get("ratio")
    res["floors"] = FLOORS
    res["floors_met"] = {k: (res[k] >= v) for k, v in FLOORS.items() if res.get(k) is not None}
    res["environment"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["wall_s"] = round(time.perf_counter() - t_start, 1)

    if a.json:
        print(json.dumps(res, indent=None, default=float))
    else:
        print(summary(res))
    return 0


def summary(res: dict) -> str:
    lines = [f"peak fp32 matmul {res['peak_flops'] / 1e9:.1f} GFLOP/s; {res['environment']['cores']} cores; "
             f"rm_jax variant {res['variant']}"]
    for m in ("seq512", "seq2048"):
        if m in res:
            r = res[m]
            line = f"{m}: rm_jax {r['rm_jax_tokens_per_s']:.0f} tok/s (MFU {r['rm_jax_mfu']:.1%})"
            if "torch_tokens_per_s" in r:
                line += f", torch {r['torch_tokens_per_s']:.0f} tok/s (MFU {r['torch_mfu']:.1%}), ratio {r['ratio']:.2f}"
            lines.append(line)
    if "packed" in res:
        r = res["packed"]
        line = (f"packed HelpSteer2-shaped: rm_jax {r['rm_jax_real_tokens_per_s']:.0f} real tok/s "
                f"(fill {r['rm_jax_fill']:.0%})")
        if "torch_real_tokens_per_s" in r:
            line += (f", torch padded {r['torch_real_tokens_per_s']:.0f} real tok/s (fill {r['torch_fill']:.0%}), "
                     f"ratio {r['ratio']:.2f}")
        lines.append(line)
    for k, ok in res.get("floors_met", {}).items():
        lines.append(f"floor {k} >= {res['floors'][k]}: {res[k]:.3f} {'met' if ok else 'MISSED'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
