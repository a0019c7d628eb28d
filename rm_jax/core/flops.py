"""Model FLOPs and device peaks, for MFU in training logs and benchmarks (docs/performance.md)."""

from __future__ import annotations

from typing import Any, Optional

# bf16 dense peak per device (datasheet); pass logging.peak_flops (or measure, as scripts/bench_gpu.py
# does) for anything else.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v4": 275e12,
    "TPU v6 lite": 918e12,
    "L4": 121e12,
    "A10G": 125e12,
}


def flops_per_token(dcfg: Any, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding params) + attention (12 x layers x heads x head_dim x seq_len,
    halved for the causal mask). See docs/performance.md."""
    n = dcfg.num_params(include_embedding=False)
    attn = 12 * dcfg.num_hidden_layers * dcfg.num_attention_heads * dcfg.head_dim * seq_len / 2
    return 6 * n + attn


def device_peak_flops(override: Optional[float] = None) -> Optional[float]:
    """``override`` when given, else the datasheet bf16 peak of the first device if it is a known kind."""
    if override:
        return override
    import jax

    kind = jax.devices()[0].device_kind
    for k, v in PEAK_FLOPS.items():
        if k.lower() in kind.lower():
            return v
    return None
