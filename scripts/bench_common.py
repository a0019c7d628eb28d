"""Helpers every benchmark in scripts/ shares: the machine (cores, CPU name, load, versions), measured
matmul peaks, HelpSteer2-shaped lengths (paper Table 2), the bench model's config and its HF twin, a
sharded train state, and ``key=value`` model overrides. Scripts import it as ``bench_common`` (Python puts
a script's own folder on sys.path)."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Optional

import numpy as np

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
    lens = (
        np.ceil(p / CHARS_PER_TOKEN).astype(np.int64) + np.ceil(r / CHARS_PER_TOKEN).astype(np.int64) + TEMPLATE_TOKENS
    )
    truncated = 0
    if seq_len is not None:
        truncated = int((lens > seq_len).sum())
        lens = np.minimum(lens, seq_len)
    return lens, truncated


def environment() -> dict:
    import jax

    info = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "cores": cores(),
        "cpu": cpu_name(),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "loadavg_1m_start": round(os.getloadavg()[0], 2),
    }
    try:
        import torch
        import transformers

        info.update(
            torch=torch.__version__, transformers=transformers.__version__, torch_threads=torch.get_num_threads()
        )
    except ImportError:
        pass
    return info


def cpu_name() -> str:
    """The CPU's model name, recorded with every figure: ``lscpu``'s, else /proc/cpuinfo's."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
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
    flops = 2.0 * n**3
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


# Dense (no 2:4 sparsity) bf16 tensor-core peak from the vendor's data sheet, FLOP/s, keyed by the device name
# jax (device_kind) and torch (get_device_name) report. Exact names: an H100 PCIe (756) or NVL (835) must not
# borrow the SXM figure. Add a card when one is measured.
SPEC_BF16_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,  # H100 SXM5
    "NVIDIA H200": 989e12,  # H200 SXM: the H100's compute, more and faster memory
}


def spec_bf16_flops(device_kind: str) -> tuple[Optional[float], str]:
    """The card's data-sheet dense bf16 peak and where it comes from; (None, why) for a card not in the table."""
    name = (device_kind or "").strip()
    if name in SPEC_BF16_FLOPS:
        return SPEC_BF16_FLOPS[name], f"data sheet, dense bf16, {name}"
    return None, f"no data-sheet peak for {name or 'this device'!r} in bench_common.SPEC_BF16_FLOPS: spec MFU not given"


def mfu_figures(tokens_per_s: float, flops_per_token: float, peak: dict) -> dict:
    """Model FLOP utilisation of a measured throughput against the highest measured matmul rate (what this
    card delivers to a plain GEMM) and against the data-sheet peak (what it is sold at); ``peak`` is
    :func:`matmul_peaks`' result. A rate that is missing gives None, never a guess."""
    achieved = tokens_per_s * flops_per_token
    measured, spec = peak.get("measured_flops"), peak.get("spec_flops")
    return {
        "model_flops": achieved,
        "mfu": achieved / measured if measured else None,
        "mfu_spec": achieved / spec if spec else None,
    }


def matmul_peaks(jax_best: Optional[float], torch_best: Optional[float], device_kind: str) -> dict:
    """The peaks MFU divides by: the higher of jnp.dot's and torch.matmul's best rates (the weaker of two
    libraries on the same card measures the library, not the card), and the data-sheet figure."""
    rates = {k: v for k, v in (("jnp.dot", jax_best), ("torch.matmul", torch_best)) if v}
    by = max(rates, key=rates.get) if rates else None
    spec, note = spec_bf16_flops(device_kind)
    return {
        "measured_flops": rates[by] if by else None,
        "measured_by": by,
        "spec_flops": spec,
        "spec_note": note,
    }


def bench_model_config(**over: Any) -> Any:
    """The hidden-512 Llama-shaped reward model these benchmarks use."""
    from rm_jax.models.llama import DecoderConfig

    kw = dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        num_labels=5,
        dtype="float32",
    )
    kw.update(over)
    return DecoderConfig(**kw)


def hf_llama_config(cfg: Any, pad_token_id: int = 0) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings,
        num_labels=cfg.num_labels,
        pad_token_id=pad_token_id,
        problem_type="regression",
        attention_bias=False,
        mlp_bias=False,
    )


def new_train_state(cfg: Any, tx: Any, mesh: Any, seed: int = 0, memory: str = "device") -> tuple:
    """(state, shardings) exactly as rm_jax.training.run creates them; ``memory``: train.optimizer_state_memory
    (host: the optimizer state's shardings are pinned_host, for make_train_step's host_opt_shardings)."""
    from rm_jax.engine.train_step import create_state
    from rm_jax.models import init_params

    return create_state(cfg, tx, mesh, init_params(cfg, mesh, seed), memory)


# ---------------------------------------------------------------- variants: model-config overrides


def parse_overrides(spec: str) -> dict:
    """'attention_block=64+remat=full' -> {"attention_block": 64, "remat": "full"}; 'shipped' -> {}.
    Values are parsed as YAML scalars; keys must be DecoderConfig fields."""
    import dataclasses

    import yaml

    from rm_jax.models.llama import DecoderConfig

    if spec in ("", "shipped"):
        return {}
    known = {f.name for f in dataclasses.fields(DecoderConfig)}
    out = {}
    for part in spec.split("+"):
        key, sep, value = part.partition("=")
        if not sep or key not in known:
            raise ValueError(
                f"bad variant {spec!r}: want '+'-joined key=value with keys from DecoderConfig "
                f"({', '.join(sorted(known))})"
            )
        out[key] = yaml.safe_load(value)
    return out


def random_examples(rng: np.random.Generator, lengths: np.ndarray, vocab: int) -> list[np.ndarray]:
    # Ids >= 3: never the pad id (0), so transformers' pad-based last-token pooling finds the true end.
    return [rng.integers(3, vocab, int(n), dtype=np.int64).astype(np.int32) for n in lengths]


# ---------------------------------------------------------------- memory: rm_jax's plan against a measured peak


PLAN_TOLERANCE = 0.15  # the "plan within 15% of the measured peak memory"


def plan_within(ratios: dict, tolerance: float = PLAN_TOLERANCE) -> dict:
    """The plan floor over sections' ``plan_total / measured_peak`` ratios (None: not measured). Met when every
    measured ratio is within ``tolerance`` of 1 (either side: a plan too low lets a run OOM, one too high wastes
    the card); None when none was measured."""
    known = {k: v for k, v in ratios.items() if v is not None}
    return {
        "value": ratios,
        "floor": f"|plan/peak - 1| <= {tolerance}",
        "met": all(abs(v - 1.0) <= tolerance for v in known.values()) if known else None,
    }


def largest_fitting(rungs: list, lower_bound: Any, plan: Any, limit: int) -> tuple[Optional[int], list]:
    """Index of the first (largest) of ``rungs`` whose planned total fits ``limit`` bytes (None: none does), and
    one record per rung tried. ``lower_bound(rung)`` is a cheap exact floor (state + gradient bytes, no compile):
    a rung over the limit on that alone is passed over without compiling; ``plan(rung)`` compiles and returns a
    dict with ``plan_total_bytes``."""
    tried = []
    for i, rung in enumerate(rungs):
        floor = lower_bound(rung)
        if floor > limit:
            tried.append({"lower_bound_bytes": floor, "compiled": False, "fits": False})
            continue
        rec = {"lower_bound_bytes": floor, "compiled": True, **plan(rung)}
        rec["fits"] = rec["plan_total_bytes"] <= limit
        tried.append(rec)
        if rec["fits"]:
            return i, tried
    return None, tried
