"""Input-pipeline throughput: tokenization + packing of a HelpSteer2-sized set, against one train step.

Generates 21,362 HelpSteer2-format rows (10,681 prompts x 2 responses on consecutive rows; ~29%
multi-turn prompts joined with the dataset's ``<extra_id_1>`` markers; prompt / response character
counts drawn from lognormals matched to the paper's Table 2 means and standard deviations; English-
looking text: sentences, lists, a little code) and times, with the bundled tokenizer
(rm_jax/assets/tokenizer):

* ``encode_helpsteer`` (chat template + batched fast tokenizer + the over-length policy): rows/s;
* one epoch of ``Loader`` (seeded shuffle, best-fit-decreasing packing, ``build_batch``): rows/s and
  the host time per batch;

and compares the host time per batch with one train step of the tiny demo model
(experiments/demo.yaml's architecture) on the same batch shape, to show whether the pipeline could
ever be the bottleneck. Tokenization happens once per run (before step 1); packing runs once per
epoch; ``build_batch`` runs once per step.

    python scripts/bench_data.py --json          # ~1-2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Optional

import numpy as np
from bench_common import HELPSTEER2, environment, new_train_state, sample_helpsteer_chars  # noqa: E402

ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")

_WORDS = (
    "the of and to a in is that for it as with was on be by this are or from at an which but not have has can "
    "you your we our they their will would should could may might must also more most many some any each other "
    "such only into over than then when where while because however therefore although example examples first "
    "second third finally step steps process data model models answer question questions result results "
    "important different several number numbers value values function functions system systems user users "
    "information people time year years work way part use used using make makes made provide provides help "
    "helps include includes including following based based on between within without about after before "
    "during through across under simple complex common specific general clear detailed short long new old "
    "good better best high low large small main key list lists table method methods approach approaches "
    "design code program python java string strings file files output input error errors test tests case "
    "cases order problem problems solution solutions idea ideas plan plans story character characters world "
    "history science health food water energy market business company customer customers product products "
    "service services price cost money team project goal goals research study studies report analysis "
    "write written explain explains describe summary summarize recommend recommended consider considered"
).split()
_CODE = (
    "def f(x):\n    return x * 2\n",
    "for i in range(10):\n    print(i)\n",
    "SELECT name FROM users WHERE id = 1;\n",
    "const x = items.map(i => i + 1);\n",
    "if (n < 0) {\n  throw new Error('n');\n}\n",
)


class TextGen:
    """English-looking text of a requested length, fast (numpy draws, one join per piece)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.words = np.asarray(_WORDS)

    def sentence(self) -> str:
        n = int(self.rng.integers(6, 26))
        w = self.words[self.rng.integers(0, len(self.words), n)].tolist()
        w[0] = w[0].capitalize()
        if n > 10 and self.rng.random() < 0.4:
            w[n // 2] += ","
        return " ".join(w) + (". " if self.rng.random() < 0.9 else "? ")

    def text(self, chars: int) -> str:
        parts: list[str] = []
        size = 0
        while size < chars:
            r = self.rng.random()
            if r < 0.07:
                piece = "\n" + "".join(f"{k + 1}. {self.sentence()}\n" for k in range(int(self.rng.integers(2, 6))))
            elif r < 0.09:
                piece = "\n```\n" + _CODE[int(self.rng.integers(0, len(_CODE)))] + "```\n"
            elif r < 0.2:
                piece = "\n\n" + self.sentence()
            else:
                piece = self.sentence()
            parts.append(piece)
            size += len(piece)
        s = "".join(parts).strip()
        return s[:chars].rstrip() or "Ok."


def make_rows(n_rows: int = HELPSTEER2["rows"], seed: int = 0) -> list[dict]:
    """HelpSteer2-shaped rows: consecutive pairs share a prompt; ~29% multi-turn prompts."""
    rng = np.random.default_rng(seed)
    gen = TextGen(seed + 1)
    n_prompts = (n_rows + 1) // 2
    p_chars, _ = sample_helpsteer_chars(rng, n_prompts)
    _, r_chars = sample_helpsteer_chars(rng, n_rows)
    rows = []
    for p in range(n_prompts):
        if rng.random() < HELPSTEER2["multi_turn_fraction"]:
            turns = 3 + 2 * int(rng.geometric(0.5) - 1)  # user, assistant, user, ... (odd)
            share = max(1, int(p_chars[p]) // turns)
            msgs = [gen.text(share) for _ in range(turns)]
            prompt = msgs[0]
            for t in range(1, turns):
                prompt += ("\n<extra_id_1>Assistant\n" if t % 2 else "\n<extra_id_1>User\n") + msgs[t]
        else:
            prompt = gen.text(int(p_chars[p]))
        for j in range(2):
            i = 2 * p + j
            if i >= n_rows:
                break
            row = {"prompt": prompt, "response": gen.text(int(r_chars[i]))}
            row.update({a: int(v) for a, v in zip(ATTRS, rng.integers(0, 5, len(ATTRS)))})
            rows.append(row)
    return rows


def demo_config(vocab: int):
    from rm_jax.models.llama import DecoderConfig

    # experiments/demo.yaml's architecture (vocab = the bundled tokenizer's size).
    return DecoderConfig(
        model_type="llama",
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        num_labels=len(ATTRS),
    )


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rows", type=int, default=HELPSTEER2["rows"])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-rows", type=int, default=8, help="packed rows per batch (demo.yaml: 8)")
    ap.add_argument("--max-segments", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed train steps")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench_data {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    from rm_jax.data.pipeline import Loader, bundled_tokenizer_path, encode_helpsteer
    from rm_jax.models.hf_io import load_tokenizer

    t = time.perf_counter()
    rows = make_rows(a.rows, a.seed)
    gen_s = time.perf_counter() - t
    chars_p = np.asarray([len(r["prompt"]) for r in rows])
    chars_r = np.asarray([len(r["response"]) for r in rows])
    log(
        f"generated {len(rows)} rows in {gen_s:.1f}s: prompt chars {chars_p.mean():.0f} +- {chars_p.std():.0f}, "
        f"response chars {chars_r.mean():.0f} +- {chars_r.std():.0f}"
    )

    tok = load_tokenizer(bundled_tokenizer_path())
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    t = time.perf_counter()
    enc = encode_helpsteer(rows, tok, a.seq_len, None, "truncate", ATTRS)
    enc_s = time.perf_counter() - t
    lens = np.asarray([len(x) for x in enc.ids])
    total_chars = int(chars_p.sum() + chars_r.sum())
    log(
        f"encode_helpsteer: {enc_s:.1f}s = {len(rows) / enc_s:.0f} rows/s; {lens.sum()} tokens "
        f"({total_chars / max(lens.sum(), 1):.2f} chars/token); truncated {enc.report.truncated}, "
        f"dropped {enc.report.dropped}"
    )

    loader = Loader(enc, a.seq_len, a.max_segments, a.batch_rows, pad_id, packing=True, seed=a.seed)
    t = time.perf_counter()
    n_batches = loader.steps_per_epoch()  # plans the epoch (shuffle + best-fit-decreasing packing)
    plan_s = time.perf_counter() - t
    batch_times = []
    real = slots = 0
    t = time.perf_counter()
    for _ in range(n_batches):
        tb = time.perf_counter()
        b = next(loader)
        batch_times.append(time.perf_counter() - tb)
        real += int((b["segment_ids"] > 0).sum())
        slots += b["segment_ids"].size
    build_s = time.perf_counter() - t
    loader_s = plan_s + build_s
    log(
        f"Loader epoch: plan {plan_s:.2f}s + {n_batches} batches {build_s:.2f}s = "
        f"{len(enc.ids) / loader_s:.0f} rows/s; "
        f"fill {real / slots:.1%}"
    )

    # One train step of the tiny demo model on the same batch shape.
    import jax

    from rm_jax.core.config import LossConfig, TrainConfig
    from rm_jax.engine.train_step import batch_shardings, lr_schedule, make_optimizer, make_train_step, put_batch
    from rm_jax.models.sharding import make_mesh

    cfg = demo_config(len(tok))
    mesh = make_mesh(devices=jax.devices()[:1])
    tc = TrainConfig()
    tx = make_optimizer(tc, 100)
    state, shard = new_train_state(cfg, tx, mesh, a.seed)
    step = jax.jit(
        make_train_step(cfg, LossConfig(), tx, loader.max_segments, lr_schedule(tc, 100), mesh),
        in_shardings=(shard, None),
        out_shardings=(shard, None),
        donate_argnums=0,
    )
    host = {k: v[None] for k, v in next(loader).items() if k != "example_index"}
    sh = batch_shardings(mesh, host, accum=True)
    t = time.perf_counter()
    state, m = step(state, put_batch(host, sh))
    jax.device_get(m)
    compile_s = time.perf_counter() - t
    step_times = []
    for _ in range(a.steps):
        host = {k: v[None] for k, v in next(loader).items() if k != "example_index"}
        t = time.perf_counter()
        state, m = step(state, put_batch(host, sh))
        jax.device_get(m)
        step_times.append(time.perf_counter() - t)
    step_s = statistics.median(step_times)
    batch_s = statistics.median(batch_times)
    rows_per_batch = len(enc.ids) / n_batches
    log(
        f"demo-model train step [{a.batch_rows} x {a.seq_len}]: {step_s:.3f}s (compile {compile_s:.1f}s); "
        f"host batch {batch_s * 1e3:.1f} ms"
    )

    res = {
        "benchmark": "data_pipeline",
        "rows": len(rows),
        "prompts": (len(rows) + 1) // 2,
        "seq_len": a.seq_len,
        "batch_rows": a.batch_rows,
        "max_segments": a.max_segments,
        "text": {
            "generate_s": round(gen_s, 2),
            "prompt_chars_mean": float(chars_p.mean()),
            "prompt_chars_std": float(chars_p.std()),
            "response_chars_mean": float(chars_r.mean()),
            "response_chars_std": float(chars_r.std()),
            "chars_per_token": total_chars / max(int(lens.sum()), 1),
        },
        "tokenizer": "bundled (rm_jax/assets/tokenizer, vocab %d)" % len(tok),
        "encode": {
            "seconds": enc_s,
            "rows_per_s": len(rows) / enc_s,
            "tokens": int(lens.sum()),
            "mean_tokens": float(lens.mean()),
            "truncated": enc.report.truncated,
            "dropped": enc.report.dropped,
        },
        "loader": {
            "plan_s": plan_s,
            "build_s": build_s,
            "batches": n_batches,
            "rows_per_s": len(enc.ids) / loader_s,
            "conversations_per_batch": rows_per_batch,
            "batch_ms_median": batch_s * 1e3,
            "fill": real / slots,
        },
        "pipeline_rows_per_s": len(rows) / (enc_s + loader_s),
        "train_step": {
            "model": "experiments/demo.yaml architecture (hidden 64, 2 layers, 4 heads / 2 kv)",
            "params": cfg.num_params(),
            "step_s": step_s,
            "compile_s": compile_s,
            "conversations_per_s": rows_per_batch / step_s,
        },
        "host_batch_over_step": batch_s / step_s,
        "pipeline_over_train_rows_per_s": (len(rows) / (enc_s + loader_s)) / (rows_per_batch / step_s),
        "epoch_train_s_estimate": n_batches * step_s,
        "environment": environment(),
    }
    res["environment"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(res, default=float))
    else:
        print(
            f"encode {res['encode']['rows_per_s']:.0f} rows/s, loader {res['loader']['rows_per_s']:.0f} rows/s "
            f"({res['loader']['batch_ms_median']:.1f} ms/batch) vs demo train step {step_s * 1e3:.0f} ms "
            f"({res['train_step']['conversations_per_s']:.0f} conversations/s): host batch = "
            f"{res['host_batch_over_step']:.1%} of a step; whole pipeline {res['pipeline_over_train_rows_per_s']:.1f}x "
            f"faster than training consumes rows"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
