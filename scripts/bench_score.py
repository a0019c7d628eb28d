"""Scoring throughput: rm_jax's Scorer (the ``rm-jax score`` path) against transformers batched inference.

One model, identical weights on both sides: an rm_jax reward model (the hidden-512 Llama shape of
bench_train.py, random init) is written with ``rm_jax.models.hf_io.export_hf`` and read back by
transformers' ``AutoModelForSequenceClassification``. Both score the same rows: HelpSteer2-shaped
conversations (token lengths from the paper's prompt / response character statistics, ~4 chars per
token, random ids). rm_jax packs them as ``rm-jax score`` does (``Scorer.predict`` as
``score_rows`` calls it: 16 segments per row, seq_len = max(512, longest rounded up to 128), and
``--batch-rows`` rows per batch, 4 here); transformers runs padded batches in input order (right padding to
each batch's longest, ``torch.no_grad``, sdpa attention). The figure is real (non-pad) tokens per second.

Method: each side scores everything once to warm up (rm_jax's compile is reported apart; that pass is a
real ``Scorer.predict``), then timed passes run the two sides batch by batch, interleaved, so load from
other processes hits both; the median pass time is used. The two
sides' predictions are compared (max abs difference) so a fast wrong answer cannot pass.

    python scripts/bench_score.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Optional

import numpy as np
from bench_common import (
    bench_model_config,
    cores,
    environment,
    helpsteer_token_lengths,  # noqa: E402
    parse_overrides,
    random_examples,
)

FLOOR = 1.5


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rows", type=int, default=None, help="conversations to score (default 96, quick 32)")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per side (default 3, quick 2)")
    ap.add_argument(
        "--batch-rows",
        type=int,
        default=4,
        help="rm_jax rows per batch (rm-jax score --batch-rows; its default 16 pads a short input's last "
        "batch with empty rows, see docs/performance.md)",
    )
    ap.add_argument("--max-segments", type=int, default=16)
    ap.add_argument("--torch-batch", type=int, default=16, help="transformers conversations per padded batch")
    ap.add_argument("--max-len", type=int, default=4096, help="conversations longer than this are truncated")
    ap.add_argument(
        "--model",
        default="shipped",
        help="DecoderConfig overrides for rm_jax, '+'-joined key=value (e.g. attention_block=64)",
    )
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    n_rows = a.rows or (32 if a.quick else 96)
    repeats = a.repeats or (2 if a.quick else 3)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench_score {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import jax
    import torch
    from transformers import AutoModelForSequenceClassification

    from rm_jax.engine.scoring import Scorer
    from rm_jax.models import init_params
    from rm_jax.models.hf_io import export_hf
    from rm_jax.models.sharding import make_mesh

    torch.set_num_threads(cores())
    env = environment()

    cfg = bench_model_config(**parse_overrides(a.model))
    mesh = make_mesh(devices=jax.devices()[:1])
    params = init_params(cfg, mesh, a.seed)
    tmp = tempfile.mkdtemp(prefix="bench_score_")
    export_hf(
        cfg, params, os.path.join(tmp, "hf"), ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    )
    hf = AutoModelForSequenceClassification.from_pretrained(os.path.join(tmp, "hf"), dtype=torch.float32).eval()
    hf.config.pad_token_id = 0
    log(f"model exported and reloaded by transformers ({type(hf).__name__}, attn {hf.config._attn_implementation})")

    rng = np.random.default_rng(a.seed)
    lengths, truncated = helpsteer_token_lengths(rng, n_rows, a.max_len)
    ids = random_examples(rng, lengths, cfg.vocab_size)
    real = int(lengths.sum())
    longest = int(lengths.max())
    seq_len = max(512, ((longest + 127) // 128) * 128)  # rm_jax.score_cmd.score_rows' choice
    scorer = Scorer(cfg, params, mesh, pad_id=0)

    order = list(range(n_rows))  # input order, as a user's file comes
    t_batches = []
    for i in range(0, n_rows, a.torch_batch):
        chunk = order[i : i + a.torch_batch]
        width = max(len(ids[j]) for j in chunk)
        x = np.zeros((len(chunk), width), np.int64)
        m = np.zeros((len(chunk), width), np.int64)
        for r, j in enumerate(chunk):
            x[r, : len(ids[j])] = ids[j]
            m[r, : len(ids[j])] = 1
        t_batches.append((chunk, torch.from_numpy(x), torch.from_numpy(m)))

    torch_out = np.zeros((n_rows, cfg.num_labels), np.float32)

    def torch_batch_scores(which) -> np.ndarray:
        with torch.no_grad():
            for i in which:
                chunk, x, m = t_batches[i]
                torch_out[chunk] = hf(input_ids=x, attention_mask=m).logits.float().numpy()
        return torch_out.copy()

    log(
        f"{n_rows} rows, {real} real tokens (longest {longest}, truncated {truncated}); rm_jax seq_len {seq_len}, "
        f"{a.batch_rows} rows x {a.max_segments} segments per batch; torch batches of {a.torch_batch}"
    )
    # Warm-up and correctness: one whole Scorer.predict (compiles) and one whole torch pass.
    t = time.perf_counter()
    pj = scorer.predict(ids, seq_len, a.batch_rows, a.max_segments, packing=True, progress=False)
    warm_j = time.perf_counter() - t
    log(f"rm_jax warm-up (compile + pass) {warm_j:.1f}s")
    t = time.perf_counter()
    pt = torch_batch_scores(range(len(t_batches)))
    warm_t = time.perf_counter() - t
    log(f"torch warm-up pass {warm_t:.1f}s")
    max_diff = float(np.abs(pj - pt).max())

    # Timed passes, interleaved batch by batch so load bursts from other processes hit both sides.
    # The rm_jax batch loop is Scorer.predict's own (build_batch + score_batch + scatter by example_index).
    from rm_jax.data.packing import build_batch, plan_packed

    bins = plan_packed([len(x) for x in ids], seq_len, a.max_segments)
    rows = a.batch_rows
    chunks = [bins[i : i + rows] for i in range(0, len(bins), rows)]
    zeros = np.zeros((n_rows, cfg.num_labels), np.float32)

    def jax_batch(i: int, out: np.ndarray) -> float:
        t = time.perf_counter()
        b = build_batch(ids, zeros, zeros, chunks[i], seq_len, a.max_segments, 0, rows=rows)
        sc = scorer.score_batch(b, a.max_segments)
        idx = b["example_index"]
        sel = idx >= 0
        out[idx[sel]] = sc[sel]
        return time.perf_counter() - t

    jt, tt = [], []
    for r in range(repeats):
        oj = np.zeros_like(pj)
        js = ts = 0.0
        # Each side's batches spread evenly over the pass (the two sides have different batch counts).
        schedule = sorted(
            [((i + 0.5) / len(chunks), "j", i) for i in range(len(chunks))]
            + [((i + 0.5) / len(t_batches), "t", i) for i in range(len(t_batches))]
        )
        for _, side, i in schedule:
            if side == "j":
                js += jax_batch(i, oj)
            else:
                t = time.perf_counter()
                torch_batch_scores([i])
                ts += time.perf_counter() - t
        jt.append(js)
        tt.append(ts)
        max_diff = max(max_diff, float(np.abs(oj - pt).max()))
        log(f"repeat {r + 1}/{repeats}: rm_jax {js:.2f}s, torch {ts:.2f}s")
    jm, tm = statistics.median(jt), statistics.median(tt)
    n_batches = len(chunks)
    res = {
        "benchmark": "score",
        "quick": a.quick,
        "variant": a.model,
        "attention_block": cfg.attention_block,
        "rows": n_rows,
        "real_tokens": real,
        "mean_tokens": float(lengths.mean()),
        "longest": longest,
        "truncated": truncated,
        "rm_jax": {
            "seq_len": seq_len,
            "batch_rows": a.batch_rows,
            "max_segments": a.max_segments,
            "packed_rows": len(bins),
            "batches": n_batches,
            "fill": real / (n_batches * a.batch_rows * seq_len),
            "pass_s": jm,
            "pass_s_all": [round(x, 3) for x in jt],
            "warmup_s": round(warm_j, 2),
            "real_tokens_per_s": real / jm,
        },
        "torch": {
            "batch": a.torch_batch,
            "batches": len(t_batches),
            "fill": real / sum(x.numel() for _, x, _ in t_batches),
            "pass_s": tm,
            "pass_s_all": [round(x, 3) for x in tt],
            "warmup_s": round(warm_t, 2),
            "real_tokens_per_s": real / tm,
            "threads": torch.get_num_threads(),
        },
        "max_abs_diff_predictions": max_diff,
        "ratio": (real / jm) / (real / tm),
        # Fastest pass of each side: the least-disturbed estimate when other processes share the cores.
        "ratio_best": min(tt) / min(jt),
        "floor": FLOOR,
        "environment": env,
    }
    res["floor_met"] = res["ratio"] >= FLOOR
    res["environment"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    if max_diff > 1e-3:
        log(f"WARNING: predictions differ by {max_diff:.2e} (> 1e-3)")
    if a.json:
        print(json.dumps(res, default=float))
    else:
        print(
            f"rm_jax Scorer {res['rm_jax']['real_tokens_per_s']:.0f} real tok/s (fill {res['rm_jax']['fill']:.0%}), "
            f"transformers padded {res['torch']['real_tokens_per_s']:.0f} real tok/s "
            f"(fill {res['torch']['fill']:.0%}); "
            f"ratio {res['ratio']:.2f} (floor {FLOOR}: {'met' if res['floor_met'] else 'MISSED'}); "
            f"max |diff| {max_diff:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
