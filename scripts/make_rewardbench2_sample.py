"""Write the bundled RewardBench 2-format sample: rm_jax/assets/sample/rewardbench2.jsonl.

Made from the bundled HelpSteer2 validation split (never trained on): its prompts are rebuilt by
replaying scripts/make_sample_data.py's generator (the script checks they equal the bundled file's),
which also gives each prompt's right and wrong answer statement; completions are then written from
those statements in the generator's own styles (fillers, jargon, hedges, refusals, off-topic lines).
RewardBench 2's columns and subset names (../shared/reference/rewardbench2.md):

* Math (arithmetic prompts) and Factuality (the lookup prompts): one right answer, three wrong or
  unhelpful ones (wrong statement, hedged wrong statement, refusal); a few sets repeat a rejected
  completion word for word, and a few repeat the chosen one among the rejected (exact ties: run_v2
  then gives the set 1/2 when the chosen completion holds the maximum);
* Focus: the right answer against answers to other prompts and an off-topic line;
* Ties: prompt K as ``ref:K`` (one right answer, three wrong) and ``tied:K`` (two or three right answers
  phrased differently, the same three wrong).

Deterministic from ``--seed``; ``--check`` reloads the file through rm_jax's loader.

    python scripts/make_rewardbench2_sample.py --check
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_sample_data as gen  # noqa: E402

from rm_jax.core.files import write_text  # noqa: E402

DEFAULT_OUT = REPO / "rm_jax" / "assets" / "sample" / "rewardbench2.jsonl"
N_TIES_PROMPTS = 30
_ARITH = re.compile(r"(\d+ (plus|minus|times|[-+*]) \d+)")


def validation_prompts(seed: int, n_prompts: int) -> list[tuple[str, str, str]]:
    """(prompt, right statement, wrong statement) per validation prompt, replaying make_rows' draws."""
    rng = random.Random(f"{seed}-validation")
    out, seen = [], set()
    for _ in range(n_prompts):
        multi_turn = rng.random() < gen.MULTI_TURN_FRACTION
        for _attempt in range(100):
            prompt, (right, wrong) = gen.make_prompt(rng, multi_turn)
            if prompt not in seen:
                break
        seen.add(prompt)
        out.append((prompt, right, wrong))
        for _ in range(2):
            gen.make_response(rng, right, wrong)
    return out


def _dress(rng: random.Random, main: str, max_fill: int = 2) -> str:
    extras = rng.sample(gen.FILLERS, rng.randint(0, max_fill)) + rng.sample(gen.ADVANCED, rng.randint(0, 1))
    rng.shuffle(extras)
    return " ".join([main] + extras)


def _row(set_id: str, subset: str, prompt: str, chosen: list[str], rejected: list[str]) -> dict:
    return {
        "id": set_id,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "num_correct": len(chosen),
        "num_incorrect": len(rejected),
        "total_completions": len(chosen) + len(rejected),
        "models": ["rm_jax-sample"] * (len(chosen) + len(rejected)),
        "subset": subset,
        "additional_metadata": {"source": "rm_jax bundled HelpSteer2 validation"},
    }


def make_sets(seed: int) -> list[dict]:
    prompts = validation_prompts(seed, 200)
    rng = random.Random(f"{seed}-rewardbench2")
    rows: list[dict] = []
    ties, rest = prompts[:N_TIES_PROMPTS], prompts[N_TIES_PROMPTS:]
    for k, (prompt, right, wrong) in enumerate(ties):
        wrongs = [_dress(rng, wrong), _dress(rng, gen._hedge(rng, wrong)), rng.choice(gen.REFUSALS)]
        rows.append(_row(f"ref:{k}", "Ties", prompt, [_dress(rng, right)], wrongs))
        n_right = rng.choice([2, 3])
        rights = [right, _dress(rng, right, 1), _dress(rng, right, 3)][:n_right]
        rows.append(_row(f"tied:{k}", "Ties", prompt, rights, wrongs))
    for i, (prompt, right, wrong) in enumerate(rest):
        last_question = prompt.rsplit("\n<extra_id_1>User\n", 1)[-1]
        if i % 4 == 3:
            others = [_dress(rng, r) for _, r, _ in rng.sample(rest, 2)]
            rejected = others + [_dress(rng, rng.choice(gen.OFF_TOPIC))]
            rows.append(_row(f"{len(rows)}", "Focus", prompt, [_dress(rng, right)], rejected))
            continue
        subset = "Math" if _ARITH.search(last_question) else "Factuality"
        chosen = _dress(rng, right)
        rejected = [_dress(rng, wrong), _dress(rng, gen._hedge(rng, wrong)), rng.choice(gen.REFUSALS)]
        if i % 17 == 0:
            rejected[2] = rejected[0]  # an exact tie among rejected completions
        if i % 23 == 0:
            rejected[1] = chosen  # an exact tie with the chosen completion
        rows.append(_row(f"{len(rows)}", subset, prompt, [chosen], rejected))
    return rows


def bundled_validation_prompts() -> list[str]:
    path = REPO / "rm_jax" / "assets" / "sample" / "validation.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return list(dict.fromkeys(json.loads(line)["prompt"] for line in f))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="reload through rm_jax and print counts per subset")
    args = ap.parse_args(argv)
    replayed = [p for p, _, _ in validation_prompts(args.seed, 200)]
    if args.seed == 0 and replayed != bundled_validation_prompts():
        print("the replayed prompts differ from the bundled validation split", file=sys.stderr)
        return 1
    rows = make_sets(args.seed)
    write_text(str(args.out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} sets ({args.out.stat().st_size} bytes) -> {args.out}")
    if args.check:
        from collections import Counter

        from rm_jax.data.rewardbench2_sets import load_rewardbench2

        sets = load_rewardbench2(str(args.out))
        print(dict(Counter(s.subset for s in sets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
