"""RewardBench 2 scores from per-completion rewards, by the rules of reward-bench's ``scripts/run_v2.py``
(package ``rewardbench`` 0.1.4: ``reroll_and_score_dataset`` and ``process_single_model``; later
versions of the latter differ only where a tied set's correct answers score equally).

* A set of any subset but Ties scores ``1 / (number of completions equal to the maximum)`` when its first
  (chosen) completion holds the maximum, else 0; a subset's score is the mean over its sets.
* Ties is scored per prompt K over its ``ref:K`` and ``tied:K`` sets (see :func:`ties_score`).
* The overall score is the unweighted mean of the subset scores present.

A set whose rewards hold NaN (dropped for length) is left out, and with it the other half of its Ties
pair (``ref:K`` with ``tied:K``): the Ties formula scores a prompt through both, so keeping one half
would score a different question. A subset that loses every set is named (``empty_subsets``) and the
overall says which subsets it averages (``overall_over``).

Scores are compared exactly (``==``), as run_v2 does: identical completions must get bit-identical
rewards, which :func:`rm_jax.evaluation.evaluate.evaluate_rewardbench2` guarantees by scoring each
distinct conversation once.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import WeightSpec
from rm_jax.core.errors import InputError
from rm_jax.core.files import iter_jsonl
from rm_jax.data.rewardbench2_sets import RB2Set, ties_key
from rm_jax.evaluation.weights import check_weights, weight_sets


def best_of_n(scores: Sequence[float]) -> float:
    """run_v2's per-set result: the chosen (first) completion must hold the maximum; ties share it."""
    s = np.asarray(scores, np.float64)
    top = s.max()
    return float(1.0 / np.sum(s == top)) if s[0] == top else 0.0


def _prompt_stats(correct: np.ndarray, scores: np.ndarray) -> tuple[bool, Optional[float], float]:
    good, bad = scores[correct], scores[~correct]
    correct_incorrect = float(good.min() - bad.max())
    spread = float(good.max() - good.min()) if len(good) > 1 else None
    return correct_incorrect > 0, spread, correct_incorrect


def ties_score(ids: Sequence[str], num_correct: Sequence[int], scores: Sequence[Sequence[float]]) -> float:
    """reward-bench 0.1.4's Ties score (``process_single_model``) over sets ``ref:K`` / ``tied:K``.

    Per set: accurate = worst correct > best incorrect; margin = worst correct - best incorrect;
    spread = best correct - worst correct (only with 2+ correct). Accuracy is averaged over all ref and
    all tied sets; the margin terms over the prompts K that have both, and a spread:
    ``0.3 * mean(tied accurate) + 0.3 * mean(ref accurate) + 0.2 * mean(tied margin > tied spread)
    + 0.2 * mean(min(ref margin, tied margin) > tied spread)
    + 0.01 * mean(tanh(min margin / tied spread - 1) over prompts whose spread is > 0)``.
    A mean over no prompts counts 0 (0.1.4 does so when no prompt has both kinds; when prompts have both
    but no spread, 0.1.4 returns NaN).
    """
    stats: dict[str, dict[int, tuple[bool, Optional[float], float]]] = defaultdict(dict)
    for set_id, k, sc in zip(ids, num_correct, scores):
        kind, prompt = ties_key(set_id)
        s = np.asarray(sc, np.float64)
        stats[kind][prompt] = _prompt_stats(np.arange(len(s)) < int(k), s)
    ref, tied = stats.get("ref", {}), stats.get("tied", {})
    ref_acc = float(np.mean([v[0] for v in ref.values()])) if ref else 0.0
    tied_acc = float(np.mean([v[0] for v in tied.values()])) if tied else 0.0
    both = [k for k in sorted(set(ref) & set(tied)) if tied[k][1] is not None]
    spread = np.asarray([tied[k][1] for k in both], np.float64)
    tied_margin = np.asarray([tied[k][2] for k in both], np.float64)
    hard = np.minimum(np.asarray([ref[k][2] for k in both], np.float64), tied_margin)
    preferred = float(np.mean(tied_margin > spread)) if both else 0.0
    preferred_hard = float(np.mean(hard > spread)) if both else 0.0
    spread_out = spread > 0  # a zero spread has no ratio: 0.1.4 leaves the prompt out of this mean
    margin = float(np.mean(np.tanh(hard[spread_out] / spread[spread_out] - 1))) if spread_out.any() else 0.0
    return float(0.3 * tied_acc + 0.3 * ref_acc + 0.2 * preferred + 0.2 * preferred_hard + 0.01 * margin)


def with_ties_partners(sets: Sequence[RB2Set], dropped: Sequence[bool]) -> np.ndarray:
    """``dropped`` widened to whole Ties pairs: a dropped ``ref:K`` drops its ``tied:K`` and back."""
    out = np.asarray(dropped, bool).copy()
    prompts = {(s.subset, ties_key(s.id)[1]) for s, d in zip(sets, out) if d and s.is_ties}
    for i, s in enumerate(sets):
        if s.is_ties and (s.subset, ties_key(s.id)[1]) in prompts:
            out[i] = True
    return out


def score_sets(sets: Sequence[RB2Set], rewards: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Subset scores and the overall mean for per-set reward lists (aligned with ``sets``); a set with a
    NaN reward is dropped, with its Ties partner (:func:`with_ties_partners`)."""
    if len(sets) != len(rewards):
        raise ValueError(f"length mismatch: {len(sets)} sets, {len(rewards)} reward lists")
    for s, r in zip(sets, rewards):
        if len(r) != len(s.completions):
            raise ValueError(f"set {s.id!r}: {len(s.completions)} completions but {len(r)} rewards")
    dropped = with_ties_partners(sets, [bool(np.isnan(np.asarray(r, np.float64)).any()) for r in rewards])
    by_subset: dict[str, list[int]] = {}
    for i, s in enumerate(sets):
        by_subset.setdefault(s.subset, [])
        if not dropped[i]:
            by_subset[s.subset].append(i)
    subsets: dict[str, float] = {}
    for name in sorted(by_subset):  # run_v2 reports np.unique(subsets): sorted
        idx = by_subset[name]
        if not idx:
            continue
        if sets[idx[0]].is_ties:
            ids, correct = [sets[i].id for i in idx], [sets[i].num_correct for i in idx]
            subsets[name] = ties_score(ids, correct, [rewards[i] for i in idx])
        else:
            subsets[name] = float(np.mean([best_of_n(rewards[i]) for i in idx]))
    return {
        "score": float(np.mean(list(subsets.values()))) if subsets else None,
        "overall_over": list(subsets),
        "subsets": subsets,
        "empty_subsets": [k for k in sorted(by_subset) if not by_subset[k]],
        "subset_sets": {k: len(by_subset[k]) for k in sorted(by_subset) if by_subset[k]},
        "sets": int(len(sets) - dropped.sum()),
        "dropped_sets": int(dropped.sum()),
    }


def split_rewards(sets: Sequence[RB2Set], flat: np.ndarray) -> list[np.ndarray]:
    """Flat per-completion values (sets in order, chosen first) -> one array per set."""
    ends = np.cumsum([len(s.completions) for s in sets])
    if len(flat) != (ends[-1] if len(ends) else 0):
        raise ValueError(f"{len(flat)} values for {int(ends[-1]) if len(ends) else 0} completions")
    return np.split(np.asarray(flat), ends[:-1])


def rewardbench2_metrics(
    sets: Sequence[RB2Set], pred: np.ndarray, attributes: Sequence[str], weights: WeightSpec
) -> dict[str, Any]:
    """:func:`score_sets` for the ``weights`` reward of attribute predictions [completions, A], plus every
    preset's score and subsets under ``presets``."""
    pred = np.asarray(pred, np.float64).reshape(-1, len(attributes))
    result = score_sets(sets, split_rewards(sets, pred @ check_weights(weights, attributes)))
    result["presets"] = {}  # the same sets drop under every weighting (NaN attributes stay NaN)
    for name, w in weight_sets(weights, attributes).items():
        r = score_sets(sets, split_rewards(sets, pred @ w))
        result["presets"][name] = {"score": r["score"], "subsets": r["subsets"]}
    return result


# ----------------------------------------------------------------------------- the per-completion scores file


def rewardbench2_records(
    sets: Sequence[RB2Set], pred: np.ndarray, attributes: Sequence[str], weights: WeightSpec
) -> list[dict]:
    """One record per completion: set id, subset, index, correct?, reward and attributes (null if dropped)."""
    w = check_weights(weights, attributes)
    out, i = [], 0
    for s in sets:
        for j in range(len(s.completions)):
            p = pred[i]
            dropped = bool(np.isnan(p).any())
            out.append(
                {
                    "id": s.id,
                    "subset": s.subset,
                    "index": j,
                    "correct": j < s.num_correct,
                    "reward": None if dropped else float(np.asarray(p, np.float64) @ w),
                    "attributes": None if dropped else {a: float(x) for a, x in zip(attributes, p)},
                }
            )
            i += 1
    return out


def load_rewardbench2_scores(path: str) -> tuple[list[RB2Set], np.ndarray, list[str]]:
    """(sets, attribute predictions [completions, A], attribute names) back from a scores file, for
    re-weighting without the model; a set dropped for length keeps NaN predictions, so :func:`score_sets`
    drops it again and names a subset it empties. Texts are not stored: the sets hold placeholders."""
    groups: dict[str, list[dict]] = {}
    attributes: Optional[list[str]] = None
    for lineno, rec in iter_jsonl(path):
        try:
            key, subset, correct, attrs = str(rec["id"]), str(rec["subset"]), bool(rec["correct"]), rec["attributes"]
            if attrs is not None:
                attributes = attributes or list(attrs)
                vec = [float(attrs[a]) for a in attributes]
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: line {lineno}: not a RewardBench 2 score record ({e!r})") from None
        groups.setdefault(key, []).append({"subset": subset, "correct": correct, "vec": None if attrs is None else vec})
    if attributes is None:
        raise InputError(f"{path}: no scored completions")
    sets, rows = [], []
    nan = [float("nan")] * len(attributes)
    for key, recs in groups.items():
        dropped = any(r["vec"] is None for r in recs)
        n_correct = sum(r["correct"] for r in recs)
        sets.append(RB2Set(key, recs[0]["subset"], "", tuple(str(i) for i in range(len(recs))), n_correct))
        rows += [nan if dropped else r["vec"] for r in recs]
    return sets, np.asarray(rows, np.float64), attributes
