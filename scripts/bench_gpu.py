"""GPU train-step benchmark: a Llama-3.2-1B-shaped reward model, bf16 compute, seq 4096, packed.

Run through scripts/bench_gpu.sh on a GPU machine (no internet needed: random weights, synthetic
HelpSteer2-shaped conversations). For each attention kernel (``cudnn`` = jax.nn.dot_product_attention
on cuDNN, where the backend is a GPU; ``xla`` = rm_jax's einsum attention) it times rm_jax's real
train step (``make_train_step`` jitted with donated, sharded state as ``rm_jax.train`` does) and
reports step time, tokens/s (all slots and real tokens) and MFU against this card's measured bf16
matmul peak (best of repeated large ``jnp.dot``), with MFU = tokens/s x rm_jax.train.flops_per_token
/ peak. ``--smoke`` runs tiny shapes (works on CPU) to prove the script has no bugs. Prints one JSON
object; also writes it to $OUT/bench_gpu.json when $OUT is set.

Only rm_jax.step / rm_jax.models / rm_jax.data.packing (+ rm_jax.train for the FLOP formula, with a
fallback copy) are imported: no ``datasets``, no ``grain``; the JSON says whether either got imported.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback
from typing import Any, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def flops_per_token_fallback(cfg: Any, seq_len: int) -> float:
    """The same formula as rm_jax.train.flops_per_token (used only if rm_jax.train cannot be imported)."""
    n = cfg.num_params(include_embedding=False)
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len / 2


def model_config(smoke: bool, attention: str, remat: str, scan_layers: bool) -> Any:
    from rm_jax.models.llama import DecoderConfig
    if smoke:
        arch = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                    tie_word_embeddings=True)
    else:  # meta-llama/Llama-3.2-1B's config.json
        arch = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
                    rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=True,
                    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    return DecoderConfig(model_type="llama", num_labels=5, dtype="bfloat16", remat=remat, scan_layers=scan_layers,
                         attention=attention, **arch)


def matmul_peak_bf16(n: int, repeats: int) -> dict:
    """Best bf16 x bf16 matmul rate (random operands, never zeros) on the default device."""
    import jax
    import jax.numpy as jnp
    ka, kb = jax.random.split(jax.random.key(1))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    f(a, b).block_until_ready()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        ts.append(time.perf_counter() - t)
    flops = 2.0 * n ** 3
    return {"n": n, "dtype": "bfloat16", "best_flops": flops / min(ts), "median_flops": flops / statistics.median(ts)}


def packed_batches(n_batches: int, rows: int, seq_len: int, max_segments: int, vocab: int, seed: int) -> tuple[list, dict]:
    """HelpSteer2-shaped conversations packed into n_batches fixed [rows, seq_len] batches."""
    from bench_train import helpsteer_token_lengths
    from rm_jax.data.packing import build_batch, plan_packed
    rng = np.random.default_rng(seed)
    need = n_batches * rows
    n = max(8, int(need * seq_len / 500))
    while True:
        lengths, truncated = helpsteer_token_lengths(rng, n, seq_len)
        bins = plan_packed(lengths.tolist(), seq_len, max_segments)
        if len(bins) >= need + 1:  # the last bin may be partly empty: leave it out
            break
        n *= 2
    bins = bins[:need]
    used = sorted(i for b in bins for i in b)
    ex = {i: rng.integers(3, vocab, int(lengths[i]), dtype=np.int64).astype(np.int32) for i in used}
    remap = {i: j for j, i in enumerate(used)}
    examples = [ex[i] for i in used]
    labels = rng.integers(0, 5, (len(used), 5)).astype(np.float32)
    mask = np.ones_like(labels)
    out = []
    for k in range(n_batches):
        chunk = [[remap[i] for i in b] for b in bins[k * rows:(k + 1) * rows]]
        b = build_batch(examples, labels, mask, chunk, seq_len, max_segments, 0, rows=rows)
        b.pop("example_index")
        out.append({key: v[None] for key, v in b.items()})  # grad-accum axis of 1
    real = sum(int((b["segment_ids"] > 0).sum()) for b in out)
    return out, {"conversations": len(used), "real_tokens": real, "fill": real / (n_batches * rows * seq_len),
                 "truncated_to_seq_len": int(truncated)}


def run_variant(cfg: Any, batches: list, warmup: int, steps: int, peak: float, seq_len: int,
                fpt_fn: Any, seed: int) -> dict:
    import jax
    from rm_jax.config import LossConfig, TrainConfig
    from bench_train import new_train_state
    from rm_jax.sharding import make_mesh
    from rm_jax.step import batch_shardings, lr_schedule, make_optimizer, make_train_step, put_batch
    mesh = make_mesh(devices=jax.devices()[:1])
    tc = TrainConfig(lr=1e-5, warmup_steps=0)
    tx = make_optimizer(tc, 1000)
    t = time.perf_counter()
    state, shard = new_train_state(cfg, tx, mesh, seed)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    step = jax.jit(make_train_step(cfg, LossConfig(), tx, batches[0]["labels"].shape[2], lr_schedule(tc, 1000), mesh),
                   in_shardings=(shard, None), out_shardings=(shard, None), donate_argnums=0)
    sh = batch_shardings(mesh, batches[0], accum=True)
    times, compile_s = [], None
    for i in range(warmup + steps):
        b = batches[i % len(batches)]
        t = time.perf_counter()
        state, m = step(state, put_batch(b, sh))
        m = jax.device_get(m)  # waits for the step
        dt = time.perf_counter() - t
        if not bool(m["ok"]):
            raise RuntimeError(f"non-finite loss at step {i}: {m['loss']}")
        if i == 0:
            compile_s = dt
        elif i >= warmup:
            times.append(dt)
    rows, seq = batches[0]["input_ids"].shape[1:]
    slots = rows * seq
    real = statistics.median(int((b["segment_ids"] > 0).sum()) for b in batches)
    med = statistics.median(times)
    fpt = fpt_fn(cfg, seq_len)
    out = {"step_s": med, "step_s_all": [round(x, 4) for x in times], "compile_and_first_step_s": round(compile_s, 2),
           "init_s": round(init_s, 2), "tokens_per_step": slots, "tokens_per_s": slots / med,
           "real_tokens_per_s": real / med, "flops_per_token": fpt, "mfu": slots / med * fpt / peak,
           "loss_last": float(m["loss"])}
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["peak_memory_gib"] = round(stats["peak_bytes_in_use"] / 2**30, 2)
    except Exception:  # CPU has no memory stats
        pass
    del state
    return out


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, runs on CPU")
    ap.add_argument("--json", action="store_true", help="(always JSON; kept for symmetry with the other benches)")
    ap.add_argument("--seq-len", type=int, default=None, help="default 4096 (smoke 256)")
    ap.add_argument("--rows", type=int, default=None, help="packed rows per step (default 4, smoke 2)")
    ap.add_argument("--max-segments", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10, smoke 2)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps, the first compiles")
    ap.add_argument("--attention", default="cudnn,xla", help="kernels to compare, in order")
    ap.add_argument("--remat", default="dots_no_batch", choices=["none", "full", "dots", "dots_no_batch"])
    ap.add_argument("--no-scan", action="store_true", help="unrolled layers (slower compile) instead of nn.scan")
    ap.add_argument("--peak-n", type=int, default=None, help="matmul size for the peak (default 8192, smoke 512)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    smoke = a.smoke
    seq_len = a.seq_len or (256 if smoke else 4096)
    rows = a.rows or (2 if smoke else 4)
    steps = a.steps or (2 if smoke else 10)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench_gpu {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import jax
    import rm_jax.models  # noqa: F401
    import rm_jax.step  # noqa: F401
    import rm_jax.data.packing  # noqa: F401
    imports = {"datasets_imported_by_rm_jax.step/models": "datasets" in sys.modules,
               "grain_imported_by_rm_jax.step/models": "grain" in sys.modules}
    try:
        from rm_jax.perf import flops_per_token as fpt_fn
        fpt_source = "rm_jax.train.flops_per_token"
    except Exception as e:  # keep going on a machine missing one of rm_jax.train's imports
        fpt_fn, fpt_source = flops_per_token_fallback, f"fallback copy (rm_jax.train import failed: {e!r})"
    imports["datasets_imported_after_rm_jax.train"] = "datasets" in sys.modules
    imports["grain_imported_after_rm_jax.train"] = "grain" in sys.modules

    dev = jax.devices()[0]
    backend = jax.default_backend()
    res: dict = {"benchmark": "gpu_train_step", "smoke": smoke, "backend": backend, "device_kind": dev.device_kind,
                 "device_count": jax.device_count(), "jax": jax.__version__, "imports": imports,
                 "flop_formula": f"{fpt_source}: 6 * non_embedding_params + 12 * layers * heads * head_dim * "
                                 f"seq_len / 2, per token (all slots, padding included)",
                 "seq_len": seq_len, "rows_per_step": rows, "max_segments": a.max_segments, "remat": a.remat,
                 "scan_layers": not a.no_scan, "dtype": "bfloat16 compute, float32 params + AdamW state"}
    log(f"{backend} {dev.device_kind}; measuring bf16 matmul peak ...")
    peak = matmul_peak_bf16(a.peak_n or (512 if smoke else 8192), 5 if smoke else 20)
    res["matmul_peak"] = peak
    log(f"bf16 matmul peak {peak['best_flops'] / 1e12:.1f} TFLOP/s")

    cfg0 = model_config(smoke, "xla", a.remat, not a.no_scan)
    res["model"] = {"shape": "tiny (smoke)" if smoke else "Llama-3.2-1B", "params": cfg0.num_params(),
                    "non_embedding_params": cfg0.num_params(include_embedding=False),
                    "hidden_size": cfg0.hidden_size, "num_hidden_layers": cfg0.num_hidden_layers,
                    "num_attention_heads": cfg0.num_attention_heads, "num_key_value_heads": cfg0.num_key_value_heads,
                    "intermediate_size": cfg0.intermediate_size, "vocab_size": cfg0.vocab_size,
                    "tie_word_embeddings": cfg0.tie_word_embeddings}
    batches, info = packed_batches(min(a.warmup + steps, 8), rows, seq_len, a.max_segments, cfg0.vocab_size, a.seed)
    res["data"] = info
    log(f"{len(batches)} packed batches of {rows} x {seq_len}, fill {info['fill']:.1%}")

    res["variants"] = {}
    for attn in [x.strip() for x in a.attention.split(",") if x.strip()]:
        if attn == "cudnn" and backend != "gpu":
            res["variants"][attn] = {"skipped": f"cuDNN attention needs a GPU (backend is {backend})"}
            log(f"{attn}: skipped on {backend}")
            continue
        cfg = model_config(smoke, attn, a.remat, not a.no_scan)
        log(f"{attn}: compiling and timing {a.warmup} + {steps} steps ...")
        try:
            r = run_variant(cfg, batches, a.warmup, steps, peak["best_flops"], seq_len, fpt_fn, a.seed)
            res["variants"][attn] = r
            log(f"{attn}: step {r['step_s'] * 1e3:.1f} ms, {r['tokens_per_s']:.0f} tok/s, MFU {r['mfu']:.1%}")
        except Exception as e:  # OOM, unsupported cuDNN config, ...: report and go on
            res["variants"][attn] = {"error": f"{type(e).__name__}: {str(e)[:2000]}",
                                     "traceback_tail": traceback.format_exc()[-2000:]}
            log(f"{attn}: FAILED {type(e).__name__}: {str(e)[:300]}")
        gc.collect()
        jax.clear_caches()
    ok = {k: v for k, v in res["variants"].items() if "step_s" in v}
    if len(ok) >= 2 and "cudnn" in ok and "xla" in ok:
        res["cudnn_speedup_over_xla"] = ok["xla"]["step_s"] / ok["cudnn"]["step_s"]
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(res, default=float)
    print(text)
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "bench_gpu.json"), "w") as f:
            f.write(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
