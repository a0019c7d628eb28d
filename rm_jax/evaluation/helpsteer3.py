"""HelpSteer3-Preference pairwise accuracy: the share of pairs whose chosen response (by the sign of
``overall_preference``, see :mod:`rm_jax.data.helpsteer3_pairs`) gets the strictly higher reward; an exact tie
counts as wrong, as RewardBench's pairs do. Overall, per domain and per language; ties in the labels
(preference 0) are left out and counted."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _by(keys: Sequence[str], right: np.ndarray) -> dict[str, float]:
    keys_arr = np.asarray(keys)
    return {k: float(right[keys_arr == k].mean()) for k in sorted(set(keys))}


def score_helpsteer3(
    rows: Sequence[dict], chosen: np.ndarray, rejected: np.ndarray, ties_left_out: int = 0
) -> dict[str, Any]:
    """Accuracy of rewards ``chosen`` / ``rejected`` (aligned with ``rows``, each with ``domain`` and
    ``language``) overall and per domain and language."""
    chosen, rejected = np.asarray(chosen, np.float64), np.asarray(rejected, np.float64)
    if chosen.shape != (len(rows),) or rejected.shape != (len(rows),):
        raise ValueError(f"expected {len(rows)} rewards per side, got {chosen.shape} and {rejected.shape}")
    right = chosen > rejected
    return {
        "accuracy": float(right.mean()) if len(rows) else None,
        "domains": _by([r["domain"] for r in rows], right),
        "languages": _by([r["language"] for r in rows], right),
        "pairs": len(rows),
        "ties_left_out": int(ties_left_out),
        "reward_ties": int(np.sum(chosen == rejected)),
    }
