"""``rm-jax eval``: HelpSteer2 metrics and RewardBench-format accuracy for a reward model.

Two evaluations, either or both in one call:

* HelpSteer2-format rows (``prompt``, ``response``, five attribute labels): per-attribute
  MSE / RMSE / MAE / Pearson / Spearman (also for predictions rounded to 0..4), and pairwise
  accuracy on the prompt pairs under every reward-weight preset plus ``--weights``.
* RewardBench-format pairs (``prompt``, ``chosen``, ``rejected``, ``subset``[, ``id``]):
  per-subset accuracy, count-weighted section scores and the overall mean of sections
  (:func:`rm_jax.rewardbench.score_pairs`) for the ``--weights`` reward, and every preset
  under ``rewardbench.presets``.

Every forward pass goes through :class:`rm_jax.scoring.Scorer` (packed, batched), the same
path as ``rm-jax score``. Per-row attribute predictions are written next to the results
(``<stem>.helpsteer_predictions.jsonl``, ``<stem>.rewardbench_predictions.jsonl``), and
``--from-predictions`` recomputes every metric from them with new weights and no model.
All metric numbers come from the same functions whichever way the predictions were made.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from rm_jax.attributes import ATTRIBUTES, REWARD_PRESETS, WeightSpec, resolve_reward_weights
from rm_jax.metrics import attribute_metrics, format_attribute_table, pairwise_accuracy
from rm_jax.rewardbench import format_rewardbench, score_pairs
from rm_jax.files import write_json, write_jsonl, write_text  # noqa: F401  (re-exported)
from rm_jax.score_cmd import InputError

DEFAULT_WEIGHTS = "70b-rewardbench"
DEFAULT_MAX_SEQ_LEN = 4096  # NeMo-Aligner's RM sequence length for HelpSteer2; capped by the model's positions
HELPSTEER_SUFFIX = ".helpsteer_predictions.jsonl"
REWARDBENCH_SUFFIX = ".rewardbench_predictions.jsonl"
NO_SUBSET = "unlabeled"  # subset name for pairs whose row has no ``subset``


# ----------------------------------------------------------------------------- weights


def default_weights(attributes: Sequence[str]) -> str:
    """``70b-rewardbench`` for the five HelpSteer2 attributes, ``1`` for a one-attribute model."""
    if tuple(attributes) == ATTRIBUTES:
        return DEFAULT_WEIGHTS
    if len(attributes) == 1:
        return "1"
    raise InputError(f"--weights: the model predicts {len(attributes)} attributes ({', '.join(attributes)}), "
                     f"not the five HelpSteer2 ones; give {len(attributes)} comma-separated weights")


def check_weights(spec: WeightSpec, attributes: Sequence[str]) -> np.ndarray:
    """The weight vector for ``attributes``, or an :class:`InputError` naming ``--weights``."""
    try:
        return resolve_reward_weights(spec, n_attributes=len(attributes))
    except ValueError as e:
        raise InputError(f"--weights: {e} (attributes: {', '.join(attributes)})") from None


def weight_sets(spec: WeightSpec, attributes: Sequence[str]) -> dict[str, np.ndarray]:
    """Every preset (when the attributes are HelpSteer2's five, in order) plus the user's weights,
    keyed by name (a preset's name, or ``w<v1>_<v2>...``)."""
    out: dict[str, np.ndarray] = {}
    if tuple(attributes) == ATTRIBUTES:
        out.update({name: np.asarray(w, np.float64) for name, w in REWARD_PRESETS.items()})
    out[_label(spec, attributes)] = check_weights(spec, attributes)
    return out


def _label(spec: WeightSpec, attributes: Sequence[str]) -> str:
    if isinstance(spec, str) and spec.strip() in REWARD_PRESETS:
        return spec.strip()
    return "w" + "_".join(f"{x:g}" for x in check_weights(spec, attributes))


def weights_record(spec: WeightSpec, attributes: Sequence[str]) -> dict[str, Any]:
    w = check_weights(spec, attributes)
    return {"spec": spec if isinstance(spec, str) else [float(x) for x in spec], "label": _label(spec, attributes),
            "values": {a: float(x) for a, x in zip(attributes, w)}}


# ----------------------------------------------------------------------------- metrics from predictions


def helpsteer_metrics(pred: np.ndarray, attributes: Sequence[str], labels: np.ndarray, label_mask: np.ndarray,
                      groups: Sequence[int], weights: WeightSpec) -> dict[str, Any]:
    """Metrics of predictions ``pred`` [N, len(attributes)] against HelpSteer2 ``labels`` [N, 5]
    (columns in :data:`ATTRIBUTES` order, ``label_mask`` 1 where present).

    ``per_attribute``: every model attribute that is a HelpSteer2 attribute. ``pairwise``: per
    weight set, accuracy on prompt groups of exactly two rows with different helpfulness; rows
    whose helpfulness label is missing are left out (their group is then counted as skipped).
    """
    pred = np.asarray(pred, np.float64)
    labels = np.asarray(labels, np.float64)
    label_mask = np.asarray(label_mask) != 0
    groups = np.asarray(groups)
    model_cols = [j for j, a in enumerate(attributes) if a in ATTRIBUTES]
    label_cols = [ATTRIBUTES.index(attributes[j]) for j in model_cols]
    per_attribute = attribute_metrics(pred[:, model_cols], labels[:, label_cols], label_mask[:, label_cols],
                                      names=[attributes[j] for j in model_cols]) if model_cols else {}
    h = ATTRIBUTES.index("helpfulness")
    has_help = label_mask[:, h]
    pairwise = {name: pairwise_accuracy((pred @ w)[has_help], labels[has_help, h], groups[has_help].tolist())
                for name, w in weight_sets(weights, attributes).items()}
    return {"per_attribute": per_attribute, "pairwise": pairwise}


def rewardbench_metrics(subsets: Sequence[str], chosen_pred: np.ndarray, rejected_pred: np.ndarray,
                        attributes: Sequence[str], weights: WeightSpec) -> dict[str, Any]:
    """:func:`score_pairs` for the ``weights`` reward (a pair is right iff chosen > rejected),
    plus every preset's sections / overall / subsets under ``presets``."""
    chosen_pred = np.asarray(chosen_pred, np.float64).reshape(len(subsets), len(attributes))
    rejected_pred = np.asarray(rejected_pred, np.float64).reshape(len(subsets), len(attributes))
    w = check_weights(weights, attributes)
    rc, rr = chosen_pred @ w, rejected_pred @ w
    result = score_pairs(list(subsets), rc, rr)
    result["n_reward_ties"] = int(np.sum(rc == rr))
    result["presets"] = {}
    for name, pw in weight_sets(weights, attributes).items():
        r = score_pairs(list(subsets), chosen_pred @ pw, rejected_pred @ pw)
        result["presets"][name] = {k: r[k] for k in ("overall", "sections", "subsets", "unknown_subsets")}
    return result


# ----------------------------------------------------------------------------- forward passes


def _limit(model: Any, seq_len: Optional[int]) -> int:
    if seq_len is not None:
        if seq_len < 2:
            raise InputError(f"--seq-len: must be at least 2, got {seq_len}")
        return int(seq_len)
    return int(min(DEFAULT_MAX_SEQ_LEN, model.cfg.max_position_embeddings))


def _predict(model: Any, ids: Sequence[np.ndarray], limit: int, batch_rows: int, max_segments: int,
             progress: bool, desc: str) -> np.ndarray:
    from rm_jax.scoring import Scorer
    if not ids:
        return np.zeros((0, model.cfg.num_labels), np.float32)
    longest = max(len(x) for x in ids)
    pack_len = min(limit, ((longest + 63) // 64) * 64)  # no wider than the data needs
    scorer = Scorer(model.cfg, model.params, model.mesh, model.pad_id)
    return scorer.predict(list(ids), pack_len, batch_rows, max_segments, packing=True, progress=progress, desc=desc)


def _warn(msg: str) -> None:
    print(f"rm-jax eval: warning: {msg}", file=sys.stderr)


def evaluate_helpsteer(model: Any, rows: Sequence[dict], weights: Optional[WeightSpec] = None, *,
                       seq_len: Optional[int] = None, batch_rows: int = 16, max_segments: int = 16,
                       overlength: str = "truncate", progress: bool = True) -> tuple[dict, list[dict]]:
    """Score HelpSteer2 rows and compute their metrics.

    ``model`` is a :class:`rm_jax.runs.ScoringModel`. Rows longer than ``seq_len`` (default: the
    model's positions, at most 4096) have their prompt cut from the left; a row whose response
    alone does not fit is dropped. Returns ``(report, predictions)``: the report holds
    ``per_attribute``, ``pairwise`` and ``counts``; predictions are one record per scored row,
    ``{"row", "group", "pred": {attribute: float}, "label": {attribute: int | None}}``.
    """
    from rm_jax.data.pipeline import encode_helpsteer
    attributes = list(model.attributes)
    weights = default_weights(attributes) if weights is None else weights
    check_weights(weights, attributes)
    limit = _limit(model, seq_len)
    enc = encode_helpsteer(rows, model.tokenizer, limit, model.template, overlength, attributes=ATTRIBUTES)
    pred = _predict(model, enc.ids, limit, batch_rows, max_segments, progress, "helpsteer")
    report = helpsteer_metrics(pred, attributes, enc.labels, enc.label_mask, enc.group, weights)
    report["counts"] = {"rows": enc.report.rows, "scored": len(enc.ids), "truncated": enc.report.truncated,
                        "dropped": enc.report.dropped, "seq_len": limit}
    predictions = [
        {"row": int(enc.source_rows[i]), "group": int(enc.group[i]),
         "pred": {a: float(pred[i, j]) for j, a in enumerate(attributes)},
         "label": {a: (int(enc.labels[i, k]) if enc.label_mask[i, k] else None) for k, a in enumerate(ATTRIBUTES)}}
        for i in range(len(enc.ids))
    ]
    return report, predictions


def evaluate_rewardbench(model: Any, rows: Sequence[dict], weights: Optional[WeightSpec] = None, *,
                         seq_len: Optional[int] = None, batch_rows: int = 16, max_segments: int = 16,
                         overlength: str = "truncate", progress: bool = True
                         ) -> tuple[dict, np.ndarray, np.ndarray]:
    """Score RewardBench-format pairs (rows as :func:`rm_jax.data.sources.load_pairs` gives them).

    Returns ``(report, chosen_pred, rejected_pred)``: the :func:`rewardbench_metrics` report plus
    ``counts``, and attribute predictions [len(rows), A] of each row's chosen and rejected
    response, aligned with ``rows``. Over-long conversations have their prompt cut from the left;
    a pair is dropped (NaN predictions, left out of every score, counted in ``counts``) only
    if one of its responses alone does not fit ``seq_len``.
    """
    from rm_jax.data.pipeline import encode_pairs
    attributes = list(model.attributes)
    weights = default_weights(attributes) if weights is None else weights
    check_weights(weights, attributes)
    limit = _limit(model, seq_len)
    enc = encode_pairs(rows, model.tokenizer, limit, model.template, overlength, n_attributes=len(attributes))
    pred = _predict(model, enc.ids, limit, batch_rows, max_segments, progress, "rewardbench")
    position = {r.get("_row", i): i for i, r in enumerate(rows)}
    scored = np.asarray([position[int(src)] for src in enc.source_rows[0::2]], np.int64)
    chosen = np.full((len(rows), len(attributes)), np.nan, np.float32)
    rejected = np.full_like(chosen, np.nan)
    chosen[scored], rejected[scored] = pred[0::2], pred[1::2]
    report = rewardbench_metrics([_subset(rows[i]) for i in scored], chosen[scored], rejected[scored],
                                 attributes, weights)
    report["counts"] = {"rows": enc.report.rows, "scored": int(len(scored)), "truncated": enc.report.truncated,
                        "dropped": enc.report.dropped, "seq_len": limit}
    return report, chosen, rejected


def _subset(row: Mapping[str, Any]) -> str:
    return str(row.get("subset") or NO_SUBSET)


def rewardbench_records(rows: Sequence[dict], chosen_pred: np.ndarray, rejected_pred: np.ndarray,
                        attributes: Sequence[str]) -> list[dict]:
    """One predictions-file record per scored pair: ``{"row", "id", "subset", "chosen", "rejected"}``."""
    out = []
    for i, r in enumerate(rows):
        if np.isnan(chosen_pred[i]).any():
            continue  # dropped as over-long
        out.append({"row": int(r.get("_row", i)), "id": r.get("id"), "subset": _subset(r),
                    "chosen": {a: float(v) for a, v in zip(attributes, chosen_pred[i])},
                    "rejected": {a: float(v) for a, v in zip(attributes, rejected_pred[i])}})
    return out


# ----------------------------------------------------------------------------- files


def output_stem(path: str) -> str:
    """``results.json`` / ``results`` / ``results.helpsteer_predictions.jsonl`` -> ``results``."""
    for suffix in (HELPSTEER_SUFFIX, REWARDBENCH_SUFFIX, ".json"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def _read_jsonl(path: str) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}: line {lineno}: expected a JSON object")
            out.append(rec)
    return out


def _attribute_names(path: str, records: Sequence[dict], key: str) -> list[str]:
    if not records:
        raise InputError(f"{path}: no predictions")
    names = list(records[0].get(key) or {})
    if not names:
        raise InputError(f"{path}: line 1: no '{key}' predictions")
    return names


def _vector(path: str, lineno: int, rec: dict, key: str, names: Sequence[str]) -> list[float]:
    d = rec.get(key)
    if not isinstance(d, dict) or list(d) != list(names):
        raise InputError(f"{path}: record {lineno}: '{key}' must hold the attributes {', '.join(names)}")
    return [float(d[a]) for a in names]


def load_helpsteer_predictions(path: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(pred [N, A], attributes, labels [N, 5], label_mask [N, 5], groups [N]) from a
    ``*.helpsteer_predictions.jsonl`` (or a training run's ``predictions/validation.jsonl``)."""
    recs = _read_jsonl(path)
    names = _attribute_names(path, recs, "pred")
    pred = np.asarray([_vector(path, i, r, "pred", names) for i, r in enumerate(recs, 1)], np.float64)
    labels = np.zeros((len(recs), len(ATTRIBUTES)), np.float64)
    mask = np.zeros_like(labels)
    for i, r in enumerate(recs):
        lab = r.get("label") or {}
        for k, a in enumerate(ATTRIBUTES):
            if lab.get(a) is not None:
                labels[i, k], mask[i, k] = float(lab[a]), 1.0
    if "group" not in recs[0]:
        raise InputError(f"{path}: record 1: no 'group' (the prompt pair id)")
    groups = np.asarray([int(r["group"]) for r in recs], np.int64)
    return pred, names, labels, mask, groups


def load_rewardbench_predictions(path: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(subsets, chosen_pred [P, A], rejected_pred [P, A], attributes) from a ``*.rewardbench_predictions.jsonl``."""
    recs = _read_jsonl(path)
    names = _attribute_names(path, recs, "chosen")
    chosen = np.asarray([_vector(path, i, r, "chosen", names) for i, r in enumerate(recs, 1)], np.float64)
    rejected = np.asarray([_vector(path, i, r, "rejected", names) for i, r in enumerate(recs, 1)], np.float64)
    subsets = [str(r.get("subset") or NO_SUBSET) for r in recs]
    return subsets, chosen, rejected, names


def find_predictions(path: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(helpsteer predictions, rewardbench predictions, earlier results json) for ``--from-predictions``:
    the results json or its stem, one of its predictions files, or a training run folder."""
    if os.path.isdir(path):
        hs = os.path.join(path, "predictions", "validation.jsonl")
        if os.path.isfile(hs):  # a training run folder: its kept checkpoint's validation predictions
            return hs, None, None
        raise InputError(f"--from-predictions: {path} is a folder without predictions/validation.jsonl; "
                         f"give the results json (or its stem) of an earlier rm-jax eval")
    stem = output_stem(path)
    hs, rb, js = stem + HELPSTEER_SUFFIX, stem + REWARDBENCH_SUFFIX, stem + ".json"
    found = [p if os.path.isfile(p) else None for p in (hs, rb, js)]
    if found[0] is None and found[1] is None:
        raise InputError(f"--from-predictions: no saved predictions for {path!r} (looked for {hs} and {rb})")
    return found[0], found[1], found[2]


def reweight_from_predictions(path: str, weights: Optional[WeightSpec] = None) -> dict:
    """Every metric of an earlier ``rm-jax eval`` recomputed from its saved predictions with
    ``weights`` (default: the model-appropriate default); no model, no forward pass.

    ``path``: the earlier results json, its stem, one of its predictions files, or a training run
    folder (its ``predictions/validation.jsonl``). Model and length counts are copied from the
    earlier results json when it is there.
    """
    hs_path, rb_path, json_path = find_predictions(path)
    previous: dict = {}
    if json_path:
        try:
            with open(json_path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, json.JSONDecodeError):
            previous = {}
    out: dict[str, Any] = {"from_predictions": {"helpsteer": hs_path, "rewardbench": rb_path}}
    if isinstance(previous, dict) and "model" in previous:
        out["model"] = previous["model"]
    prev_counts = previous.get("counts", {}) if isinstance(previous, dict) else {}
    counts: dict[str, Any] = {}
    attributes: Optional[list[str]] = None
    if hs_path:
        pred, attributes, labels, mask, groups = load_helpsteer_predictions(hs_path)
        w = default_weights(attributes) if weights is None else weights
        rep = helpsteer_metrics(pred, attributes, labels, mask, groups, w)
        out.update(rep)
        counts["helpsteer"] = dict(prev_counts.get("helpsteer", {}), scored=int(len(pred)))
    if rb_path:
        subsets, chosen, rejected, rb_attrs = load_rewardbench_predictions(rb_path)
        if attributes is not None and rb_attrs != attributes:
            raise InputError(f"{rb_path}: attributes {rb_attrs} differ from {hs_path}'s {attributes}")
        attributes = rb_attrs
        w = default_weights(attributes) if weights is None else weights
        out["rewardbench"] = rewardbench_metrics(subsets, chosen, rejected, attributes, w)
        counts["rewardbench"] = dict(prev_counts.get("rewardbench", {}), scored=int(len(subsets)))
    assert attributes is not None
    w = default_weights(attributes) if weights is None else weights
    out["weights"] = weights_record(w, attributes)
    out["counts"] = counts
    return _ordered(out)


def _ordered(result: dict) -> dict:
    keys = ("model", "weights", "counts", "per_attribute", "pairwise", "rewardbench", "from_predictions")
    return {**{k: result[k] for k in keys if k in result}, **{k: v for k, v in result.items() if k not in keys}}


# ----------------------------------------------------------------------------- printing


def _pct(x: Optional[float]) -> str:
    return f"{'-':>7}" if x is None else f"{100.0 * x:>7.2f}"


def format_pairwise(pairwise: Mapping[str, Mapping[str, Any]], selected: Optional[str] = None) -> str:
    name_w = max([len("weights")] + [len(n) + 2 for n in pairwise])
    header = f"{'weights':<{name_w}} {'acc %':>7} {'pairs':>6} {'right':>6} {'ties':>6} {'skipped':>7}"
    lines = [header, "-" * len(header)]
    for name, r in pairwise.items():
        mark = "* " if name == selected else "  "
        lines.append(f"{mark + name:<{name_w}} {_pct(r['accuracy'])} {r['n_pairs']:>6d} {r['n_correct']:>6d} "
                     f"{r['n_label_ties']:>6d} {r['n_skipped_groups']:>7d}")
    return "\n".join(lines)


def format_presets(presets: Mapping[str, Mapping[str, Any]], selected: Optional[str] = None) -> str:
    sections = ("chat", "chat_hard", "safety", "reasoning")
    name_w = max([len("weights")] + [len(n) + 2 for n in presets])
    header = f"{'weights':<{name_w}} " + " ".join(f"{s:>9}" for s in sections) + f" {'overall':>9}"
    lines = [header, "-" * len(header)]
    for name, r in presets.items():
        mark = "* " if name == selected else "  "
        cells = " ".join(f"{_pct(r['sections'].get(s)):>9}" for s in sections)
        lines.append(f"{mark + name:<{name_w}} {cells} {_pct(r['overall']):>9}")
    return "\n".join(lines)


def format_report(result: Mapping[str, Any]) -> str:
    """Readable tables of a results dict (what ``rm-jax eval`` prints)."""
    label = result.get("weights", {}).get("label")
    parts = []
    counts = result.get("counts", {})
    if "per_attribute" in result:
        c = counts.get("helpsteer", {})
        parts.append(f"HelpSteer2-format rows: {_counts_line(c)}")
        if result["per_attribute"]:
            parts.append(format_attribute_table(result["per_attribute"]))
            rounded = {a: dict(m["rounded"], n=m["n"]) for a, m in result["per_attribute"].items()}
            parts.append("predictions rounded to 0..4:\n" + format_attribute_table(rounded))
        parts.append("pairwise accuracy (more helpful response of a prompt gets the higher reward; "
                     "* = --weights):\n" + format_pairwise(result["pairwise"], label))
    if "rewardbench" in result:
        rb = result["rewardbench"]
        c = counts.get("rewardbench", {})
        parts.append(f"RewardBench-format pairs: {_counts_line(c)}; reward = {label}")
        parts.append(format_rewardbench(rb))
        if rb.get("n_reward_ties"):
            parts.append(f"{rb['n_reward_ties']} pairs with equal rewards (counted wrong)")
        parts.append("all reward-weight presets (section scores, %):\n" + format_presets(rb["presets"], label))
    return "\n\n".join(parts)


def _counts_line(c: Mapping[str, Any]) -> str:
    keys = ("rows", "scored", "truncated", "dropped", "seq_len")
    return ", ".join(f"{k} {c[k]}" for k in keys if k in c) or "-"


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rm-jax eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF *ForSequenceClassification folder or rm_jax run folder")
    ap.add_argument("--helpsteer", help="HelpSteer2-format data: file, folder, hub id, or 'bundled'")
    ap.add_argument("--helpsteer-split", default="validation")
    ap.add_argument("--rewardbench", help="RewardBench-format pairs: file, folder or hub id (allenai/reward-bench)")
    ap.add_argument("--rewardbench-split", default="filtered")
    ap.add_argument("--weights", default=None,
                    help=f"reward weights: a preset ({', '.join(REWARD_PRESETS)}) or w1,...,w5 "
                         f"(default {DEFAULT_WEIGHTS})")
    ap.add_argument("--output", default=None,
                    help="results json (default eval_results.json; with --from-predictions, print only); "
                         "predictions go to <stem>.helpsteer_predictions.jsonl / <stem>.rewardbench_predictions.jsonl")
    ap.add_argument("--seq-len", type=int, default=None,
                    help=f"longest conversation in tokens; longer prompts are cut from the left "
                         f"(default: the model's positions, at most {DEFAULT_MAX_SEQ_LEN})")
    ap.add_argument("--batch-rows", type=int, default=16, help="packed rows per forward pass")
    ap.add_argument("--max-segments", type=int, default=16, help="conversations packed into one row at most")
    ap.add_argument("--template", default=None, help="chat template: the tokenizer's own (default) or 'nemotron'")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--from-predictions", default=None, metavar="PATH",
                    help="recompute all metrics from an earlier eval's saved predictions (its results json or "
                         "stem); no model needed")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _model_attributes_cheaply(path: str) -> Optional[list[str]]:
    """The attribute names a model folder will load with, read from its metadata only (no weights),
    so ``--weights`` can be checked before anything heavy; None when unknown."""
    try:
        from rm_jax.runs import is_run_dir
        if is_run_dir(path):
            with open(os.path.join(path, "model_meta.json"), encoding="utf-8") as f:
                return list(json.load(f)["attributes"])
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            hf = json.load(f)
        archs = hf.get("architectures") or []
        id2label = hf.get("id2label") or {}
        if any(a.endswith("ForSequenceClassification") for a in archs) and id2label:
            return [id2label[k] for k in sorted(id2label, key=int)]
        return list(ATTRIBUTES)
    except Exception:  # the real loader reports a broken folder properly
        return None


def _check_positive(name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise InputError(f"{name}: must be a positive integer, got {value}")


def main(argv: Sequence[str]) -> int:
    a = _parser().parse_args(list(argv))
    _check_positive("--batch-rows", a.batch_rows)
    _check_positive("--max-segments", a.max_segments)
    if a.seq_len is not None and a.seq_len < 2:
        raise InputError(f"--seq-len: must be at least 2, got {a.seq_len}")

    if a.from_predictions:
        if a.model or a.helpsteer or a.rewardbench:
            raise InputError("--from-predictions recomputes metrics from saved predictions: "
                             "do not also give --model, --helpsteer or --rewardbench")
        result = reweight_from_predictions(a.from_predictions, a.weights)
        print(format_report(result))
        if a.output:
            out = a.output if a.output.endswith(".json") else a.output + ".json"
            _copy_predictions(result["from_predictions"], output_stem(out))
            write_json(out, result)
            print(f"\nresults -> {out}")
        return 0

    if not a.model:
        raise InputError("--model is required (or --from-predictions PATH to re-weight an earlier evaluation)")
    if not a.helpsteer and not a.rewardbench:
        raise InputError("nothing to evaluate: give --helpsteer FILE|HUB_ID and/or --rewardbench FILE|HUB_ID")

    # Everything that can be checked without the model's weights is checked first.
    if a.weights is not None:
        check_weights(a.weights, _model_attributes_cheaply(a.model) or ATTRIBUTES)
    if a.template:
        from rm_jax.conversation import resolve_template
        try:
            resolve_template(None, a.template)  # a built-in name or a literal jinja template
        except ValueError as e:
            raise InputError(f"--template: {e}") from None
    from rm_jax.data.pipeline import resolve_source
    from rm_jax.data.sources import load_helpsteer, load_pairs
    hs_rows = load_helpsteer(resolve_source(a.helpsteer), a.helpsteer_split).rows if a.helpsteer else None
    rb_rows = load_pairs(a.rewardbench, a.rewardbench_split).rows if a.rewardbench else None
    if hs_rows is not None and not hs_rows:
        raise InputError(f"--helpsteer {a.helpsteer}: no rows")
    if rb_rows is not None and not rb_rows:
        raise InputError(f"--rewardbench {a.rewardbench}: no rows")

    from rm_jax.runs import load_scoring_model
    try:
        model = load_scoring_model(a.model, dtype=a.dtype, template=a.template)
    except FileNotFoundError as e:
        raise InputError(f"--model {a.model}: {e}") from None
    attributes = list(model.attributes)
    weights = a.weights if a.weights is not None else default_weights(attributes)
    check_weights(weights, attributes)

    out_path = a.output or "eval_results.json"
    if not out_path.endswith(".json"):
        out_path += ".json"
    stem = output_stem(out_path)
    opts = dict(seq_len=a.seq_len, batch_rows=a.batch_rows, max_segments=a.max_segments, progress=not a.no_progress)
    result: dict[str, Any] = {
        "model": {"path": os.path.abspath(a.model), "attributes": attributes, "template": a.template,
                  "dtype": a.dtype},
        "weights": weights_record(weights, attributes),
        "counts": {},
    }
    if hs_rows is not None:
        rep, preds = evaluate_helpsteer(model, hs_rows, weights, **opts)
        result["counts"]["helpsteer"] = dict(rep.pop("counts"), source=a.helpsteer, split=a.helpsteer_split)
        result.update(rep)
        _report_lengths("HelpSteer2 rows", result["counts"]["helpsteer"])
        write_jsonl(stem + HELPSTEER_SUFFIX, preds)
    if rb_rows is not None:
        rep, chosen, rejected = evaluate_rewardbench(model, rb_rows, weights, **opts)
        result["counts"]["rewardbench"] = dict(rep.pop("counts"), source=a.rewardbench, split=a.rewardbench_split)
        result["rewardbench"] = rep
        _report_lengths("RewardBench pairs", result["counts"]["rewardbench"])
        write_jsonl(stem + REWARDBENCH_SUFFIX, rewardbench_records(rb_rows, chosen, rejected, attributes))
    result = _ordered(result)
    write_json(out_path, result)
    print(format_report(result))
    print(f"\nresults -> {out_path}")
    return 0


def _report_lengths(what: str, c: Mapping[str, Any]) -> None:
    if c.get("truncated"):
        _warn(f"{what}: {c['truncated']} conversations longer than {c['seq_len']} tokens had their prompt "
              f"cut from the left")
    if c.get("dropped"):
        _warn(f"{what}: {c['dropped']} left out: a response alone is longer than {c['seq_len']} tokens "
              f"(raise --seq-len)")


def _copy_predictions(sources: Mapping[str, Optional[str]], stem: str) -> None:
    """Keep a re-weighted results json usable as a --from-predictions source itself."""
    for key, suffix in (("helpsteer", HELPSTEER_SUFFIX), ("rewardbench", REWARDBENCH_SUFFIX)):
        src = sources.get(key)
        if not src:
            continue
        dst = stem + suffix
        if os.path.abspath(src) == os.path.abspath(dst):
            continue
        with open(src, encoding="utf-8") as f:
            text = f.read()
        write_text(dst, text)
