"""Metrics of multi-attribute predictions: per-attribute regression stats, agreement with the integer
labels (quadratic-weighted kappa), calibration of per-level probabilities (NLL, ECE) and HelpSteer2
pairwise accuracy. Pure numpy/scipy, from predictions alone (no model), so it runs without an accelerator.
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
LEVELS = 5  # HelpSteer2 labels are the integers 0..4
ECE_BINS = 15  # Guo et al. 2017, "On Calibration of Modern Neural Networks"
NLL_FLOOR = 1e-12  # a zero probability on the true level costs -log(1e-12) ~ 27.6 nats, not inf
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


def level_labels(labels: Any, mask: Optional[Any] = None, levels: int = LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """``(ints, keep)`` of labels of any shape: ``keep`` is True where the mask is set (default: everywhere)
    and the label is an integer level ``0..levels-1`` (3.0 is one; 2.5, -100, NaN are not); ``ints`` holds
    those labels as int64 and 0 elsewhere (do not read it there).

    The kappa, NLL and ECE below leave out present labels that are not a level; their number is
    ``(present & ~keep).sum()`` and a report shows it (``qwk_excluded`` in :func:`attribute_metrics`).
    """
    t = np.asarray(labels, dtype=np.float64)
    present = np.ones(t.shape, dtype=bool) if mask is None else np.asarray(mask) != 0
    if present.shape != t.shape:
        raise ValueError(f"mask shape {present.shape} != labels shape {t.shape}")
    with np.errstate(invalid="ignore"):
        is_level = np.isfinite(t) & (t == np.floor(t)) & (t >= 0) & (t <= levels - 1)
    keep = present & is_level
    return np.where(keep, t, 0.0).astype(np.int64), keep


def _kappa(t: np.ndarray, r: np.ndarray, levels: int) -> Optional[float]:
    """Quadratic-weighted kappa of two int arrays of levels 0..levels-1 (weights (i-j)^2 on the levels
    themselves, so a level nobody used still sets the distances)."""
    if t.size == 0:
        return None
    observed = np.zeros((levels, levels), dtype=np.float64)
    np.add.at(observed, (t, r), 1.0)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / t.size
    i = np.arange(levels)
    w = (i[:, None] - i[None, :]) ** 2.0
    chance = float((w * expected).sum())
    # 0 only when labels and predictions all sit on one and the same level: agreement beyond chance is 0/0
    return None if chance == 0.0 else 1.0 - float((w * observed).sum()) / chance


def quadratic_weighted_kappa(
    labels_int: Any, preds: Any, mask: Optional[Any] = None, levels: int = LEVELS
) -> list[Optional[float]]:
    """Per attribute (column of ``[N, A]`` arrays), Cohen's kappa with quadratic weights between the integer
    labels and the predictions rounded to the nearest level (halves up, as :func:`round_predictions`) and
    clipped to ``0..levels-1``: ``1 - sum(W*O) / sum(W*E)`` with ``O`` the levels x levels confusion counts,
    ``E`` the outer product of its marginals over N and ``W[i, j] = (i - j)^2``.

    Rows whose mask is 0 are left out, and so are present labels that are not a level (see
    :func:`level_labels`; count them there). None where kappa is undefined: no rows, labels and predictions
    all on one level, or a non-finite prediction among the rows.
    """
    t = _as_2d("labels_int", labels_int)
    p = _as_2d("preds", preds)
    if p.shape != t.shape:
        raise ValueError(f"preds shape {p.shape} != labels shape {t.shape}")
    ints, keep = level_labels(t, mask, levels)
    rounded = np.clip(np.floor(p + 0.5), 0, levels - 1)
    out: list[Optional[float]] = []
    for j in range(t.shape[1]):
        rows = keep[:, j]
        r = rounded[rows, j]
        out.append(_kappa(ints[rows, j], r.astype(np.int64), levels) if np.all(np.isfinite(r)) else None)
    return out


def _level_probs(probs: Any, labels_int: Any, mask: Optional[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``probs`` [n, K] (checked to be distributions) and their labels, for the labels that are levels."""
    q = _as_2d("probs", probs)
    y = _as_1d("labels_int", labels_int)
    if len(y) != len(q):
        raise ValueError(f"{len(y)} labels for {len(q)} rows of probs")
    bad = ~np.isfinite(q).all(axis=1) | (q < 0).any(axis=1) | (np.abs(q.sum(axis=1) - 1.0) > 1e-3)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"probs row {i} is not a distribution over {q.shape[1]} levels: {q[i].tolist()}")
    ints, keep = level_labels(y, mask, q.shape[1])
    return q[keep], ints[keep]


def level_nll(probs: Any, labels_int: Any, mask: Optional[Any] = None) -> Optional[float]:
    """Mean negative log-likelihood (nats) of the label's level under per-row level probabilities
    ``probs`` [n, K] (rows sum to 1, within 1e-3): ``mean(-log(max(probs[i, y_i], 1e-12)))``.

    Rows with mask 0 and labels that are not a level 0..K-1 are left out (count them with
    :func:`level_labels`); None when no row is left.
    """
    q, y = _level_probs(probs, labels_int, mask)
    if not len(y):
        return None
    return float(np.mean(-np.log(np.maximum(q[np.arange(len(y)), y], NLL_FLOOR))))


def expected_calibration_error(
    probs: Any, labels_int: Any, mask: Optional[Any] = None, bins: int = ECE_BINS
) -> Optional[float]:
    """Expected calibration error of the top label, as Guo et al. 2017: each row's confidence is its largest
    probability and its prediction that level (the lowest on ties); rows fall in ``bins`` equal-width bins
    ``(m/bins, (m+1)/bins]`` of confidence (the first also holds 0), and
    ``ECE = sum_b |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|``, from 0 (calibrated) to 1.

    Rows and labels are taken as in :func:`level_nll` (mask, levels only); None when no row is left.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    q, y = _level_probs(probs, labels_int, mask)
    if not len(y):
        return None
    conf = q.max(axis=1)
    correct = (q.argmax(axis=1) == y).astype(np.float64)
    edges = np.arange(bins + 1) / bins  # m / bins exactly as written, so 0.8 is the top of bin 12 of 15
    b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    total = 0.0
    for m in np.unique(b):
        rows = b == m
        total += rows.sum() * abs(correct[rows].mean() - conf[rows].mean())
    return float(total / len(y))


def level_cross_entropy(probs: Any, labels: Any) -> np.ndarray:
    """-sum_k q_k log p_k [N, A] of level probabilities ``probs`` [N, A, K] against each label's level target
    q (a level's one-hot; a non-integer label split between its two neighbouring levels; labels clipped to
    0..K-1), as a distributional head trains without smoothing (rm_jax.models.heads.target_distribution).
    For integer labels it is the label's NLL; probabilities are floored at 1e-12 as :func:`level_nll`."""
    p = np.asarray(probs, np.float64)
    k = p.shape[-1]
    y = np.clip(np.nan_to_num(np.asarray(labels, np.float64)), 0, k - 1)
    q = np.maximum(0.0, 1.0 - np.abs(np.arange(k) - y[..., None]))
    return -(q * np.log(np.maximum(p, NLL_FLOOR))).sum(axis=-1)


def attribute_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    mask: Optional[np.ndarray] = None,
    names: Sequence[str] = ATTRIBUTES,
    probs: Optional[np.ndarray] = None,
) -> dict[str, dict]:
    """Per attribute, over rows whose mask is set: n, mse, rmse, mae, pearson, spearman,
    and the same five stats under "rounded" for predictions rounded and clipped to 0..4; ``qwk``, the
    quadratic-weighted kappa of those rounded predictions against the labels that are integers 0..4
    (:func:`quadratic_weighted_kappa`), and ``qwk_excluded``, the present labels it left out (not integers 0..4).
    Given a distributional head's level probabilities ``probs`` [N, A, K]: ``nll`` (:func:`level_nll`) and
    ``ece`` (:func:`expected_calibration_error`, 15 bins) over the same rows whose labels are levels.

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
    kappa = quadratic_weighted_kappa(target, pred, present)
    _, is_level = level_labels(target, present)
    out: dict[str, dict] = {}
    for j, name in enumerate(names):
        rows = present[:, j]
        p, r, t = pred[rows, j], rounded[rows, j], target[rows, j]
        entry: dict[str, Any] = {"n": int(rows.sum())}
        entry.update(_regression_stats(p, t))
        entry["qwk"] = kappa[j]
        entry["qwk_excluded"] = int(rows.sum() - is_level[:, j].sum())
        entry["rounded"] = _regression_stats(r, t)
        if probs is not None:
            entry["nll"] = level_nll(probs[:, j], target[:, j], present[:, j])
            entry["ece"] = expected_calibration_error(probs[:, j], target[:, j], present[:, j])
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
    probs: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """Per-attribute metrics (with a distributional head's level probabilities ``probs`` [N, A, K]: nll and
    ece too) plus pairwise accuracy for each named weight spec.

    Pairs are judged by the ``helpfulness`` column (no pairwise result without one). Rows whose
    helpfulness label is masked out are dropped before pairing, so their pair shows up in
    n_skipped_groups.
    """
    pred = _as_2d("pred", pred)
    target = _as_2d("target", target)
    pair_ids = list(pair_ids)
    if len(pair_ids) != pred.shape[0]:
        raise ValueError(f"{len(pair_ids)} pair_ids for {pred.shape[0]} prediction rows")
    per_attribute = attribute_metrics(pred, target, mask, names, probs)  # also validates shapes
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
    probs: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """Metrics of predictions ``pred`` [N, len(attributes)] against HelpSteer2 ``labels`` [N, 5]
    (columns in :data:`ATTRIBUTES` order, ``label_mask`` 1 where present); ``probs`` [N, len(attributes), K]:
    a distributional head's level probabilities (per-attribute nll and ece).

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
            probs=None if probs is None else np.asarray(probs)[:, model_cols],
        )
        if model_cols
        else {}
    )
    h = ATTRIBUTES.index("helpfulness")
    pairwise = pairwise_by_weights(
        pred, labels[:, h], label_mask[:, h], list(np.asarray(groups).tolist()), weight_sets(weights, attributes)
    )
    return {"per_attribute": per_attribute, "pairwise": pairwise}
