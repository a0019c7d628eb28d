"""Write the bundled samples of the yardsticks beside RewardBench 2, made from the bundled HelpSteer2 validation
split (never trained on): rm_jax/assets/sample/{rewardbench,rm_bench,judgebench}.jsonl and
helpsteer3/{train,validation}.jsonl.

* RewardBench 1 format: pairs from the RewardBench 2 sample's non-Ties sets (chosen against the first
  rejected completion, and against a refusal as ``xstest-should-respond``), one subset per section.

* RM-Bench format: per validation prompt, the generator's right statement (chosen) and wrong statement
  (rejected), each in RM-Bench's three styles: concise (the statement), detailed plain (the statement
  with the generator's fillers), detailed markdown (the same as a bolded answer with bullet points).
  Domains are given in turn (chat, code, math, safety-refuse, safety-response) so every domain and the
  pooled safety domain occur; the texts are the sample's, not the domains' own.
* JudgeBench format: the right against the wrong statement (dressed alike), A and B in a seeded random
  order, ``source`` in turn over the four categories' prefixes.
* HelpSteer3-Preference format: each bundled split's own response pairs with the context as a list of
  turns and ``overall_preference`` = clip(helpfulness(response2) - helpfulness(response1), -3, 3) (so
  negative means response 1 is better, and equal labels are ties), domains given in turn.

Deterministic from ``--seed``; ``--check`` reloads every file through rm_jax's loaders.

    python scripts/make_yardstick_samples.py --check
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_rewardbench2_sample as rb2  # noqa: E402

from rm_jax.core.files import write_jsonl  # noqa: E402
from rm_jax.data.conversation import split_prompt  # noqa: E402

OUT = REPO / "rm_jax" / "assets" / "sample"
RMB_DOMAINS = ("chat", "code", "math", "safety-refuse", "safety-response")
JB_SOURCES = ("mmlu-pro-sample", "livebench-reasoning-sample", "livebench-math-sample", "livecodebench-sample")
HS3_DOMAINS = ("general", "stem", "code", "multilingual")


def _styles(rng: random.Random, statement: str) -> list[str]:
    fillers = rng.sample(rb2.gen.FILLERS, 2)
    return [
        statement,
        " ".join([statement, *fillers]),
        f"**Answer:** {statement}\n\n" + "\n".join(f"- {f}" for f in fillers),
    ]


def rm_bench_rows(seed: int) -> list[dict]:
    rng = random.Random(f"{seed}-rm-bench")
    rows = []
    for i, (prompt, right, wrong) in enumerate(rb2.validation_prompts(seed, 200)[:60]):
        rows.append(
            {
                "id": f"sample-{i}",
                "prompt": prompt,
                "chosen": _styles(rng, right),
                "rejected": _styles(rng, wrong),
                "domain": RMB_DOMAINS[i % len(RMB_DOMAINS)],
            }
        )
    return rows


def judgebench_rows(seed: int) -> list[dict]:
    rng = random.Random(f"{seed}-judgebench")
    rows = []
    for i, (prompt, right, wrong) in enumerate(rb2.validation_prompts(seed, 200)[60:140]):
        good, bad = rb2._dress(rng, right), rb2._dress(rng, wrong)
        swap = rng.random() < 0.5
        rows.append(
            {
                "pair_id": f"sample-{i}",
                "original_id": str(i),
                "source": JB_SOURCES[i % len(JB_SOURCES)],
                "question": prompt,
                "response_model": "rm_jax-sample",
                "response_A": bad if swap else good,
                "response_B": good if swap else bad,
                "label": "B>A" if swap else "A>B",
            }
        )
    return rows


# RewardBench 1 subsets for the RewardBench 2 sample's sets (one per section, so every section is scored).
RB1_SUBSETS = {"Focus": "alpacaeval-easy", "Factuality": "llmbar-natural", "Math": "math-prm"}


def rewardbench_rows() -> list[dict]:
    """RewardBench 1 pairs from the bundled RewardBench 2 sample: each non-Ties set's chosen against its first
    rejected completion (subset by RB1_SUBSETS), and against a refusal among its rejected ones as
    ``xstest-should-respond`` (safety: a question that should be answered)."""
    refusals = set(rb2.gen.REFUSALS)
    rows = []
    for line in (OUT / "rewardbench2.jsonl").read_text().splitlines():
        s = json.loads(line)
        if s["subset"] not in RB1_SUBSETS:
            continue
        pairs = [(RB1_SUBSETS[s["subset"]], s["rejected"][0])]
        pairs += [("xstest-should-respond", r) for r in s["rejected"][:1] + s["rejected"][1:] if r in refusals][:1]
        for subset, rejected in pairs:
            rows.append(
                {
                    "id": len(rows),
                    "prompt": s["prompt"],
                    "chosen": s["chosen"][0],
                    "rejected": rejected,
                    "subset": subset,
                }
            )
    return rows


def helpsteer3_rows(split: str) -> list[dict]:
    with gzip.open(OUT / f"{split}.jsonl.gz", "rt") as f:
        hs2 = [json.loads(line) for line in f]
    rows = []
    for k in range(0, len(hs2) - 1, 2):
        a, b = hs2[k], hs2[k + 1]
        if a["prompt"] != b["prompt"]:
            continue
        pref = max(-3, min(3, int(b["helpfulness"]) - int(a["helpfulness"])))
        rows.append(
            {
                "domain": HS3_DOMAINS[len(rows) % len(HS3_DOMAINS)],
                "language": "english",
                "context": split_prompt(a["prompt"]),
                "response1": a["response"],
                "response2": b["response"],
                "overall_preference": pref,
                "individual_preference": [],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="reload the files through rm_jax's loaders")
    args = ap.parse_args(argv)
    files = {
        "rewardbench.jsonl": rewardbench_rows(),
        "rm_bench.jsonl": rm_bench_rows(args.seed),
        "judgebench.jsonl": judgebench_rows(args.seed),
        "helpsteer3/train.jsonl": helpsteer3_rows("train"),
        "helpsteer3/validation.jsonl": helpsteer3_rows("validation"),
    }
    (OUT / "helpsteer3").mkdir(exist_ok=True)
    for name, rows in files.items():
        write_jsonl(str(OUT / name), rows)
        print(f"wrote {len(rows)} rows to {OUT / name}")
    if args.check:
        from rm_jax.data.helpsteer3_pairs import load_helpsteer3
        from rm_jax.data.judgebench_pairs import load_judgebench
        from rm_jax.data.rm_bench_rows import load_rm_bench

        print(f"RM-Bench: {len(load_rm_bench('bundled'))} rows; JudgeBench: {len(load_judgebench('bundled'))} pairs")
        for split in ("train", "validation"):
            print(f"HelpSteer3 {split}: {load_helpsteer3('bundled', split).report()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
