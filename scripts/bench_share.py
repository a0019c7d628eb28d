"""Prefix sharing: shared vs unshared scoring of the same rows, in one run, on four shapes.

One rm_jax reward model (the hidden-512 Llama shape of bench_common, float32, random init) scores the
same token sequences twice through ``Scorer.predict`` (the ``rm-jax score`` / ``rm-jax eval`` path):
``share=False`` (every response with its whole prompt) and ``share=True`` (each prompt once, its
responses after it: rm_jax.data.prefix_sharing). Shapes (random ids, lengths drawn around the stated
means):

  helpsteer2    two responses per prompt, HelpSteer2's lengths (~150-token prompts, ~250-token responses)
  rb2           RewardBench 2-shaped sets: a 600-900-token prompt, four 40-120-token completions
  long_pairs    pairs after a 1k-token prompt, 256-token responses
  groups8       SteerLM 2.0 groups: eight 200-token responses after a 300-token prompt
  groups8_long  SteerLM 2.0 groups after a long prompt: eight 150-token responses after a 1000-token prompt
  short         pairs after a 20-token prompt, 200-token responses (sharing must not be slower)

Method: each side runs once to compile and warm up; then timed passes alternate shared / unshared so load
from other processes hits both; the median pass is used. The two sides' predictions are compared (max
abs difference, must stay below 1e-5 x max |score|) so a fast wrong answer cannot pass. A third side runs
``share="auto"`` (the eval / score default: shares only where it saves >= 10% of the tokens). Floors on the
auto side (CPU): rb2 >= 1.5x (the acceptance figure for scoring), short >= 0.95x (noise allowance).

    python scripts/bench_share.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Optional

import numpy as np
from bench_common import bench_model_config, environment, parse_overrides

FLOORS = {"rb2": 1.5, "short": 0.95}
# --train: an epoch of regression steps (examples per second), shared vs unshared; not floored yet (measured).


def train_epochs(cfg, ids, groups, a, repeats: int) -> dict:
    """One epoch of ``make_train_step`` steps over the same examples (a prompt's responses sampled together
    either way, as data.sample_by_prompt does), loaders with share_prompts False and True (``a.shared_steps``):
    steps, rows, time."""
    from bench_train import JaxTrainer

    from rm_jax.data.pipeline import Encoded, Loader

    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    n = len(ids)
    enc = Encoded(
        ids=ids,
        labels=np.zeros((n, cfg.num_labels), np.float32),
        label_mask=np.ones((n, cfg.num_labels), np.float32),
        units=[tuple(m) for m in members.values()],
        source_rows=np.arange(n),
        group=np.asarray(groups),
        strength=np.ones(len(members), np.float32),
    )
    epochs, rows = {}, {}
    for share in (False, True):
        loader = Loader(
            enc,
            a.seq_len,
            a.max_segments,
            a.batch_rows,
            0,
            shuffle=False,
            share_prompts=share,
            shared_steps=a.shared_steps,
        )
        if share and a.shared_steps == "same":  # the run's rows per micro-batch, as rm-jax train fixes them
            loader.fix_shared_rows(loader.steps_per_epoch())
        epochs[share] = [next(loader) for _ in range(loader.steps_per_epoch())]
        rows[share] = int(epochs[share][0]["input_ids"].shape[0])
    # The shared side compiles the prompt-range kernel, as a run with data.share_prompts does.
    trainers = {
        False: JaxTrainer(cfg, a.max_segments),
        True: JaxTrainer(cfg.replace(shared_prompts=True), a.max_segments),
    }
    for share in (False, True):
        trainers[share].step(epochs[share][0])  # compile
    times: dict = {False: [], True: []}
    for _ in range(repeats):
        for share in (False, True):
            times[share].append(sum(trainers[share].step(b) for b in epochs[share]))
    t_plain, t_shared = statistics.median(times[False]), statistics.median(times[True])
    return {
        "shared_steps": a.shared_steps,
        "steps_unshared": len(epochs[False]),
        "steps_shared": len(epochs[True]),
        "rows_per_step_unshared": rows[False],
        "rows_per_step_shared": rows[True],
        "epoch_unshared_s": t_plain,
        "epoch_shared_s": t_shared,
        "examples_per_s_unshared": n / t_plain,
        "examples_per_s_shared": n / t_shared,
        "speedup": t_plain / t_shared,
    }


def shape(name: str, rng: np.random.Generator, n_prompts: int, vocab: int) -> tuple[list[np.ndarray], list[int]]:
    """(token sequences, prompt key of each) for ``n_prompts`` prompts of shape ``name``."""

    def around(mean: int, spread: float = 0.3) -> int:
        return max(1, int(rng.uniform(1 - spread, 1 + spread) * mean))

    spec = {
        "helpsteer2": (lambda: around(150, 0.6), 2, lambda: around(250, 0.6)),
        "rb2": (lambda: int(rng.integers(600, 900)), 4, lambda: int(rng.integers(40, 120))),
        "long_pairs": (lambda: 1024, 2, lambda: 256),
        "groups8": (lambda: around(300), 8, lambda: around(200)),
        "groups8_long": (lambda: around(1000), 8, lambda: around(150)),
        "short": (lambda: 20, 2, lambda: around(200)),
    }[name]
    prompt_len, n_resp, resp_len = spec
    ids, groups = [], []
    for g in range(n_prompts):
        prompt = rng.integers(1, vocab, prompt_len())
        for _ in range(n_resp):
            ids.append(np.concatenate([prompt, rng.integers(1, vocab, resp_len())]).astype(np.int32))
            groups.append(g)
    return ids, groups


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--shapes", default="helpsteer2,rb2,long_pairs,groups8,short")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per shape (default 16, quick 6)")
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per side (default 3, quick 2)")
    ap.add_argument("--batch-rows", type=int, default=4)
    ap.add_argument("--max-segments", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--model", default="shipped", help="DecoderConfig overrides, '+'-joined key=value")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", action="store_true", help="time an epoch of train steps instead of scoring")
    ap.add_argument(
        "--shared-steps",
        choices=["same", "fill"],
        default="same",
        help="--train: data.shared_steps (same: the unshared steps in fewer rows; fill: rows filled shared)",
    )
    a = ap.parse_args(argv)
    n_prompts = a.prompts or (6 if a.quick else 16)
    repeats = a.repeats or (2 if a.quick else 3)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[bench_share {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    import jax

    from rm_jax.engine.scoring import Scorer
    from rm_jax.models import init_params
    from rm_jax.models.sharding import make_mesh

    cfg = bench_model_config(**parse_overrides(a.model))
    mesh = make_mesh(devices=jax.devices()[:1])
    params = init_params(cfg, mesh, a.seed)
    scorer = Scorer(cfg, params, mesh, pad_id=0)
    rng = np.random.default_rng(a.seed)
    results, ok = {}, True
    for name in a.shapes.split(","):
        ids, groups = shape(name, rng, n_prompts, cfg.vocab_size)
        if a.train:
            results[name] = r = train_epochs(cfg, ids, groups, a, repeats)
            log(
                f"{name} (train, {a.shared_steps}): {r['steps_unshared']} -> {r['steps_shared']} steps an epoch of "
                f"{r['rows_per_step_unshared']} -> {r['rows_per_step_shared']} rows; "
                f"{r['epoch_unshared_s']:.2f}s -> {r['epoch_shared_s']:.2f}s: {r['speedup']:.2f}x"
            )
            continue

        def run(share) -> tuple[float, np.ndarray]:
            t = time.perf_counter()
            out = scorer.predict(
                ids, a.seq_len, a.batch_rows, a.max_segments, progress=False, groups=groups, share=share
            )
            return time.perf_counter() - t, out

        _, plain = run(False)
        _, shared = run(True)
        rep = scorer.share_report
        run("auto")
        auto_on = scorer.share_report is not None  # what rm-jax eval / score do by default
        times: dict = {False: [], True: [], "auto": []}
        for _ in range(repeats):
            for share in (False, True, "auto"):
                times[share].append(run(share)[0])
        diff = float(np.abs(shared - plain).max())
        scale = max(1.0, float(np.abs(plain).max()))
        t_plain, t_shared = statistics.median(times[False]), statistics.median(times[True])
        t_auto = statistics.median(times["auto"])
        speedup, auto_speedup = t_plain / t_shared, t_plain / t_auto
        floor = FLOORS.get(name)
        passed = diff <= 1e-5 * scale and (floor is None or auto_speedup >= floor)
        ok &= passed
        results[name] = {
            "responses": len(ids),
            "prompts": n_prompts,
            "tokens_unshared": rep.tokens_unshared,
            "tokens_shared": rep.tokens,
            "split_groups": rep.split_groups,
            "unshared_s": t_plain,
            "shared_s": t_shared,
            "speedup": speedup,
            "auto_shares": auto_on,
            "auto_s": t_auto,
            "auto_speedup": auto_speedup,
            "floor": floor,
            "max_abs_diff": diff,
            "passed": passed,
        }
        log(
            f"{name}: {len(ids)} responses, {rep.tokens_unshared} -> {rep.tokens} tokens; unshared {t_plain:.2f}s, "
            f"shared {t_shared:.2f}s: {speedup:.2f}x; auto ({'shares' if auto_on else 'unshared'}) {t_auto:.2f}s: "
            f"{auto_speedup:.2f}x (floor {floor}), max |diff| {diff:.2e}"
        )
    out = {
        "benchmark": "share_train" if a.train else "share",
        "quick": a.quick,
        "variant": a.model,
        "seq_len": a.seq_len,
        "batch_rows": a.batch_rows,
        "max_segments": a.max_segments,
        "shapes": results,
        "environment": environment(),
        "passed": ok,
    }
    if a.json:
        print(json.dumps(out, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
