"""Reward weights fitted from preferences (``rm-jax weights fit``): which combination of the RM's predicted
attributes best orders chosen over rejected responses.

Bradley-Terry (logistic) regression without intercept on the attribute differences
``d = a(chosen) - a(rejected)``. The L2 penalty acts on standardised differences, so the fit does not depend
on the attributes' scale: each attribute's difference is divided by its scale ``s_a`` (its pair-weighted
root-mean-square over the fitted pairs), ``u`` minimises ``sum_i v_i log(1 + exp(-u . d_i / s)) / sum_i v_i
+ l2 / 2 * |u|^2`` (convex; scipy's L-BFGS with the exact gradient), and ``w = u / s`` is mapped back. ``w``
is then on the BT logit scale per unit of attribute difference: ``sigmoid(w . d)`` is the modelled
probability that the chosen response wins (only its direction matters for ordering; W.json also gives it
normalised to unit L1 norm).

Pairs are grouped by prompt. RewardBench 2 gives several pairs per set and its Ties sets ``ref:K`` /
``tied:K`` share a prompt and completions; HelpSteer gives one pair per two responses of a prompt. So the
k folds are groups of prompts (every pair of a prompt in one fold, a ``ref:K`` set with its ``tied:K``
partner), and by default each prompt counts once (pair weight ``v_i = 1 / pairs of its prompt``) in the fit
and in the held-out accuracy; ``pair_weighting="pair"`` weighs every pair 1. Every preset is scored with
the same weights on the same folds. Predictions are computed once, written next to W.json with each pair's
``prompt_id``, and can be refitted from with ``--from-predictions``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Optional, Sequence

import numpy as np
from scipy.optimize import minimize

from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.core.errors import InputError, ModelLoadError
from rm_jax.core.files import iter_jsonl, write_json, write_jsonl
from rm_jax.data.pipeline import resolve_pairs_source, resolve_source
from rm_jax.data.rewardbench2_sets import RB2Set, flatten, load_rewardbench2, ties_key
from rm_jax.data.sources import load_helpsteer, load_pairs, pair_ids

PREDICTIONS_SUFFIX = ".fit_predictions.jsonl"
PAIR_WEIGHTINGS = ("prompt", "pair")
SCALE = (
    "as fitted: Bradley-Terry logits per unit of attribute difference, P(chosen wins) = "
    "sigmoid(sum_a w_a * (chosen_a - rejected_a)); not normalised (see weights_l1_normalised)"
)
L2_ON = (
    "standardised differences: the penalty l2/2*|u|^2 is on u_a = w_a * attribute_scale_a, where "
    "attribute_scale_a is the pair-weighted root-mean-square of attribute a's difference over the fitted pairs"
)
WEIGHTING_NOTE = {
    "prompt": "each prompt counts once: a pair weighs 1 / (pairs of its prompt), in the BT loss and in every accuracy",
    "pair": "every pair weighs 1, in the BT loss and in every accuracy",
}
ACCURACY = (
    "pair-weighted share of pairs ordered right (w . d > 0 strictly; a tie is wrong); heldout mean = mean of "
    "the folds' accuracies, each fold scored by weights fitted on the other folds; presets on the same folds"
)

# ----------------------------------------------------------------------------- the fit (numpy / scipy only)


def pair_weights(prompt_ids: Sequence[str], weighting: str = "prompt") -> np.ndarray:
    """Weight of each pair: ``1 / (pairs of its prompt)`` (``"prompt"``: each prompt counts once) or 1."""
    if weighting not in PAIR_WEIGHTINGS:
        raise InputError(f"--pair-weighting: expected one of {', '.join(PAIR_WEIGHTINGS)}, got {weighting!r}")
    if weighting == "pair":
        return np.ones(len(prompt_ids))
    _, group, counts = np.unique(np.asarray(prompt_ids, dtype=object), return_inverse=True, return_counts=True)
    return 1.0 / counts[group]


def _weights_or_ones(d: np.ndarray, v: Optional[np.ndarray]) -> np.ndarray:
    return np.ones(len(d)) if v is None else np.asarray(v, np.float64)


def bt_objective(w: np.ndarray, d: np.ndarray, l2: float, v: Optional[np.ndarray] = None) -> tuple[float, np.ndarray]:
    """Pair-weighted mean BT negative log-likelihood of differences ``d`` [n, A] (weights ``v``, default 1)
    plus ``l2 / 2 * |w|^2``, and its gradient."""
    v = _weights_or_ones(d, v)
    v = v / v.sum()
    z = d @ w
    loss = float(v @ np.logaddexp(0.0, -z) + 0.5 * l2 * (w @ w))
    p_wrong = 0.5 * (1.0 - np.tanh(0.5 * z))  # sigmoid(-z) without overflow
    grad = -(d.T @ (v * p_wrong)) + l2 * w
    return loss, grad


def attribute_scale(d: np.ndarray, v: Optional[np.ndarray] = None) -> np.ndarray:
    """Each attribute's pair-weighted root-mean-square difference (no centring: the fit has no intercept,
    and the mean difference is the signal); 1 where an attribute never differs (its weight is then 0)."""
    v = _weights_or_ones(d, v)
    s = np.sqrt((v @ np.square(d)) / v.sum())
    return np.where(s > 0, s, 1.0)


def fit_bt(d: np.ndarray, l2: float, v: Optional[np.ndarray] = None) -> np.ndarray:
    """Weights ``w`` (per unit of raw difference) that minimise :func:`bt_objective` on the standardised
    differences ``d / attribute_scale(d, v)``, mapped back; unique for ``l2 > 0``. Scaling any attribute's
    differences by ``c > 0`` scales its weight by ``1 / c`` and changes no ordering."""
    d = np.asarray(d, np.float64)
    if len(d) == 0:
        raise InputError("weights fit: no preference pairs to fit")
    s = attribute_scale(d, v)
    res = minimize(bt_objective, np.zeros(d.shape[1]), args=(d / s, l2, v), jac=True, method="L-BFGS-B",
                   options={"maxiter": 10_000, "gtol": 1e-10, "ftol": 1e-15})  # fmt: skip
    return res.x / s


def accuracy(d: np.ndarray, w: np.ndarray, v: Optional[np.ndarray] = None) -> float:
    """Pair-weighted share of pairs the weights order right: w . (chosen - rejected) > 0 strictly (a tie
    is wrong)."""
    if not len(d):
        return float("nan")
    v = _weights_or_ones(d, v)
    return float(v @ (d @ w > 0) / v.sum())


def fold_ids(prompt_ids: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold of each pair: the distinct prompts (in first-seen order) are permuted with ``seed`` and cut into
    ``folds`` near-equal parts, so all pairs of one prompt share a fold (no prompt is both trained and held
    out)."""
    index: dict[str, int] = {}
    group = np.asarray([index.setdefault(p, len(index)) for p in prompt_ids], np.int64)
    n = len(index)
    if folds < 2 or folds > n:
        raise InputError(f"--folds: need 2 <= folds <= prompts ({n}), got {folds}")
    fold_of_group = np.empty(n, np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return fold_of_group[group]


def cross_validate(
    d: np.ndarray,
    prompt_ids: Sequence[str],
    folds: int,
    l2: float,
    seed: int,
    presets: Mapping[str, np.ndarray],
    pair_weighting: str = "prompt",
) -> dict[str, Any]:
    """Held-out accuracy of the fit per fold (trained on the other folds) and of each preset on the same
    folds, all with the same pair weights."""
    if len(prompt_ids) != len(d):
        raise ValueError(f"{len(prompt_ids)} prompt ids for {len(d)} pairs")
    v = pair_weights(prompt_ids, pair_weighting)
    fold = fold_ids(prompt_ids, folds, seed)
    acc, weights = [], []
    preset_acc: dict[str, list[float]] = {name: [] for name in presets}
    for k in range(folds):
        test = fold == k
        w = fit_bt(d[~test], l2, v[~test])
        weights.append(w)
        acc.append(accuracy(d[test], w, v[test]))
        for name, pw in presets.items():
            preset_acc[name].append(accuracy(d[test], np.asarray(pw, np.float64), v[test]))
    return {
        "fold_of_pair": fold,
        "fold_weights": weights,
        "heldout": {"mean": float(np.mean(acc)), "folds": acc},
        "presets": {n: {"mean": float(np.mean(a)), "folds": a} for n, a in preset_acc.items()},
    }


def fit_report(
    d: np.ndarray,
    attributes: Sequence[str],
    prompt_ids: Sequence[str],
    folds: int = 5,
    l2: float = 0.01,
    seed: int = 0,
    pair_weighting: str = "prompt",
) -> dict[str, Any]:
    """W.json's content (less provenance) for attribute differences ``d`` [n, A] of pairs of ``prompt_ids``."""
    if l2 <= 0:
        raise InputError(f"--l2: must be positive (the fit is then unique), got {l2}")
    d = np.asarray(d, np.float64)
    attributes = list(attributes)
    presets = {n: np.asarray(w) for n, w in REWARD_PRESETS.items()} if tuple(attributes) == ATTRIBUTES else {}
    cv = cross_validate(d, prompt_ids, folds, l2, seed, presets, pair_weighting)
    v = pair_weights(prompt_ids, pair_weighting)
    w = fit_bt(d, l2, v)
    l1 = float(np.abs(w).sum())
    return {
        "weights": {a: float(x) for a, x in zip(attributes, w)},
        "scale": SCALE,
        "weights_l1_normalised": {a: float(x / l1) if l1 > 0 else 0.0 for a, x in zip(attributes, w)},
        "attributes": attributes,
        "heldout_accuracy": cv["heldout"],
        "train_accuracy": accuracy(d, w, v),
        "presets": cv["presets"],
        "accuracy": ACCURACY,
        "pair_weighting": pair_weighting,
        "pair_weighting_note": WEIGHTING_NOTE[pair_weighting],
        "n_pairs": int(len(d)),
        "n_prompts": len(set(prompt_ids)),
        "folds": {"by": "prompt", "k": folds, "seed": seed, "pair_fold": [int(f) for f in cv["fold_of_pair"]]},
        "l2": l2,
        "l2_on": L2_ON,
        "attribute_scale": {a: float(x) for a, x in zip(attributes, attribute_scale(d, v))},
        "seed": seed,
        "fold_weights": [{a: float(x) for a, x in zip(attributes, fw)} for fw in cv["fold_weights"]],
    }


# ----------------------------------------------------------------------------- preference pairs from sources
# Each builder returns (conversations, pairs as (chosen, rejected) indices into them, prompt id per pair).
# Pairs that share a prompt text, or the same chosen and rejected texts (a pair copied under a reworded
# prompt), or a RewardBench 2 set / Ties K, get one prompt id: a fold never holds a copy of a training pair.


def text_prompt_id(prompt: str) -> str:
    """A short stable id of a prompt's text."""
    return "prompt:" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:16]


def _first_of_group(keys: Sequence[Sequence[Hashable]]) -> list[int]:
    """For each item, the first item of its group: items that share any key are in one group (union-find)."""
    root = list(range(len(keys)))

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    first: dict[Hashable, int] = {}
    for i, item_keys in enumerate(keys):
        for key in item_keys:
            if key in first:
                a, b = find(i), find(first[key])
                root[max(a, b)] = min(a, b)  # the earliest item names the group
            else:
                first[key] = i
    return [find(i) for i in range(len(keys))]


def _text_prompt_ids(convs: Sequence[Mapping[str, str]], pairs: Sequence[tuple[int, int]]) -> list[str]:
    keys = [[("text", convs[c]["prompt"]), ("pair", convs[c]["response"], convs[r]["response"])] for c, r in pairs]
    return [text_prompt_id(convs[pairs[g][0]]["prompt"]) for g in _first_of_group(keys)]


def pairs_from_helpsteer(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[tuple[int, int]], list[str]]:
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
    # By prompt text, not by run of rows: a prompt that recurs later in the file is still one prompt.
    return convs, pairs, _text_prompt_ids(convs, pairs)


def pairs_from_pairs(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[tuple[int, int]], list[str]]:
    """RewardBench-format pairs (``prompt``, ``chosen``, ``rejected``); strength-0 ties left out."""
    convs, pairs = [], []
    for r in rows:
        if r.get("strength") == 0:
            continue
        pairs.append((len(convs), len(convs) + 1))
        convs += [{"prompt": r["prompt"], "response": r["chosen"]}, {"prompt": r["prompt"], "response": r["rejected"]}]
    return convs, pairs, _text_prompt_ids(convs, pairs)


def pairs_from_rewardbench2(sets: Sequence[RB2Set]) -> tuple[list[dict], list[tuple[int, int]], list[str]]:
    """Every chosen (correct) completion against every rejected one of the same set. Prompt ids
    ``rb2:<set id>`` / ``rb2:ties:K`` (named after the group's first set): a set's pairs, a Ties ``ref:K``
    set with its ``tied:K`` partner, and sets sharing a prompt text or a (chosen, rejected) pair are one."""
    pairs, keys, names, start = [], [], [], 0
    for s in sets:
        n = len(s.completions)
        name = f"ties:{ties_key(s.id)[1]}" if s.is_ties else s.id
        for i in range(s.num_correct):
            for j in range(s.num_correct, n):
                pairs.append((start + i, start + j))
                keys.append([("set", name), ("text", s.prompt), ("pair", s.completions[i], s.completions[j])])
                names.append("rb2:" + name)
        start += n
    return flatten(sets), pairs, [names[g] for g in _first_of_group(keys)]


def pairs_from_helpsteer3(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[tuple[int, int]], list[str]]:
    """HelpSteer3-Preference pairs (ties already left out by the loader). Prompt ids ``hs3:<context id>``:
    folds by context (every turn before the responses), and pairs with the same two responses are one."""
    convs, pairs, keys = [], [], []
    for r in rows:
        pairs.append((len(convs), len(convs) + 1))
        keys.append([("context", r["context_id"]), ("pair", r["chosen"], r["rejected"])])
        convs += [{"prompt": r["prompt"], "response": r["chosen"]}, {"prompt": r["prompt"], "response": r["rejected"]}]
    return convs, pairs, [f"hs3:{rows[g]['context_id']}" for g in _first_of_group(keys)]


def load_source_pairs(
    kind: str, source: str, split: Optional[str]
) -> tuple[list[dict], list[tuple[int, int]], list[str]]:
    if kind == "helpsteer":
        return pairs_from_helpsteer(load_helpsteer(resolve_source(source), split or "validation").rows)
    if kind == "pairs":
        return pairs_from_pairs(load_pairs(resolve_pairs_source(source), split).rows)
    if kind == "rewardbench2":
        return pairs_from_rewardbench2(load_rewardbench2(source, split))
    if kind == "helpsteer3":
        from rm_jax.data.helpsteer3_pairs import load_helpsteer3

        return pairs_from_helpsteer3(load_helpsteer3(source, split or "validation").rows)
    raise ValueError(f"unknown pair source kind {kind!r}")


# ----------------------------------------------------------------------------- predictions file


@dataclass
class SourcePairs:
    """A preference source's pairs with the model's attribute predictions of both sides, predicted once."""

    model: Any
    limit: int
    convs: list[dict]
    pairs: list[tuple[int, int]]
    prompt_ids: list[str]
    pred: np.ndarray
    counts: dict

    @property
    def attributes(self) -> list[str]:
        return list(self.model.attributes)

    @property
    def differences(self) -> np.ndarray:
        """a(chosen) - a(rejected) per pair [pairs, A], float64."""
        c, r = np.asarray(self.pairs).T
        return self.pred[c].astype(np.float64) - self.pred[r].astype(np.float64)


def predict_source_pairs(
    model_path: str,
    kind: str,
    source: str,
    split: Optional[str],
    seq_len: Optional[int] = None,
    batch_rows: int = 16,
    max_segments: int = 16,
    dtype: str = "float32",
    progress: bool = True,
    share_prompts: Any = "auto",
) -> SourcePairs:
    """Load ``kind``'s pairs from ``source`` (none is an error) and ``model_path``, and predict every
    conversation once: what ``weights fit`` and ``weights fit --gate`` both start from."""
    from rm_jax.evaluation.evaluate import predict_conversations, sequence_limit
    from rm_jax.runs.read import load_scoring_model

    convs, pairs, prompt_ids = load_source_pairs(kind, source, split)
    if not pairs:
        raise InputError(f"--{kind} {source}: no preference pairs (ties and missing labels are left out)")
    try:
        model = load_scoring_model(model_path, dtype=dtype)
    except FileNotFoundError as e:
        raise ModelLoadError(f"--model {model_path}: {e}") from None
    limit = sequence_limit(model, seq_len)
    pred, counts = predict_conversations(
        model, convs, limit, True, batch_rows, max_segments, progress, "pairs", share_prompts
    )
    return SourcePairs(model, limit, convs, pairs, prompt_ids, pred, counts)


def write_fit_predictions(
    path: str,
    attributes: Sequence[str],
    pred: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    prompt_ids: Sequence[str],
) -> None:
    """One record per pair: its prompt id and the chosen and rejected responses' predicted attributes."""
    write_jsonl(
        path,
        (
            {
                "pair": k,
                "prompt_id": pid,
                "chosen": dict(zip(attributes, map(float, pred[c]))),
                "rejected": dict(zip(attributes, map(float, pred[r]))),
            }  # fmt: skip
            for k, ((c, r), pid) in enumerate(zip(pairs, prompt_ids))
        ),
    )


def read_fit_predictions(path: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(attributes, differences [n, A], prompt id per pair) from a predictions file; a bad line is named.
    A file without prompt ids (written before folds by prompt) cannot be grouped and is refused."""
    attributes: Optional[list[str]] = None
    diffs, prompts = [], []
    for lineno, rec in iter_jsonl(path):
        if isinstance(rec, dict) and "chosen" in rec and "prompt_id" not in rec:
            raise InputError(
                f"{path}: line {lineno}: no prompt_id (a predictions file from before folds by prompt): its pairs "
                "cannot be grouped by prompt; refit with --model and the pair source to write a new one"
            )
        try:
            names = list(rec["chosen"])
            if attributes is None:
                attributes = names
            if names != attributes or list(rec["rejected"]) != attributes:
                raise ValueError(f"attributes {names} differ from the first line's {attributes}")
            c = np.asarray([float(rec["chosen"][a]) for a in attributes])
            r = np.asarray([float(rec["rejected"][a]) for a in attributes])
            pid = rec["prompt_id"]
            if not isinstance(pid, str) or not pid:
                raise ValueError(f"prompt_id must be a non-empty string, got {pid!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: line {lineno}: not a weight-fit prediction record ({e})") from None
        diffs.append(c - r)
        prompts.append(pid)
    if attributes is None:
        raise InputError(f"{path}: no pairs")
    return attributes, np.asarray(diffs, np.float64), prompts


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
    pair_weighting: str = "prompt",
    seq_len: Optional[int] = None,
    batch_rows: int = 16,
    max_segments: int = 16,
    dtype: str = "float32",
    progress: bool = True,
    share_prompts: Any = "auto",
) -> tuple[dict, str]:
    """Predict the pairs' attributes once (or read them back), fit, cross-validate; write W.json and the
    predictions file next to it. Returns (W.json content, its path)."""
    out_path = output if output.endswith(".json") else output + ".json"
    pred_path = out_path[: -len(".json")] + PREDICTIONS_SUFFIX
    provenance: dict[str, Any]
    if from_predictions:
        attributes, d, prompt_ids = read_fit_predictions(from_predictions)
        provenance = {"from_predictions": os.path.abspath(from_predictions)}
    else:
        if not model_path or not kind or not source:
            raise InputError(
                "weights fit: give --model and one of --pairs / --rewardbench2 / --helpsteer / --helpsteer3"
            )
        sp = predict_source_pairs(
            model_path, kind, source, split, seq_len, batch_rows, max_segments, dtype, progress, share_prompts
        )
        attributes, pred, pairs, prompt_ids, counts = sp.attributes, sp.pred, sp.pairs, sp.prompt_ids, sp.counts
        write_fit_predictions(pred_path, attributes, pred, pairs, prompt_ids)
        d = sp.differences
        provenance = {
            "model": os.path.abspath(model_path),
            "source": {"kind": kind, "path": source, "split": split},
            "counts": counts,
            "predictions_file": os.path.abspath(pred_path),
        }
    report = {**fit_report(d, attributes, prompt_ids, folds, l2, seed, pair_weighting), **provenance}
    write_json(out_path, report)
    return report, out_path


def format_fit(report: Mapping[str, Any]) -> str:
    """The fitted weights and the held-out accuracy of the fit and of every preset, as text."""
    lines = ["fitted weights (" + report["scale"].split(":")[0] + "; L1-normalised in brackets):"]
    for a, w in report["weights"].items():
        lines.append(f"  {a:<14} {w:>9.4f}  [{report['weights_l1_normalised'][a]:>7.4f}]")
    k = report["folds"]["k"]
    lines.append(
        f"\n{report['n_pairs']} pairs of {report['n_prompts']} prompts, {k}-fold held-out accuracy (%; folds by "
        f"prompt, pairs weighted by {report['pair_weighting']}), l2 {report['l2']:g} on standardised differences:"
    )
    header = f"  {'weights':<18} {'mean':>7} " + " ".join(f"{'fold ' + str(i + 1):>7}" for i in range(k))
    lines += [header, "  " + "-" * (len(header) - 2)]
    rows = [("fitted", report["heldout_accuracy"])] + list(report["presets"].items())
    for name, r in rows:
        lines.append(f"  {name:<18} {100 * r['mean']:>7.2f} " + " ".join(f"{100 * x:>7.2f}" for x in r["folds"]))
    return "\n".join(lines)
