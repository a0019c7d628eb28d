"""Attention alone, forward + backward: rm_jax's kernels (``model.attention``) against XLA autodiff
of a dense softmax and torch's ``scaled_dot_product_attention``, in one process, interleaved.

The default shapes are the train benchmark's (8 query heads, 2 kv heads, head_dim 64, fp32).
``--segments`` packs that many conversations per row (random cut points, a few pad tokens at the
end): rm_jax's kernels skip the keys of other conversations; torch gets one causal conversation per
row either way (its sdpa fast path), so the packed figures show what skipping buys, not a
like-for-like mask. ``--kernels`` adds rm_jax's other kernels by name (``cudnn`` = packed cuDNN and
``cudnn_dense`` on a GPU with ``--dtype bfloat16``; ``splash`` on a TPU, or interpreted elsewhere).

    python scripts/bench_attention.py --rows 2 --seq 2048 --segments 1,4 --blocks 64,128,256 --json
    # on an H100 (the attention-alone table of docs/performance.md):
    python scripts/bench_attention.py --rows 4 --seq 4096 --heads 32 --kv-heads 8 --dtype bfloat16 \
        --segments 8 --kernels cudnn,cudnn_dense --no-torch --json

``--shared PROMPT,RESPONSE,N`` times the kernels that read the shared-prompt layout instead (``xla``
against the Pallas kernel ``pallas``, rm_jax.models.pallas_shared) on rows packed with groups of a
PROMPT-token prompt and N RESPONSE-token responses, and reports their outputs' max difference. On a GPU:

    python scripts/bench_attention.py --shared 1024,256,2 --rows 4 --seq 4096 --heads 32 --kv-heads 8 \
        --dtype bfloat16 --no-torch --json
    # off a GPU the Pallas kernel runs interpreted (slow): a smoke run only
    python scripts/bench_attention.py --shared 40,24,3 --rows 1 --seq 256 --heads 4 --kv-heads 2 --repeats 1

``--shared-kernel pallas_tpu`` times the TPU (Mosaic) variant (rm_jax.models.pallas_shared_tpu) against
``xla`` instead; on a TPU:

    python scripts/bench_attention.py --shared 1024,256,2 --shared-kernel pallas_tpu --rows 4 --seq 4096 \
        --heads 32 --kv-heads 8 --dtype bfloat16 --no-torch --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Optional

import numpy as np
from bench_common import cores, environment  # noqa: E402


def packed_segments(rng: np.random.Generator, rows: int, t: int, n: int) -> np.ndarray:
    seg = np.zeros((rows, t), np.int32)
    for r in range(rows):
        cuts = np.sort(rng.choice(np.arange(1, t - 64), n - 1, replace=False)) if n > 1 else []
        bounds = [0, *cuts, t - (8 if n > 1 else 0)]
        for i in range(n):
            seg[r, bounds[i] : bounds[i + 1]] = i + 1
    return seg


def shared_segments(rows: int, t: int, prompt: int, response: int, n: int) -> np.ndarray:
    """Rows of whole groups in the shared layout (rm_jax.data.prefix_sharing): a prompt's tokens carry -g,
    its responses the slots g, g+1, ...; pads (0) fill each row's tail."""
    seg = np.zeros((rows, t), np.int32)
    for r in range(rows):
        at, slot = 0, 1
        while at + prompt + n * response <= t:
            seg[r, at : at + prompt] = -slot
            at += prompt
            for _ in range(n):
                seg[r, at : at + response] = slot
                at, slot = at + response, slot + 1
    return seg


def run_shared(a: argparse.Namespace) -> int:
    """xla vs --shared-kernel (pallas or pallas_tpu), forward + backward, on shared-prompt rows (module docstring)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from rm_jax.models.attention import attend

    prompt, response, n_resp = (int(x) for x in a.shared.split(","))
    b, t, n, kv, d = a.rows, a.seq, a.heads, a.kv_heads, 64
    seg = shared_segments(b, t, prompt, response, n_resp)
    if not (seg < 0).any():
        raise SystemExit(f"--shared {a.shared}: no group fits a {t}-token row")
    rng = np.random.default_rng(0)
    dt = jnp.bfloat16 if a.dtype == "bfloat16" else jnp.float32
    q, k, v, g = (
        jnp.asarray(rng.standard_normal(s), dt) for s in ((b, t, n, d), (b, t, kv, d), (b, t, kv, d), (b, t, n, d))
    )
    prec = lax.Precision.HIGHEST if a.dtype == "float32" else None
    fwd = {
        # xla as a run with shared prompts compiles it (DecoderConfig.shared_prompts: the prompt range)
        name: jax.jit(lambda q, k, v, s, name=name: attend(q, k, v, s, kernel=name, precision=prec, prompt_range=True))
        for name in ("xla", a.shared_kernel)
    }
    step = {
        name: jax.jit(
            jax.value_and_grad(lambda q, k, v, s, g, f=f: jnp.sum(f(q, k, v, s).astype(jnp.float32) * g), (0, 1, 2))
        )
        for name, f in fwd.items()
    }
    other = a.shared_kernel
    diff = float(jnp.abs(fwd["xla"](q, k, v, seg).astype(jnp.float32) - fwd[other](q, k, v, seg)).max())
    times: dict = {name: [] for name in step}
    compile_s = {}
    for name, f in step.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(q, k, v, seg, g))
        compile_s[name] = round(time.perf_counter() - t0, 2)
    for _ in range(a.repeats):
        for name, f in step.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(q, k, v, seg, g))
            times[name].append(time.perf_counter() - t0)
    row = {
        name: {"median_s": statistics.median(x), "all_s": [round(y, 4) for y in x], "compile_s": compile_s[name]}
        for name, x in times.items()
    }
    res = {
        "benchmark": "attention_shared_fwd_bwd",
        "shape": {"prompt": prompt, "response": response, "responses": n_resp, "groups": int((seg < 0).any(1).sum())},
        "rows": b,
        "seq_len": t,
        "heads": n,
        "kv_heads": kv,
        "head_dim": d,
        "dtype": a.dtype,
        "backend": jax.default_backend(),
        "kernel": other,
        f"{other}_interpreted": jax.default_backend() not in (("tpu",) if other == "pallas_tpu" else ("gpu", "cuda")),
        f"max_abs_diff_{other}_vs_xla": diff,
        f"speedup_{other}_vs_xla": row["xla"]["median_s"] / row[other]["median_s"],
        "results": row,
        "environment": environment(),
    }
    print(
        f"[bench_attention] shared {a.shared}: xla {row['xla']['median_s']:.4f}s, {other} "
        f"{row[other]['median_s']:.4f}s, max |diff| {diff:.2e}",
        file=sys.stderr,
        flush=True,
    )
    print(json.dumps(res) if a.json else json.dumps(res, indent=1))
    return 0


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--segments", default="1,4", help="conversations per row, comma list")
    ap.add_argument("--blocks", default="128", help="attention_block values for the flash kernel, comma list")
    ap.add_argument("--kernels", default="", help="other rm_jax kernels to time: cudnn, cudnn_dense, splash")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--dense", action="store_true", help="also time XLA autodiff of the dense T x T softmax")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--shared", default="", help="PROMPT,RESPONSE,N: time xla vs pallas on shared-prompt rows")
    ap.add_argument(
        "--shared-kernel",
        default="pallas",
        choices=["pallas", "pallas_tpu"],
        help="the kernel --shared times against xla: pallas (Triton, GPU) or pallas_tpu (Mosaic, TPU)",
    )
    a = ap.parse_args(argv)
    if a.shared:
        return run_shared(a)

    import jax
    import jax.numpy as jnp

    from rm_jax.models.attention import attend, flash_attention, reference_attention

    b, t, n, kv, d = a.rows, a.seq, a.heads, a.kv_heads, 64
    rng = np.random.default_rng(0)
    q, k, v, g = (
        rng.standard_normal(s).astype(np.float32) for s in ((b, t, n, d), (b, t, kv, d), (b, t, kv, d), (b, t, n, d))
    )
    if a.dtype == "bfloat16":
        q, k, v, g = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v, g))
    max_segments = max(int(x) for x in a.segments.split(","))

    def grad_fn(f):
        return jax.jit(jax.value_and_grad(lambda q, k, v, s, g: jnp.sum(f(q, k, v, s) * g), argnums=(0, 1, 2)))

    fns = {
        f"flash_block{blk}": grad_fn(lambda q, k, v, s, blk=blk: flash_attention(q, k, v, s, block=blk))
        for blk in (int(x) for x in a.blocks.split(","))
    }
    for kernel in (x.strip() for x in a.kernels.split(",") if x.strip()):
        fns[kernel] = grad_fn(
            lambda q, k, v, s, kernel=kernel: attend(q, k, v, s, kernel=kernel, max_segments=max_segments)
        )
    if a.dense:
        fns["xla_dense"] = grad_fn(reference_attention)
    torch_step: Optional[Callable[[], None]] = None
    if not a.no_torch:
        import torch

        torch.set_num_threads(cores())
        tq, tk, tv = (
            torch.tensor(np.asarray(x, np.float32)).transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v)
        )
        tg = torch.tensor(np.asarray(g, np.float32)).transpose(1, 2)

        def sdpa_step() -> None:
            out = torch.nn.functional.scaled_dot_product_attention(
                tq, tk.repeat_interleave(n // kv, 1), tv.repeat_interleave(n // kv, 1), is_causal=True
            )
            (out * tg).sum().backward()
            tq.grad = tk.grad = tv.grad = None

        sdpa_step()
        torch_step = sdpa_step

    res: dict = {
        "benchmark": "attention_fwd_bwd",
        "rows": b,
        "seq_len": t,
        "heads": n,
        "kv_heads": kv,
        "head_dim": d,
        "dtype": a.dtype,
        "backend": jax.default_backend(),
        "environment": environment(),
        "results": {},
    }
    for nseg in (int(x) for x in a.segments.split(",")):
        seg = packed_segments(rng, b, t, nseg)
        compile_s = {}
        for name, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(q, k, v, seg, g))
            compile_s[name] = round(time.perf_counter() - t0, 2)
        times: dict = {name: [] for name in fns}
        if torch_step is not None:
            times["torch_sdpa_causal"] = []
        for _ in range(a.repeats):
            for name, f in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(f(q, k, v, seg, g))
                times[name].append(time.perf_counter() - t0)
            if torch_step is not None:
                t0 = time.perf_counter()
                torch_step()
                times["torch_sdpa_causal"].append(time.perf_counter() - t0)
        row = {name: {"median_s": statistics.median(x), "all_s": [round(y, 4) for y in x]} for name, x in times.items()}
        for name in fns:
            row[name]["compile_s"] = compile_s[name]
        res["results"][f"segments_{nseg}"] = row
        print(
            f"[bench_attention] {nseg} conversation(s) per row: "
            + ", ".join(f"{k} {v['median_s']:.3f}s" for k, v in row.items()),
            file=sys.stderr,
            flush=True,
        )
    res["environment"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res) if a.json else json.dumps(res["results"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
