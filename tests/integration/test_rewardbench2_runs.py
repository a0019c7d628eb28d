"""RewardBench 2 in a real (tiny) run and sweep: ``eval.rewardbench2`` scores the kept checkpoint into
eval.json and predictions/rewardbench2.jsonl, the sweep table's rb2 columns are those predictions scored
per weighting, and a run whose predictions went missing is re-scored without retraining."""

import csv
import io
import json

import numpy as np
import pytest
import yaml

from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.data.rewardbench2_sets import bundled_rewardbench2_path, load_rewardbench2
from rm_jax.sweeps.runner import sweep
from tests.evaluation.test_rewardbench2 import plain_run_v2
from tests.helpers import tiny_base

pytestmark = pytest.mark.slow  # trains


def test_run_and_sweep_score_rewardbench2(data_files, tmp_path):
    # a cut of the bundled sample: every subset, Ties prompts with both kinds
    sets_path = tmp_path / "rb2.jsonl"
    lines = open(bundled_rewardbench2_path()).read().splitlines()
    keep = lines[:12] + [ln for ln in lines[60:] if json.loads(ln)["subset"] != "Ties"][:24]
    sets_path.write_text("\n".join(keep) + "\n")
    base = tiny_base(data_files, steps=2, every=2)
    base["eval"] = {"rewardbench2": str(sets_path)}
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump({"base": base, "sweep": {"eval.reward_weights": ["70b-rewardbench", "goodness"]}}))
    sd = tmp_path / "s"
    trained = []

    def counting(cfg):
        from rm_jax.training.run import train

        trained.append(cfg.run_dir)
        return train(cfg)

    assert sweep(str(exp), [f"sweep_dir={sd}"], trainer=counting, out=io.StringIO()) == 0
    run_dir = sd / next(p.name for p in sd.iterdir() if (p / "DONE").exists())
    ev = json.loads((run_dir / "eval.json").read_text())["rewardbench2"]
    assert ev["sets"] == 36 and set(ev["subsets"]) == {"Factuality", "Focus", "Math", "Ties"}
    recs = [json.loads(line) for line in open(run_dir / "predictions" / "rewardbench2.jsonl")]
    sets = load_rewardbench2(str(sets_path))
    assert len(recs) == sum(len(s.completions) for s in sets)
    attrs = np.array([[r["attributes"][a] for a in ATTRIBUTES] for r in recs])
    rows_ = [{"id": s.id, "subset": s.subset, "num_correct": s.num_correct} for s in sets]
    bounds = np.cumsum([0] + [len(s.completions) for s in sets])

    def scored(w):
        return plain_run_v2(rows_, [list(attrs[a:b] @ w) for a, b in zip(bounds[:-1], bounds[1:])])

    assert ev["score"] == pytest.approx(scored(np.asarray(REWARD_PRESETS["70b-rewardbench"]))[0], abs=1e-9)
    with open(sd / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    for row in table:
        score, subsets = scored(np.asarray(REWARD_PRESETS[row["reward_weights"]]))
        assert float(row["rb2_score"]) == pytest.approx(score, abs=1e-6)
        assert float(row["rb2_ties"]) == pytest.approx(subsets["Ties"], abs=1e-6)
    assert (sd / "plots" / "rb2_score-goodness.png").exists()

    # predictions lost: the next sweep scores them again from the kept checkpoint, no training
    (run_dir / "predictions" / "rewardbench2.jsonl").unlink()
    n = len(trained)
    assert sweep(str(exp), [f"sweep_dir={sd}"], trainer=counting, out=io.StringIO()) == 0
    assert len(trained) == n and (run_dir / "predictions" / "rewardbench2.jsonl").exists()


def test_run_and_sweep_score_rm_bench_and_judgebench(data_files, tmp_path):
    """eval.rm_bench / eval.judgebench score the kept checkpoint into eval.json and predictions/<name>.jsonl;
    the sweep's rmb_ / jb_ columns are those predictions scored per weighting by the authors' rules
    (re-implemented in tests/evaluation); a member whose predictions went missing is re-scored, not retrained."""
    from tests.evaluation.test_judgebench import _theirs as their_judgebench_metric
    from tests.evaluation.test_rm_bench import _their_compute_accuracy

    base = tiny_base(data_files, steps=2, every=2)
    base["eval"] = {"rm_bench": "bundled", "judgebench": "bundled"}
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump({"base": base, "sweep": {"eval.reward_weights": ["70b-rewardbench", "goodness"]}}))
    sd = tmp_path / "s"
    trained = []

    def counting(cfg):
        from rm_jax.training.run import train

        trained.append(cfg.run_dir)
        return train(cfg)

    assert sweep(str(exp), [f"sweep_dir={sd}"], trainer=counting, out=io.StringIO()) == 0
    run_dir = sd / next(p.name for p in sd.iterdir() if (p / "DONE").exists())
    ev = json.loads((run_dir / "eval.json").read_text())
    assert set(ev["rm_bench"]["domains"]) == {"chat", "code", "math", "safety"} and ev["judgebench"]["pairs"] == 80

    def reward(name, preset):
        recs = [json.loads(line) for line in open(run_dir / "predictions" / f"{name}.jsonl")]
        w = np.asarray(REWARD_PRESETS[preset])
        return recs, [np.asarray([r["attributes"][a] for a in ATTRIBUTES]) @ w for r in recs]

    with open(sd / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2
    for row in table:
        recs, r = reward("rm_bench", row["reward_weights"])
        results = [
            {
                "domain": recs[6 * i]["domain"],
                "score_chosen": r[6 * i : 6 * i + 3],
                "score_rejected": r[6 * i + 3 : 6 * i + 6],
            }
            for i in range(len(recs) // 6)
        ]
        assert float(row["rmb_overall"]) == pytest.approx(_their_compute_accuracy(results)["total_avg_acc"], abs=1e-6)
        recs, r = reward("judgebench", row["reward_weights"])
        decided = [
            {"source": recs[2 * i]["source"], "label": recs[2 * i]["label"],
             "judgments": [{"decision": "A>B" if r[2 * i] > r[2 * i + 1] else "B>A"}]}
            for i in range(len(recs) // 2)
        ]  # fmt: skip
        assert 100 * float(row["jb_overall"]) == pytest.approx(
            their_judgebench_metric(decided, lambda x: True), abs=1e-6
        )
    (run_dir / "predictions" / "judgebench.jsonl").unlink()
    n = len(trained)
    assert sweep(str(exp), [f"sweep_dir={sd}"], trainer=counting, out=io.StringIO()) == 0
    assert len(trained) == n and (run_dir / "predictions" / "judgebench.jsonl").exists()
