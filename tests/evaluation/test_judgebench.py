"""JudgeBench single-game accuracy against a re-implementation of ScalerLab/JudgeBench's reward-model
decision (utils/judges.py) and ``compute_final_metrics`` with ``reverse_order=False`` (utils/metrics.py),
grouped by source prefix as run_judge.py does."""

import numpy as np
import pytest

from rm_jax.data.judgebench_pairs import JudgeBenchPair
from rm_jax.evaluation.judgebench import score_judgebench


def _theirs(pairs, include_fn):
    pairs = [p for p in pairs if include_fn(p)]
    return 100 * sum(p["judgments"][0]["decision"] == p["label"] for p in pairs) / len(pairs)


def test_equals_judgebenchs_single_game_metric_with_exact_ties():
    rng = np.random.default_rng(0)
    sources = ["mmlu-pro-law", "livebench-reasoning", "livebench-math", "livecodebench-easy", "mmlu-pro-math"]
    pairs = [
        JudgeBenchPair(str(i), sources[i % 5], "q", "a", "b", "A>B" if rng.random() < 0.5 else "B>A") for i in range(41)
    ]
    a, b = rng.integers(0, 3, 41).astype(float), rng.integers(0, 3, 41).astype(float)
    assert (a == b).any()  # a tie decides "B>A"
    ours = score_judgebench(pairs, a, b)
    records = [
        {"source": p.source, "label": p.label, "judgments": [{"decision": "A>B" if x > y else "B>A"}]}
        for p, x, y in zip(pairs, a, b)
    ]
    prefixes = {"knowledge": "mmlu-pro", "reasoning": "livebench-reasoning", "math": "livebench-math"}
    prefixes["coding"] = "livecodebench"
    for name, prefix in prefixes.items():
        assert 100 * ours["categories"][name] == pytest.approx(
            _theirs(records, lambda x: x["source"].startswith(prefix)), abs=1e-9
        )
    assert 100 * ours["overall"] == pytest.approx(_theirs(records, lambda x: x["source"].startswith("")), abs=1e-9)
    assert ours["ties"] == int((a == b).sum()) and ours["pairs"] == 41


def test_overall_is_the_micro_average_not_the_mean_of_categories():
    pairs = [JudgeBenchPair("0", "mmlu-pro", "q", "a", "b", "A>B")] + [
        JudgeBenchPair(str(i), "livecodebench", "q", "a", "b", "B>A") for i in range(1, 4)
    ]
    out = score_judgebench(pairs, np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.0, 0.0, 0.0, 0.0]))
    assert out["categories"] == {"knowledge": 1.0, "coding": 0.0}
    assert out["overall"] == 0.25
