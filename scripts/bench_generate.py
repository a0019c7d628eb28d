"""Decoding throughput: rm_jax's KV-cache sampler (``rm_jax.policy.generate_tokens``, the ``rm-jax lm generate``
path) against transformers ``generate`` on the same causal LM, the same prompts, in the same process.

One model, identical weights on both sides: an rm_jax causal LM (the hidden-512 Llama shape of
bench_train.py with an LM head, random init; ``--model`` overrides it, e.g. ``tiny``) is written with
``rm_jax.models.hf_io.export_hf_causal_lm`` and read back by transformers' ``AutoModelForCausalLM`` (eager
attention is not forced: transformers picks its default, sdpa). Both continue the same batch of prompts
(random ids, lengths drawn from ``--prompt-len``), left-padded with an attention mask on the transformers
side, for ``--max-new-tokens`` tokens or until every row has emitted EOS. Greedy decoding is the headline
(both sides must produce the same token ids, which is checked, so they do the same work); ``--sample``
adds a temperature-1, top-p 0.9 pass (counts each side's own generated tokens).

The figure is generated tokens per second: new tokens up to and including each row's EOS, summed over the
batch, divided by the wall time of the whole call (prefill included, the host-side batching of
``generate_tokens`` included). Method: one warm-up call per side (rm_jax's compile reported apart), then
``--repeats`` timed calls per side, interleaved (rm_jax, torch, rm_jax, ...), so load from other processes
hits both; medians are compared.

    python scripts/bench_generate.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Optional

import numpy as np
from bench_common import bench_model_config, cores, environment, parse_overrides  # noqa: E402

FLOOR = 1.5
TINY = dict(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


def model_config(spec: str) -> Any:
    if spec == "tiny":
        return bench_model_config(**TINY, head="lm")
    return bench_model_config(head="lm", **parse_overrides(spec))


class _Tokenizer:
    """The two things the sampler asks a tokenizer for (end of turn, padding) on a random-id benchmark."""

    def __init__(self, eos: int, pad: int):
        self.eos_token_id, self.pad_token_id = eos, pad


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer new tokens and repeats (a smoke run)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--model",
        default="shipped",
        help="'tiny', or DecoderConfig overrides of the hidden-512 shape, '+'-joined key=value",
    )
    ap.add_argument("--batch", type=int, default=8, help="prompts decoded together (one batch on both sides)")
    ap.add_argument("--prompt-len", default="48,160", help="prompt lengths drawn uniformly from LO,HI tokens")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 128, quick 32")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per side (default 5, quick 2)")
    ap.add_argument("--sample", action="store_true", help="also time temperature-1, top-p 0.9 sampling")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    max_new = a.max_new_tokens or (32 if a.quick else 128)
    repeats = a.repeats or (2 if a.quick else 5)
    lo, hi = (int(x) for x in a.prompt_len.split(","))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench_generate {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import jax
    import torch
    from transformers import AutoModelForCausalLM

    from rm_jax.models import init_params
    from rm_jax.models.hf_io import export_hf_causal_lm
    from rm_jax.models.sharding import make_mesh
    from rm_jax.policy import Policy, generate_tokens

    torch.set_num_threads(cores())
    env = environment()

    cfg = model_config(a.model)
    mesh = make_mesh(devices=jax.devices()[:1])
    params = init_params(cfg, mesh, a.seed)
    # Larger head weights than the init's: peaked next-token distributions, as a trained model has, so the
    # greedy paths do not hinge on float-rounding ties between near-equal logits.
    params["lm_head_kernel"] = params["lm_head_kernel"] * 10.0
    tmp = tempfile.mkdtemp(prefix="bench_generate_")
    folder = export_hf_causal_lm(cfg, params, os.path.join(tmp, "hf"))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    eos, pad = 2, 0
    policy = Policy(cfg, params, _Tokenizer(eos, pad), None, mesh, folder)
    log(
        f"model exported and reloaded by transformers ({type(hf).__name__}, attn {hf.config._attn_implementation}, "
        f"{cfg.num_params() / 1e6:.1f}M params)"
    )

    rng = np.random.default_rng(a.seed)
    lengths = rng.integers(lo, hi + 1, size=a.batch)
    prompts = [rng.integers(3, cfg.vocab_size, size=n).astype(np.int32) for n in lengths]
    width = int(lengths.max())
    x = np.full((a.batch, width), pad, np.int64)
    m = np.zeros((a.batch, width), np.int64)
    for r, p in enumerate(prompts):
        x[r, width - len(p) :], m[r, width - len(p) :] = p, 1
    tx, tm = torch.from_numpy(x), torch.from_numpy(m)

    def run_jax(sample: bool) -> list[np.ndarray]:
        kw = dict(temperature=1.0, top_p=0.9, seed=a.seed) if sample else dict(greedy=True)
        res = generate_tokens(policy, prompts, max_new_tokens=max_new, batch_size=a.batch, **kw)
        return [ids for per in res for ids, _ in per]

    def run_torch(sample: bool) -> list[np.ndarray]:
        kw = dict(do_sample=True, temperature=1.0, top_p=0.9, top_k=0) if sample else dict(do_sample=False)
        with torch.no_grad():
            out = hf.generate(tx, attention_mask=tm, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=pad, **kw)[
                :, width:
            ].numpy()
        rows = []
        for row in out:
            stop = np.flatnonzero(row == eos)
            rows.append(row[: stop[0] + 1] if len(stop) else row)
        return rows

    def timed(fn: Any, sample: bool) -> tuple[float, int, list]:
        t = time.perf_counter()
        rows = fn(sample)
        return time.perf_counter() - t, sum(len(r) for r in rows), rows

    results: dict[str, Any] = {}
    for mode in ["greedy"] + (["sample"] if a.sample else []):
        sample = mode == "sample"
        warm_j, _, jrows = timed(run_jax, sample)
        warm_t, _, trows = timed(run_torch, sample)
        log(f"{mode}: warm-up rm_jax {warm_j:.1f}s (compile included), torch {warm_t:.1f}s")
        same = [np.array_equal(j, t) for j, t in zip(jrows, trows)]
        jt, tt, jn, tn = [], [], [], []
        for r in range(repeats):
            s, n, _ = timed(run_jax, sample)
            jt.append(s)
            jn.append(n)
            s, n, _ = timed(run_torch, sample)
            tt.append(s)
            tn.append(n)
            log(
                f"{mode} repeat {r + 1}/{repeats}: rm_jax {jn[-1] / jt[-1]:.0f} tok/s, "
                f"torch {tn[-1] / tt[-1]:.0f} tok/s"
            )
        j_rate = statistics.median(n / s for n, s in zip(jn, jt))
        t_rate = statistics.median(n / s for n, s in zip(tn, tt))
        results[mode] = {
            "rm_jax": {
                "tokens_per_s": j_rate,
                "call_s_all": [round(s, 3) for s in jt],
                "tokens": jn[0],
                "warmup_s": round(warm_j, 2),
            },
            "torch": {
                "tokens_per_s": t_rate,
                "call_s_all": [round(s, 3) for s in tt],
                "tokens": tn[0],
                "warmup_s": round(warm_t, 2),
                "threads": torch.get_num_threads(),
            },
            "ratio": j_rate / t_rate,
            "ratio_best": max(n / s for n, s in zip(jn, jt)) / max(n / s for n, s in zip(tn, tt)),
        }
        if not sample:
            results[mode]["rows_identical_to_transformers"] = f"{sum(same)}/{len(same)}"
    res = {
        "benchmark": "generate",
        "quick": a.quick,
        "model": a.model,
        "params_m": round(cfg.num_params() / 1e6, 2),
        "batch": a.batch,
        "prompt_lengths": lengths.tolist(),
        "max_new_tokens": max_new,
        "repeats": repeats,
        **results,
        "floor": FLOOR,
        "floor_met": results["greedy"]["ratio"] >= FLOOR,
        "environment": env,
    }
    res["environment"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(res, default=float))
    else:
        for mode, r in results.items():
            print(
                f"{mode}: rm_jax {r['rm_jax']['tokens_per_s']:.0f} tok/s, transformers generate "
                f"{r['torch']['tokens_per_s']:.0f} tok/s; ratio {r['ratio']:.2f}"
                + (f"; identical rows {r['rows_identical_to_transformers']}" if mode == "greedy" else "")
            )
        print(
            f"floor {FLOOR} (greedy): {'met' if res['floor_met'] else 'MISSED'}; batch {a.batch}, "
            f"{res['params_m']}M params, CPU {env['cpu_lscpu']}, {env['cores']} cores"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
