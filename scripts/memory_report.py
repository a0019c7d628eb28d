"""Temporary memory of the compiled train step, by attention kernel, layer layout and row length.

XLA's buffer assignment (``compiled.memory_analysis()``) says how many bytes of temporaries a
compiled program needs beside its arguments and outputs, without running it; it works on CPU.
The train step is compiled for abstract inputs (nothing is allocated), so even the Llama-1B shape
that ran out of memory on an 80 GB H100 can be examined here:

    python scripts/memory_report.py                          # tiny width, T = 1024, 2048, 4096: the table
    python scripts/memory_report.py --kernels xla,splash     # splash in Pallas interpret mode too
    python scripts/memory_report.py --model llama-1b --rows 4 --seq 4096 --layouts scan --kernels xla
    python scripts/memory_report.py --model llama-1b --rows 4 --seq 4096 --layouts scan --kernels xla \\
        --reproduce-hoisting                                 # the 99.85 GiB bug, for comparison

``--reproduce-hoisting`` removes the optimization barrier in rm_jax.models.attention._prepare (for
this process only), showing what JAX's loop-invariant hoisting did to the xla kernel inside a
layer scan (docs/performance.md, "Memory"). Growth is linear in T when temp(2T) / temp(T) stays
near 2; a T x T buffer per layer makes it tend to 4. The CPU compiler's figures are not the
GPU's (different fusion, bf16 dots upcast on CPU), but an O(T^2) buffer shows up on both.
Prints a markdown table, or JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {
    # Tiny width: memory is dominated by what grows with T, which is what the table is about.
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=8192,
    ),
    # meta-llama/Llama-3.2-1B's config.json (as scripts/bench_gpu.py).
    "llama-1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    ),
}


def model_config(shape: str, kernel: str, scan: bool, dtype: str, remat: str, **over: Any) -> Any:
    from rm_jax.models.llama import DecoderConfig

    arch = dict(SHAPES[shape])
    arch.update(over)
    return DecoderConfig(
        model_type="llama", num_labels=5, dtype=dtype, remat=remat, scan_layers=scan, attention=kernel, **arch
    )


def reproduce_hoisting() -> None:
    """Undo the fix: the barrier in attention._prepare becomes the identity (this process only)."""
    from rm_jax.models import attention

    attention.jax = _JaxWithoutBarrier(attention.jax)


class _JaxWithoutBarrier:
    def __init__(self, real: Any):
        self._real = real
        self.lax = _LaxWithoutBarrier(real.lax)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _LaxWithoutBarrier:
    def __init__(self, real: Any):
        self._real = real

    def optimization_barrier(self, x: Any) -> Any:
        return x

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


from rm_jax.engine.memory import train_step_memory  # noqa: E402


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--kernels", default="xla", help="comma list of xla, splash (interpret off TPU), auto, ...")
    ap.add_argument("--layouts", default="scan,unrolled", help="comma list of scan, unrolled")
    ap.add_argument("--seq", default="1024,2048,4096", help="comma list of row lengths")
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--max-segments", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--remat", default="dots_no_batch", choices=["none", "full", "dots", "dots_no_batch"])
    ap.add_argument("--layers", type=int, default=None, help="override the shape's layer count")
    ap.add_argument("--reproduce-hoisting", action="store_true", help="remove the fix (see the module docstring)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.reproduce_hoisting:
        reproduce_hoisting()
    import jax

    over = {} if a.layers is None else {"num_hidden_layers": a.layers}
    seqs = [int(s) for s in a.seq.split(",")]
    results = []
    for kernel in a.kernels.split(","):
        for layout in a.layouts.split(","):
            prev = None
            for seq in seqs:
                cfg = model_config(a.model, kernel, layout == "scan", a.dtype, a.remat, **over)
                r = train_step_memory(cfg, a.rows, seq, a.max_segments)
                r.update(
                    kernel=cfg.attention_kernel(),
                    layout=layout,
                    seq=seq,
                    rows=a.rows,
                    growth=None if prev is None else r["temp_bytes"] / prev,
                )
                prev = r["temp_bytes"]
                results.append(r)
                print(
                    f"[memory_report] {kernel} {layout} T={seq}: temp {r['temp_bytes'] / 2**20:.1f} MiB "
                    f"(compile {r['compile_s']} s)",
                    file=sys.stderr,
                    flush=True,
                )
    head = {
        "model": a.model,
        "dtype": a.dtype,
        "remat": a.remat,
        "rows": a.rows,
        "max_segments": a.max_segments,
        "layers": over.get("num_hidden_layers", SHAPES[a.model]["num_hidden_layers"]),
        "hoisting_fix": not a.reproduce_hoisting,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }
    if a.json:
        print(json.dumps({**head, "results": results}))
        return 0
    print(
        f"{a.model}, {head['layers']} layers, {a.dtype}, remat {a.remat}, {a.rows} rows; jax {jax.__version__} "
        f"on {head['backend']}; hoisting fix {'on' if head['hoisting_fix'] else 'OFF'}"
    )
    print("| kernel | layers | T | temp | temp / T | x vs T/2 | args |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        g = "" if r["growth"] is None else f"{r['growth']:.2f}"
        print(
            f"| {r['kernel']} | {r['layout']} | {r['seq']} | {_size(r['temp_bytes'])} | "
            f"{r['temp_bytes'] / r['seq'] / 1024:.1f} KiB | {g} | {_size(r['argument_bytes'])} |"
        )
    return 0


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


if __name__ == "__main__":
    sys.exit(main())
