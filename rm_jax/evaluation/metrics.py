"""Metrics of multi-attribute predictions: per-attribute regression stats and HelpSteer2 pairwise
accuracy. Pure numpy/scipy, from predictions alone (no model), so it runs without an accelerator.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Hashable, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

from rm_jax.core.attributes import ATTRIBUTES, WeightSpec, resolve_reward_weights
from rm_jax.evaluation.weights import weight_sets

LABEL_MIN = 0.0
LABEL_MAX = 4.0
STAT_KEYS = ("mse", "rmse", "mae", "pearson", "spearman")


def _as_2d(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, A]; got shape {arr.shape}")
    return arr


def _as_1d(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N]; got shape {arr.shape}")
    return arr


def _finite_or_none(x: float) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def _correlation(fn, a: np.ndarray, b: np.ndarray) -> Optional[float]:
    # Correlation is undefined for <2 points or constant input; scipy either raises
    # or warns and returns NaN there, and a report must not crash on either.
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fn(a, b)[0]
    return _finite_or_none(r)


def _regression_stats(p: np.ndarray, t: np.ndarray) -> dict[str, Optional[float]]:
    if p.size == 0:
        return {k: None for k in STAT_KEYS}
    err = p - t
    mse = float(np.mean(err**2))
    return {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": float(np.mean(np.abs(err))),
        "pearson": _correlation(stats.pearsonr, p, t),
        "spearman": _correlation(stats.spearmanr, p, t),
    }


def round_predictions(pred: np.ndarray) -> np.ndarray:
    """Round to the nearest label (halves go up, so 2.5 -> 3) and clip to 0..4."""
    # floor(x + 0.5) rather than np.rint: banker's rounding would send 2.5 to 2 but 3.5 to 4.
    return np.clip(np.floor(np.asarray(pred, dtype=np.float64) + 0.5), LABEL_MIN, LABEL_MAX)


def attribute_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    mask: Optional[np.ndarray] = None,
    names: Sequence[str] = ATTRIBUTES,
) -> dict[str, dict]:
    """Per attribute, over rows whose mask is set: n, mse, rmse, mae, pearson, spearman,
    and the same five stats under "rounded" for predictions rounded and clipped to 0..4.

    Undefined statistics (no rows, <2 rows or constant input for correlations) are None.
    """
    pred = _as_2d("pred", pred)
    target = _as_2d("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    if mask is None:
        present = np.ones(pred.shape, dtype=bool)
    else:
        present = np.asarray(mask) != 0
        if present.shape != pred.shape:
            raise ValueError(f"mask shape {present.shape} != pred shape {pred.shape}")
    names = list(names)
    if len(names) != pred.shape[1]:
        raise ValueError(f"{len(names)} attribute names for {pred.shape[1]} prediction columns")

    rounded = round_predictions(pred)
    out: dict[str, dict] = {}
    for j, name in enumerate(names):
        rows = present[:, j]
        p, r, t = pred[rows, j], rounded[rows, j], target[rows, j]
        entry: dict[str, Any] = {"n": int(rows.sum())}
        entry.update(_regression_stats(p, t))
        entry["rounded"] = _regression_stats(r, t)
        out[name] = entry
    return out


def rewards_from_attributes(pred: np.ndarray, weights: WeightSpec, names: Sequence[str] = ATTRIBUTES) -> np.ndarray:
    """Scalar reward per row: pred [N, A] (columns named ``names``) @ the weights matched to ``names`` by name
    (preset name, W.json, mapping; or a list / "a,b,..." string in ``names``' order)."""
    pred = _as_2d("pred", pred)
    if len(names) != pred.shape[1]:
        raise ValueError(f"{len(names)} attribute names for {pred.shape[1]} prediction columns")
    w = resolve_reward_weights(weights, names)
    return pred @ w


def pairwise_accuracy(
    rewards: np.ndarray,
    helpfulness: np.ndarray,
    pair_ids: Sequence[Hashable],
) -> dict[str, Any]:
    """Share of prompt pairs where the more helpful response gets the strictly higher reward.

    Groups of a size other than 2 are skipped and counted (n_skipped_groups); pairs with
    equal helpfulness are left out and counted (n_label_ties). A reward tie is wrong.
    """
    rewards = _as_1d("rewards", rewards)
    helpfulness = _as_1d("helpfulness", helpfulness)
    pair_ids = list(pair_ids)
    if not (len(rewards) == len(helpfulness) == len(pair_ids)):
        raise ValueError(
            f"length mismatch: rewards {len(rewards)}, helpfulness {len(helpfulness)}, pair_ids {len(pair_ids)}"
        )

    groups: dict[Hashable, list[int]] = {}
    for i, pid in enumerate(pair_ids):
        groups.setdefault(pid, []).append(i)

    n_pairs = n_correct = n_ties = n_skipped = 0
    for rows in groups.values():
        if len(rows) != 2:
            n_skipped += 1
            continue
        a, b = rows
        if helpfulness[a] == helpfulness[b]:
            n_ties += 1
            continue
        better, worse = (a, b) if helpfulness[a] > helpfulness[b] else (b, a)
        n_pairs += 1
        n_correct += int(rewards[better] > rewards[worse])
    return {
        "accuracy": n_correct / n_pairs if n_pairs else None,
        "n_pairs": n_pairs,
        "n_correct": n_correct,
        "n_label_ties": n_ties,
        "n_skipped_groups": n_skipped,
    }


def helpsteer_report(
    pred: np.ndarray,
    target: np.ndarray,
    mask: Optional[np.ndarray],
    pair_ids: Sequence[Hashable],
    weights: Mapping[str, WeightSpec],
    names: Sequence[str] = ATTRIBUTES,
) -> dict[str, Any]:
    """Per-attribute metrics plus pairwise accuracy for each named weight spec.

    Pairs are judged by the ``helpfulness`` column (no pairwise result without one). Rows whose
    helpfulness label is masked out are dropped before pairing, so their pair shows up in
    n_skipped_groups.
    """
    pred = _as_2d("pred", pred)
    target = _as_2d("target", target)
    pair_ids = list(pair_ids)
    if len(pair_ids) != pred.shape[0]:
        raise ValueError(f"{len(pair_ids)} pair_ids for {pred.shape[0]} prediction rows")
    per_attribute = attribute_metrics(pred, target, mask, names)  # also validates shapes
    if "helpfulness" not in names:
        return {"per_attribute": per_attribute, "pairwise": {}}
    h = list(names).index("helpfulness")
    has_help = np.ones(pred.shape[0], dtype=bool) if mask is None else np.asarray(mask)[:, h] != 0
    w = {name: resolve_reward_weights(spec, names) for name, spec in weights.items()}
    return {"per_attribute": per_attribute, "pairwise": pairwise_by_weights(pred, target[:, h], has_help, pair_ids, w)}


def pairwise_by_weights(
    pred: np.ndarray,
    helpfulness: np.ndarray,
    has_help: np.ndarray,
    pair_ids: Sequence[Hashable],
    weights: Mapping[str, np.ndarray],
) -> dict[str, dict]:
    """:func:`pairwise_accuracy` of the reward ``pred @ w`` for each named weight vector, over the rows
    whose helpfulness label is present (a pair with a missing one counts as a skipped group)."""
    pred = _as_2d("pred", pred)
    keep = np.asarray(has_help, bool)
    kept_ids = [pid for pid, k in zip(pair_ids, keep) if k]
    target = np.asarray(helpfulness, np.float64)[keep]
    return {
        name: pairwise_accuracy((pred @ np.asarray(w, np.float64))[keep], target, kept_ids)
        for name, w in weights.items()
    }


def helpsteer_metrics(
    pred: np.ndarray,
    attributes: Sequence[str],
    labels: np.ndarray,
    label_mask: np.ndarray,
    groups: Sequence[int],
    weights: WeightSpec,
) -> dict[str, Any]:
    """Metrics of predictions ``pred`` [N, len(attributes)] against HelpSteer2 ``labels`` [N, 5]
    (columns in :data:`ATTRIBUTES` order, ``label_mask`` 1 where present).

    ``per_attribute``: every model attribute that is a HelpSteer2 attribute. ``pairwise``: per
    weight set (every preset plus ``weights``: :func:`rm_jax.evaluation.weights.weight_sets`),
    accuracy on prompt groups of exactly two rows with different helpfulness; rows whose
    helpfulness label is missing are left out (their group is then counted as skipped).
    """
    pred = np.asarray(pred, np.float64)
    labels = np.asarray(labels, np.float64)
    label_mask = np.asarray(label_mask) != 0
    model_cols = [j for j, a in enumerate(attributes) if a in ATTRIBUTES]
    label_cols = [ATTRIBUTES.index(attributes[j]) for j in model_cols]
    per_attribute = (
        attribute_metrics(
            pred[:, model_cols],
            labels[:, label_cols],
            label_mask[:, label_cols],
            names=[attributes[j] for j in model_cols],
        )
        if model_cols
        else {}
    )
    h = ATTRIBUTES.index("helpfulness")
    pairwise = pairwise_by_weights(
        pred, labels[:, h], label_mask[:, h], list(np.asarray(groups).tolist()), weight_sets(weights, attributes)
    )
    return {"per_attribute": per_attribute, "pairwise": pairwise}
