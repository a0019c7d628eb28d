"""JudgeBench accuracy for a reward model, by the rules of ScalerLab/JudgeBench: the reward-model judges
in ``utils/judges.py`` score each response alone and decide ``"A>B" if score_A > score_B else "B>A"``
(an exact tie is ``"B>A"``); RMs run ``--single_game`` (one order), whose metric in
``utils/metrics.py`` ``compute_final_metrics`` is the share of pairs whose decision equals the label.
``run_judge.py`` reports it per ``source`` prefix and overall over all pairs (a micro-average, not the
mean of the categories). Scores here are fractions; JudgeBench prints percentages.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rm_jax.data.judgebench_pairs import CATEGORIES, JudgeBenchPair


def decisions(score_a: np.ndarray, score_b: np.ndarray) -> list[str]:
    return ["A>B" if a > b else "B>A" for a, b in zip(np.asarray(score_a, np.float64), np.asarray(score_b, np.float64))]


def score_judgebench(pairs: Sequence[JudgeBenchPair], score_a: np.ndarray, score_b: np.ndarray) -> dict[str, Any]:
    """JudgeBench's single-game accuracy overall and per category for rewards of responses A and B."""
    score_a, score_b = np.asarray(score_a, np.float64), np.asarray(score_b, np.float64)
    if score_a.shape != (len(pairs),) or score_b.shape != (len(pairs),):
        raise ValueError(f"expected {len(pairs)} scores per side, got {score_a.shape} and {score_b.shape}")
    right = np.asarray([d == p.label for d, p in zip(decisions(score_a, score_b), pairs)], bool)
    cats = np.asarray([p.category or "" for p in pairs])
    categories, counts = {}, {}
    for name in CATEGORIES.values():
        sel = cats == name
        if sel.any():
            categories[name], counts[name] = float(right[sel].mean()), int(sel.sum())
    out: dict[str, Any] = {
        "overall": float(right.mean()) if len(pairs) else None,
        "categories": categories,
        "category_pairs": counts,
        "pairs": len(pairs),
        "ties": int(np.sum(score_a == score_b)),
    }
    other = int(np.sum(cats == ""))
    if other:
        out["uncategorised_pairs"] = other  # in overall, in no category: run_judge.py does the same
    return out
