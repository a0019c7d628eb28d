"""Prediction files: what an evaluation writes per scored row or pair, and reading them back.

``rm-jax eval --output R.json`` writes ``R.helpsteer_predictions.jsonl`` (one record per scored row:
``{"row", "group", "pred": {attribute: float}, "label": {attribute: int | None}}``) and
``R.rewardbench_predictions.jsonl`` (one per scored pair: ``{"row", "id", "subset", "chosen",
"rejected"}``); a training run keeps ``predictions/validation.jsonl`` in the first format. Every
metric can be recomputed from these files with new reward weights and no model.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.errors import InputError
from rm_jax.core.files import iter_jsonl, write_text
from rm_jax.runs import layout

HELPSTEER_SUFFIX = ".helpsteer_predictions.jsonl"
REWARDBENCH_SUFFIX = ".rewardbench_predictions.jsonl"
REWARDBENCH2_SUFFIX = ".rewardbench2_scores.jsonl"
NO_SUBSET = "unlabeled"  # subset name for pairs whose row has no ``subset``


def subset_of(row: Mapping[str, Any]) -> str:
    return str(row.get("subset") or NO_SUBSET)


# ---------------------------------------------------------------- records


def helpsteer_records(
    source_rows: Sequence[int],
    groups: Sequence[int],
    pred: np.ndarray,
    attributes: Sequence[str],
    labels: np.ndarray,
    label_mask: np.ndarray,
) -> list[dict]:
    """One record per scored row; ``labels`` [N, 5] in :data:`ATTRIBUTES` order (None where masked)."""
    return [
        {
            "row": int(source_rows[i]),
            "group": int(groups[i]),
            "pred": {a: float(pred[i, j]) for j, a in enumerate(attributes)},
            "label": {a: (int(labels[i, k]) if label_mask[i, k] else None) for k, a in enumerate(ATTRIBUTES)},
        }
        for i in range(len(pred))
    ]


def rewardbench_records(
    rows: Sequence[dict], chosen_pred: np.ndarray, rejected_pred: np.ndarray, attributes: Sequence[str]
) -> list[dict]:
    """One record per scored pair: ``{"row", "id", "subset", "chosen", "rejected"}`` (a pair whose
    predictions are NaN was dropped and gets no record)."""
    out = []
    for i, r in enumerate(rows):
        if np.isnan(chosen_pred[i]).any():
            continue
        out.append(
            {
                "row": int(r.get("_row", i)),
                "id": r.get("id"),
                "subset": subset_of(r),
                "chosen": {a: float(v) for a, v in zip(attributes, chosen_pred[i])},
                "rejected": {a: float(v) for a, v in zip(attributes, rejected_pred[i])},
            }
        )
    return out


# ---------------------------------------------------------------- reading


def _records(path: str) -> list[tuple[int, dict]]:
    recs = list(iter_jsonl(path))
    if not recs:
        raise InputError(f"{path}: no predictions")
    return recs


def _attribute_names(path: str, records: Sequence[tuple[int, dict]], key: str) -> list[str]:
    lineno, first = records[0]
    names = list(first.get(key) or {})
    if not names:
        raise InputError(f"{path}: line {lineno}: no '{key}' predictions")
    return names


def _vector(path: str, lineno: int, rec: dict, key: str, names: Sequence[str]) -> list[float]:
    d = rec.get(key)
    if not isinstance(d, dict) or list(d) != list(names):
        raise InputError(f"{path}: line {lineno}: '{key}' must hold the attributes {', '.join(names)}")
    return [float(d[a]) for a in names]


def load_helpsteer_predictions(path: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(pred [N, A], attributes, labels [N, 5], label_mask [N, 5], groups [N]) from a
    ``*.helpsteer_predictions.jsonl`` (or a training run's ``predictions/validation.jsonl``)."""
    recs = _records(path)
    names = _attribute_names(path, recs, "pred")
    pred = np.asarray([_vector(path, n, r, "pred", names) for n, r in recs], np.float64)
    labels = np.zeros((len(recs), len(ATTRIBUTES)), np.float64)
    mask = np.zeros_like(labels)
    for i, (_, r) in enumerate(recs):
        lab = r.get("label") or {}
        for k, a in enumerate(ATTRIBUTES):
            if lab.get(a) is not None:
                labels[i, k], mask[i, k] = float(lab[a]), 1.0
    for lineno, r in recs:
        if "group" not in r:
            raise InputError(f"{path}: line {lineno}: no 'group' (the prompt pair id)")
    groups = np.asarray([int(r["group"]) for _, r in recs], np.int64)
    return pred, names, labels, mask, groups


def load_rewardbench_predictions(path: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(subsets, chosen_pred [P, A], rejected_pred [P, A], attributes) from a ``*.rewardbench_predictions.jsonl``."""
    recs = _records(path)
    names = _attribute_names(path, recs, "chosen")
    chosen = np.asarray([_vector(path, n, r, "chosen", names) for n, r in recs], np.float64)
    rejected = np.asarray([_vector(path, n, r, "rejected", names) for n, r in recs], np.float64)
    return [subset_of(r) for _, r in recs], chosen, rejected, names


# ---------------------------------------------------------------- finding and copying


def output_stem(path: str) -> str:
    """``results.json`` / ``results`` / ``results.helpsteer_predictions.jsonl`` -> ``results``."""
    for suffix in (HELPSTEER_SUFFIX, REWARDBENCH_SUFFIX, REWARDBENCH2_SUFFIX, ".json"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def find_predictions(path: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(helpsteer predictions, rewardbench predictions, earlier results json) for ``--from-predictions``:
    the results json or its stem, one of its predictions files, or a training run folder."""
    if os.path.isdir(path):
        hs = layout.predictions_path(path, "validation")
        if os.path.isfile(hs):  # a training run folder: its kept checkpoint's validation predictions
            return hs, None, None
        raise InputError(
            f"--from-predictions: {path} is a folder without predictions/validation.jsonl; "
            f"give the results json (or its stem) of an earlier rm-jax eval"
        )
    stem = output_stem(path)
    hs, rb, js = stem + HELPSTEER_SUFFIX, stem + REWARDBENCH_SUFFIX, stem + ".json"
    found = [p if os.path.isfile(p) else None for p in (hs, rb, js)]
    if found[0] is None and found[1] is None and not os.path.isfile(stem + REWARDBENCH2_SUFFIX):
        raise InputError(f"--from-predictions: no saved predictions for {path!r} (looked for {hs} and {rb})")
    return found[0], found[1], found[2]


def copy_predictions(sources: Mapping[str, Optional[str]], stem: str) -> None:
    """Keep a re-weighted results json usable as a --from-predictions source itself."""
    suffixes = {"helpsteer": HELPSTEER_SUFFIX, "rewardbench": REWARDBENCH_SUFFIX, "rewardbench2": REWARDBENCH2_SUFFIX}
    for key, suffix in suffixes.items():
        src = sources.get(key)
        if not src:
            continue
        dst = stem + suffix
        if os.path.abspath(src) == os.path.abspath(dst):
            continue
        with open(src, encoding="utf-8") as f:
            text = f.read()
        write_text(dst, text)
