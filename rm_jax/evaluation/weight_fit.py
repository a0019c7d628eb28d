"""Reward weights fitted from preferences (``rm-jax weights fit``): which combination of the RM's predicted
attributes best orders chosen over rejected responses.

Bradley-Terry (logistic) regression without intercept on the attribute differences
``d = a(chosen) - a(rejected)``: minimise ``mean(log(1 + exp(-w . d))) + l2 / 2 * |w|^2`` (convex; scipy's
L-BFGS with the exact gradient). The fitted ``w`` is on the BT logit scale: ``sigmoid(w . d)`` is the
modelled probability that the chosen response wins, so ``w`` is a reward weighting as it stands (only its
direction matters for ordering; W.json also gives it normalised to unit L1 norm).

k-fold cross-validation: pairs are split into ``folds`` random folds (``seed``); each fold's held-out
accuracy is that of weights fitted on the other folds, and every preset is scored on the same folds.
Predictions are computed once, written next to W.json, and can be refitted from with ``--from-predictions``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from scipy.optimize import minimize

from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.core.errors import InputError, ModelLoadError
from rm_jax.core.files import iter_jsonl, write_json, write_jsonl
from rm_jax.data.pipeline import resolve_source
from rm_jax.data.rewardbench2_sets import flatten, load_rewardbench2
from rm_jax.data.sources import load_helpsteer, load_pairs, pair_ids

PREDICTIONS_SUFFIX = ".fit_predictions.jsonl"
SCALE = (
    "as fitted: Bradley-Terry logits per unit of attribute difference, P(chosen wins) = "
    "sigmoid(sum_a w_a * (chosen_a - rejected_a)); not normalised (see weights_l1_normalised)"
)

# ----------------------------------------------------------------------------- the fit (numpy / scipy only)


def bt_objective(w: np.ndarray, d: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """Mean BT negative log-likelihood of differences ``d`` [n, A] plus ``l2 / 2 * |w|^2``, and its gradient."""
    z = d @ w
    loss = float(np.mean(np.logaddexp(0.0, -z)) + 0.5 * l2 * (w @ w))
    p_wrong = 0.5 * (1.0 - np.tanh(0.5 * z))  # sigmoid(-z) without overflow
    grad = -(d.T @ p_wrong) / len(d) + l2 * w
    return loss, grad


def fit_bt(d: np.ndarray, l2: float) -> np.ndarray:
    """The minimiser of :func:`bt_objective` (unique for ``l2 > 0``)."""
    d = np.asarray(d, np.float64)
    if len(d) == 0:
        raise InputError("weights fit: no preference pairs to fit")
    res = minimize(bt_objective, np.zeros(d.shape[1]), args=(d, l2), jac=True, method="L-BFGS-B",
                   options={"maxiter": 10_000, "gtol": 1e-10, "ftol": 1e-15})  # fmt: skip
    return res.x


def accuracy(d: np.ndarray, w: np.ndarray) -> float:
    """Share of pairs the weights order right: w . (chosen - rejected) > 0 strictly (a tie is wrong)."""
    return float(np.mean(d @ w > 0)) if len(d) else float("nan")


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold of each pair: a seeded permutation cut into ``folds`` near-equal parts."""
    if folds < 2 or folds > n:
        raise InputError(f"--folds: need 2 <= folds <= pairs ({n}), got {folds}")
    out = np.empty(n, np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return out


def cross_validate(
    d: np.ndarray, folds: int, l2: float, seed: int, presets: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Held-out accuracy of the fit per fold (trained on the other folds) and of each preset on the same folds."""
    fold = fold_ids(len(d), folds, seed)
    acc, weights = [], []
    preset_acc: dict[str, list[float]] = {name: [] for name in presets}
    for k in range(folds):
        test = fold == k
        w = fit_bt(d[~test], l2)
        weights.append(w)
        acc.append(accuracy(d[test], w))
        for name, pw in presets.items():
            preset_acc[name].append(accuracy(d[test], np.asarray(pw, np.float64)))
    return {
        "fold_of_pair": fold,
        "fold_weights": weights,
        "heldout": {"mean": float(np.mean(acc)), "folds": acc},
        "presets": {n: {"mean": float(np.mean(a)), "folds": a} for n, a in preset_acc.items()},
    }


def fit_report(
    d: np.ndarray, attributes: Sequence[str], folds: int = 5, l2: float = 0.01, seed: int = 0
) -> dict[str, Any]:
    """W.json's content (less provenance) for attribute differences ``d`` [n, A]."""
    if l2 <= 0:
        raise InputError(f"--l2: must be positive (the fit is then unique), got {l2}")
    attributes = list(attributes)
    presets = {n: np.asarray(w) for n, w in REWARD_PRESETS.items()} if tuple(attributes) == ATTRIBUTES else {}
    cv = cross_validate(d, folds, l2, seed, presets)
    w = fit_bt(d, l2)
    l1 = float(np.abs(w).sum())
    return {
        "weights": {a: float(x) for a, x in zip(attributes, w)},
        "scale": SCALE,
        "weights_l1_normalised": {a: float(x / l1) if l1 > 0 else 0.0 for a, x in zip(attributes, w)},
        "attributes": attributes,
        "heldout_accuracy": cv["heldout"],
        "train_accuracy": accuracy(d, w),
        "presets": cv["presets"],
        "n_pairs": int(len(d)),
        "folds": folds,
        "l2": l2,
        "seed": seed,
        "fold_weights": [{a: float(x) for a, x in zip(attributes, fw)} for fw in cv["fold_weights"]],
    }


# ----------------------------------------------------------------------------- preference pairs from sources


def pairs_from_helpsteer(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[tuple[int, int]]]:
    """Responses to the same prompt ordered by human helpfulness; equal or missing helpfulness left out."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(pair_ids(rows)):
        groups.setdefault(g, []).append(i)
    pairs = []
    for members in groups.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                hi, hj = rows[i].get("helpfulness"), rows[j].get("helpfulness")
                if hi is None or hj is None or hi == hj:
                    continue
                pairs.append((i, j) if hi > hj else (j, i))
    convs = [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
    return convs, pairs


def pairs_from_pairs(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[tuple[int, int]]]:
    """RewardBench-format pairs (``prompt``, ``chosen``, ``rejected``); strength-0 ties left out."""
    convs, pairs = [], []
    for r in rows:
        if r.get("strength") == 0:
            continue
        pairs.append((len(convs), len(convs) + 1))
        convs += [{"prompt": r["prompt"], "response": r["chosen"]}, {"prompt": r["prompt"], "response": r["rejected"]}]
    return convs, pairs


def pairs_from_rewardbench2(sets: Sequence[Any]) -> tuple[list[dict], list[tuple[int, int]]]:
    """Every chosen (correct) completion against every rejected one of the same set."""
    pairs, start = [], 0
    for s in sets:
        n = len(s.completions)
        pairs += [(start + i, start + j) for i in range(s.num_correct) for j in range(s.num_correct, n)]
        start += n
    return flatten(sets), pairs


def load_source_pairs(kind: str, source: str, split: Optional[str]) -> tuple[list[dict], list[tuple[int, int]]]:
    if kind == "helpsteer":
        return pairs_from_helpsteer(load_helpsteer(resolve_source(source), split or "validation").rows)
    if kind == "pairs":
        return pairs_from_pairs(load_pairs(source, split).rows)
    if kind == "rewardbench2":
        return pairs_from_rewardbench2(load_rewardbench2(source, split))
    raise ValueError(f"unknown pair source kind {kind!r}")


# ----------------------------------------------------------------------------- predictions file


def write_fit_predictions(path: str, attributes: Sequence[str], pred: np.ndarray, pairs: Sequence[tuple[int, int]]):
    """One record per pair: the chosen and rejected responses' predicted attributes."""
    write_jsonl(
        path,
        (
            {
                "pair": k,
                "chosen": dict(zip(attributes, map(float, pred[c]))),
                "rejected": dict(zip(attributes, map(float, pred[r]))),
            }  # fmt: skip
            for k, (c, r) in enumerate(pairs)
        ),
    )


def read_fit_predictions(path: str) -> tuple[list[str], np.ndarray]:
    """(attributes, differences [n, A]) from a predictions file; a bad line is named."""
    attributes: Optional[list[str]] = None
    diffs = []
    for lineno, rec in iter_jsonl(path):
        try:
            names = list(rec["chosen"])
            if attributes is None:
                attributes = names
            if names != attributes or list(rec["rejected"]) != attributes:
                raise ValueError(f"attributes {names} differ from the first line's {attributes}")
            c = np.asarray([float(rec["chosen"][a]) for a in attributes])
            r = np.asarray([float(rec["rejected"][a]) for a in attributes])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: line {lineno}: not a weight-fit prediction record ({e})") from None
        diffs.append(c - r)
    if attributes is None:
        raise InputError(f"{path}: no pairs")
    return attributes, np.asarray(diffs, np.float64)


# ----------------------------------------------------------------------------- a model on a source


def fit_weights(
    output: str,
    *,
    model_path: Optional[str] = None,
    kind: Optional[str] = None,
    source: Optional[str] = None,
    split: Optional[str] = None,
    from_predictions: Optional[str] = None,
    folds: int = 5,
    l2: float = 0.01,
    seed: int = 0,
    seq_len: Optional[int] = None,
    batch_rows: int = 16,
    max_segments: int = 16,
    dtype: str = "float32",
    progress: bool = True,
) -> tuple[dict, str]:
    """Predict the pairs' attributes once (or read them back), fit, cross-validate; write W.json and the
    predictions file next to it. Returns (W.json content, its path)."""
    out_path = output if output.endswith(".json") else output + ".json"
    pred_path = out_path[: -len(".json")] + PREDICTIONS_SUFFIX
    provenance: dict[str, Any]
    if from_predictions:
        attributes, d = read_fit_predictions(from_predictions)
        provenance = {"from_predictions": os.path.abspath(from_predictions)}
    else:
        from rm_jax.evaluation.evaluate import predict_conversations, sequence_limit
        from rm_jax.runs.read import load_scoring_model

        if not model_path or not kind or not source:
            raise InputError("weights fit: give --model and one of --pairs / --rewardbench2 / --helpsteer")
        convs, pairs = load_source_pairs(kind, source, split)
        if not pairs:
            raise InputError(f"--{kind} {source}: no preference pairs (ties and missing labels are left out)")
        try:
            model = load_scoring_model(model_path, dtype=dtype)
        except FileNotFoundError as e:
            raise ModelLoadError(f"--model {model_path}: {e}") from None
        attributes = list(model.attributes)
        limit = sequence_limit(model, seq_len)
        pred, counts = predict_conversations(model, convs, limit, True, batch_rows, max_segments, progress, "pairs")
        write_fit_predictions(pred_path, attributes, pred, pairs)
        c, r = np.asarray(pairs).T
        d = pred[c].astype(np.float64) - pred[r].astype(np.float64)
        provenance = {
            "model": os.path.abspath(model_path),
            "source": {"kind": kind, "path": source, "split": split},
            "counts": counts,
            "predictions_file": os.path.abspath(pred_path),
        }
    report = {**fit_report(d, attributes, folds, l2, seed), **provenance}
    write_json(out_path, report)
    return report, out_path


def format_fit(report: Mapping[str, Any]) -> str:
    """The fitted weights and the held-out accuracy of the fit and of every preset, as text."""
    lines = ["fitted weights (" + report["scale"].split(":")[0] + "; L1-normalised in brackets):"]
    for a, w in report["weights"].items():
        lines.append(f"  {a:<14} {w:>9.4f}  [{report['weights_l1_normalised'][a]:>7.4f}]")
    k = report["folds"]
    lines.append(f"\n{report['n_pairs']} pairs, {k}-fold held-out accuracy (%), l2 {report['l2']:g}:")
    header = f"  {'weights':<18} {'mean':>7} " + " ".join(f"{'fold ' + str(i + 1):>7}" for i in range(k))
    lines += [header, "  " + "-" * (len(header) - 2)]
    rows = [("fitted", report["heldout_accuracy"])] + list(report["presets"].items())
    for name, r in rows:
        lines.append(f"  {name:<18} {100 * r['mean']:>7.2f} " + " ".join(f"{100 * x:>7.2f}" for x in r["folds"]))
    return "\n".join(lines)
