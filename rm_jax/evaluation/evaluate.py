"""Evaluating a reward model: HelpSteer2 metrics and RewardBench-format accuracy (``rm-jax eval``).

The data flow, one module a step:

  rows -> :func:`predict_encoded` (the one prediction step: over-length policy, packed forward passes
  through :class:`rm_jax.engine.scoring.Scorer`, the same path as ``rm-jax score``)
       -> metrics from predictions (:mod:`.metrics`, :mod:`.rewardbench`; weights from :mod:`.weights`)
       -> prediction files (:mod:`.predictions`) and readable tables (:mod:`.reports`).

* HelpSteer2-format rows (``prompt``, ``response``, five attribute labels): per-attribute
  MSE / RMSE / MAE / Pearson / Spearman (also for predictions rounded to 0..4), the quadratic-weighted
  kappa of the rounded predictions against the integer labels (``qwk``, with ``qwk_excluded`` labels
  that are not integers 0..4), and pairwise accuracy on the prompt pairs under every reward-weight
  preset plus ``weights``.
* RewardBench-format pairs (``prompt``, ``chosen``, ``rejected``, ``subset``[, ``id``]):
  per-subset accuracy, count-weighted section scores and the overall mean of sections
  (:func:`rm_jax.evaluation.rewardbench.score_pairs`) for the ``weights`` reward, and every preset
  under ``rewardbench.presets``. Every pair is scored: a response longer than ``seq_len`` on its own
  is cut from the left (the head still reads its end) and counted as ``response_cut``, so section
  scores stay comparable with the leaderboard; ``drop_long_pairs`` drops such pairs instead.

:func:`reweight_from_predictions` recomputes every metric from saved predictions with new weights and
no model. All metric numbers come from the same functions whichever way the predictions were made.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES, WeightSpec
from rm_jax.core.errors import InputError, ModelLoadError
from rm_jax.core.files import write_json, write_jsonl
from rm_jax.data.pipeline import Encoded, encode_helpsteer, encode_pairs, resolve_pairs_source, resolve_source
from rm_jax.data.prefix_sharing import SharePrompts
from rm_jax.data.rewardbench2_sets import RB2Set, flatten, load_rewardbench2
from rm_jax.data.sources import load_helpsteer, load_pairs
from rm_jax.engine.scoring import Scorer
from rm_jax.evaluation.metrics import helpsteer_metrics
from rm_jax.evaluation.predictions import (
    HELPSTEER_SUFFIX,
    REWARDBENCH2_SUFFIX,
    REWARDBENCH_SUFFIX,
    find_predictions,
    helpsteer_records,
    load_helpsteer_predictions,
    load_rewardbench_predictions,
    output_stem,
    rewardbench_records,
    subset_of,
)
from rm_jax.evaluation.rewardbench import rewardbench_metrics
from rm_jax.evaluation.rewardbench2 import load_rewardbench2_scores, rewardbench2_metrics, rewardbench2_records
from rm_jax.evaluation.weights import check_weights, default_weights, weights_record
from rm_jax.runs import layout
from rm_jax.runs.read import is_run_dir, load_scoring_model

DEFAULT_MAX_SEQ_LEN = 4096  # NeMo-Aligner's RM sequence length for HelpSteer2; capped by the model's positions


def _limit(model: Any, seq_len: Optional[int]) -> int:
    if seq_len is not None:
        if seq_len < 2:
            raise InputError(f"--seq-len: must be at least 2, got {seq_len}")
        return int(seq_len)
    return int(min(DEFAULT_MAX_SEQ_LEN, model.cfg.max_position_embeddings))


def sequence_limit(model: Any, seq_len: Optional[int]) -> int:
    """``seq_len`` checked, or the default: the model's positions, at most :data:`DEFAULT_MAX_SEQ_LEN`."""
    return _limit(model, seq_len)


def predict_encoded(
    model: Any,
    enc: Encoded,
    limit: int,
    batch_rows: int = 16,
    max_segments: int = 16,
    progress: bool = True,
    desc: str = "scoring",
    share_prompts: SharePrompts = "auto",
    sharing: Optional[dict] = None,
) -> np.ndarray:
    """Attribute predictions [len(enc.ids), A] for encoded examples, packed no wider than the data needs;
    examples of one prompt group (``enc.group``) share their prompt's tokens per ``share_prompts``."""
    return predict_ids(
        model, list(enc.ids), limit, batch_rows, max_segments, progress, desc, list(enc.group), share_prompts, sharing
    )


def predict_ids(
    model: Any,
    ids: Sequence[np.ndarray],
    limit: int,
    batch_rows: int = 16,
    max_segments: int = 16,
    progress: bool = True,
    desc: str = "scoring",
    groups: Optional[Sequence[Any]] = None,
    share_prompts: SharePrompts = "auto",
    sharing: Optional[dict] = None,
) -> np.ndarray:
    """Attribute predictions [len(ids), A] for token id sequences (each at most ``limit`` long). ``groups``
    (a key per sequence, equal for one prompt) and ``share_prompts``: rm_jax.data.prefix_sharing; what
    sharing saved is written into ``sharing`` when given (empty when it was off)."""
    if not ids:
        return np.zeros((0, model.cfg.num_labels), np.float32)
    longest = max(len(x) for x in ids)
    pack_len = min(limit, ((longest + 63) // 64) * 64)
    scorer = Scorer(model.cfg, model.params, model.mesh, model.pad_id)
    pred = scorer.predict(
        list(ids),
        pack_len,
        batch_rows,
        max_segments,
        packing=True,
        progress=progress,
        desc=desc,
        groups=groups,
        share=share_prompts,
    )
    if sharing is not None and scorer.share_report is not None:
        sharing.update(scorer.share_report.as_dict())
    return pred


def _counts(enc: Encoded, scored: int, limit: int, sharing: Optional[dict] = None) -> dict:
    return {
        "rows": enc.report.rows,
        "scored": int(scored),
        "truncated": enc.report.truncated,
        "response_cut": enc.report.response_cut,
        "dropped": enc.report.dropped,
        "seq_len": limit,
        **({"sharing": sharing} if sharing else {}),
    }


def evaluate_helpsteer(
    model: Any,
    rows: Sequence[dict],
    weights: Optional[WeightSpec] = None,
    *,
    seq_len: Optional[int] = None,
    batch_rows: int = 16,
    max_segments: int = 16,
    overlength: str = "truncate",
    progress: bool = True,
    share_prompts: SharePrompts = "auto",
) -> tuple[dict, list[dict]]:
    """Score HelpSteer2 rows and compute their metrics.

    ``model`` is a :class:`rm_jax.runs.read.ScoringModel`. Rows longer than ``seq_len`` (default: the
    model's positions, at most 4096) have their prompt cut from the left; a row whose response
    alone does not fit is dropped (counted). Returns ``(report, predictions)``: the report holds
    ``per_attribute``, ``pairwise`` and ``counts``; predictions are the records of
    :func:`rm_jax.evaluation.predictions.helpsteer_records`.
    """
    attributes = list(model.attributes)
    weights = default_weights(attributes) if weights is None else weights
    check_weights(weights, attributes)
    limit = _limit(model, seq_len)
    enc = encode_helpsteer(rows, model.tokenizer, limit, model.template, overlength, attributes=ATTRIBUTES)
    sharing: dict = {}
    pred = predict_encoded(model, enc, limit, batch_rows, max_segments, progress, "helpsteer", share_prompts, sharing)
    report = helpsteer_metrics(pred, attributes, enc.labels, enc.label_mask, enc.group, weights)
    report["counts"] = _counts(enc, len(enc.ids), limit, sharing)
    return report, helpsteer_records(enc.source_rows, enc.group, pred, attributes, enc.labels, enc.label_mask)


def evaluate_rewardbench(
    model: Any,
    rows: Sequence[dict],
    weights: Optional[WeightSpec] = None,
    *,
    seq_len: Optional[int] = None,
    batch_rows: int = 16,
    max_segments: int = 16,
    overlength: str = "truncate",
    drop_long_pairs: bool = False,
    progress: bool = True,
    share_prompts: SharePrompts = "auto",
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Score RewardBench-format pairs (rows as :func:`rm_jax.data.sources.load_pairs` gives them).

    Returns ``(report, chosen_pred, rejected_pred)``: the :func:`rewardbench_metrics` report plus
    ``counts``, and attribute predictions [len(rows), A] of each row's chosen and rejected
    response, aligned with ``rows``. Over-long conversations have their prompt cut from the left; a
    response that alone does not fit is cut from the left too (``counts.response_cut``), unless
    ``drop_long_pairs``: then its pair is dropped (NaN predictions, left out of every score, counted).
    """
    attributes = list(model.attributes)
    weights = default_weights(attributes) if weights is None else weights
    check_weights(weights, attributes)
    limit = _limit(model, seq_len)
    enc = encode_pairs(
        rows,
        model.tokenizer,
        limit,
        model.template,
        overlength,
        n_attributes=len(attributes),
        cut_response=not drop_long_pairs,
    )
    sharing: dict = {}
    pred = predict_encoded(model, enc, limit, batch_rows, max_segments, progress, "rewardbench", share_prompts, sharing)
    position = {r.get("_row", i): i for i, r in enumerate(rows)}
    scored = np.asarray([position[int(src)] for src in enc.source_rows[0::2]], np.int64)
    chosen = np.full((len(rows), len(attributes)), np.nan, np.float32)
    rejected = np.full_like(chosen, np.nan)
    chosen[scored], rejected[scored] = pred[0::2], pred[1::2]
    report = rewardbench_metrics(
        [subset_of(rows[i]) for i in scored], chosen[scored], rejected[scored], attributes, weights
    )
    report["counts"] = _counts(enc, len(scored), limit, sharing)
    return report, chosen, rejected


def predict_rewardbench2(
    model: Any,
    sets: Sequence[RB2Set],
    *,
    seq_len: Optional[int] = None,
    batch_rows: int = 16,
    max_segments: int = 16,
    drop_long_pairs: bool = False,
    progress: bool = True,
    share_prompts: SharePrompts = "auto",
) -> tuple[np.ndarray, dict]:
    """Attribute predictions [completions, A] of every completion of ``sets`` (flattened as run_v2 does:
    set by set, chosen first) and the length counts.

    Over-long conversations have their prompt cut from the left; a completion that alone does not fit is
    cut from the left too (``response_cut``), or with ``drop_long_pairs`` its whole set is dropped (NaN
    predictions for all its completions; ``dropped_sets``), since best-of-N without one completion is
    another question. Each distinct token sequence is scored once, so identical completions get
    bit-identical rewards and run_v2's exact-tie rule sees them tie (packing may otherwise place them
    differently and change the last bits).
    """
    limit = _limit(model, seq_len)
    rows = flatten(sets)
    pred, counts = predict_conversations(
        model, rows, limit, not drop_long_pairs, batch_rows, max_segments, progress, "rewardbench2", share_prompts
    )
    bounds = np.cumsum([0] + [len(s.completions) for s in sets])
    dropped_sets = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        if np.isnan(pred[a:b]).any():
            pred[a:b] = np.nan
            dropped_sets += 1
    counts = {
        "sets": len(sets),
        "scored_sets": len(sets) - dropped_sets,
        "completions": counts.pop("rows"),
        **counts,
        "dropped_sets": dropped_sets,
    }
    return pred, counts


def predict_conversations(
    model: Any,
    rows: Sequence[dict],
    limit: int,
    cut_response: bool = True,
    batch_rows: int = 16,
    max_segments: int = 16,
    progress: bool = True,
    desc: str = "scoring",
    share_prompts: SharePrompts = "auto",
) -> tuple[np.ndarray, dict]:
    """Attribute predictions [len(rows), A] of ``{"prompt", "response"}`` rows (NaN for a dropped row) and
    length counts. Over-long prompts are cut from the left; a response that alone does not fit is cut
    from the left (``cut_response``) or dropped. Each distinct token sequence is scored once; rows with one
    prompt text share its tokens per ``share_prompts`` (rm_jax.data.prefix_sharing)."""
    rows = [dict(r, _row=i) for i, r in enumerate(rows)]
    enc = encode_helpsteer(
        rows, model.tokenizer, limit, model.template, "truncate", attributes=(), cut_response=cut_response
    )
    unique: dict[bytes, int] = {}
    which = np.empty(len(enc.ids), np.int64)
    prompt_of: list[str] = []
    for j, x in enumerate(enc.ids):
        which[j] = unique.setdefault(np.asarray(x, np.int32).tobytes(), len(unique))
        if which[j] == len(prompt_of):
            prompt_of.append(str(rows[int(enc.source_rows[j])].get("prompt")))
    distinct = [np.frombuffer(k, np.int32) for k in unique]
    sharing: dict = {}
    pred_unique = predict_ids(
        model, distinct, limit, batch_rows, max_segments, progress, desc, prompt_of, share_prompts, sharing
    )
    pred = np.full((len(rows), len(model.attributes)), np.nan, np.float32)
    pred[enc.source_rows] = pred_unique[which]
    counts = {
        "rows": len(rows),
        "distinct_conversations": len(unique),
        "truncated": enc.report.truncated,
        "response_cut": enc.report.response_cut,
        "dropped_completions": enc.report.dropped,
        "seq_len": limit,
        **({"sharing": sharing} if sharing else {}),
    }
    return pred, counts


def evaluate_rewardbench2(
    model: Any,
    sets: Sequence[RB2Set],
    weights: Optional[WeightSpec] = None,
    **opts: Any,
) -> tuple[dict, np.ndarray]:
    """RewardBench 2 scores (:func:`rm_jax.evaluation.rewardbench2.rewardbench2_metrics`) of ``model`` on
    ``sets`` plus ``counts``; and the per-completion predictions of :func:`predict_rewardbench2`."""
    attributes = list(model.attributes)
    weights = default_weights(attributes) if weights is None else weights
    check_weights(weights, attributes)
    pred, counts = predict_rewardbench2(model, sets, **opts)
    bounds = np.cumsum([0] + [len(s.completions) for s in sets])
    keep = [i for i in range(len(sets)) if not np.isnan(pred[bounds[i]]).any()]
    rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in keep]) if keep else np.zeros(0, np.int64)
    if not keep:
        raise InputError("RewardBench 2: every set was dropped for length (raise --seq-len)")
    report = rewardbench2_metrics([sets[i] for i in keep], pred[rows], attributes, weights)
    report["counts"] = counts
    return report, pred


def reweight_from_predictions(path: str, weights: Optional[WeightSpec] = None) -> dict:
    """Every metric of an earlier ``rm-jax eval`` recomputed from its saved predictions with
    ``weights`` (default: the model-appropriate default); no model, no forward pass.

    ``path``: the earlier results json, its stem, one of its predictions files, or a training run
    folder (its ``predictions/validation.jsonl``). Model and length counts are copied from the
    earlier results json when it is there.
    """
    hs_path, rb_path, json_path = find_predictions(path)
    rb2_path: Optional[str] = None if os.path.isdir(path) else output_stem(path) + REWARDBENCH2_SUFFIX
    rb2_path = rb2_path if rb2_path and os.path.isfile(rb2_path) else None
    previous: dict = {}
    if json_path:
        try:
            with open(json_path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, json.JSONDecodeError):
            previous = {}
    out: dict[str, Any] = {"from_predictions": {"helpsteer": hs_path, "rewardbench": rb_path, "rewardbench2": rb2_path}}
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
    if rb2_path:
        sets, pred, rb2_attrs = load_rewardbench2_scores(rb2_path)
        if attributes is not None and rb2_attrs != attributes:
            raise InputError(f"{rb2_path}: attributes {rb2_attrs} differ from the other predictions' {attributes}")
        attributes = rb2_attrs
        w = default_weights(attributes) if weights is None else weights
        out["rewardbench2"] = rewardbench2_metrics(sets, pred, attributes, w)
        counts["rewardbench2"] = dict(prev_counts.get("rewardbench2", {}), scored_sets=len(sets))
    assert attributes is not None
    w = default_weights(attributes) if weights is None else weights
    out["weights"] = weights_record(w, attributes)
    out["counts"] = counts
    return _ordered(out)


def _ordered(result: dict) -> dict:
    keys = ("model", "weights", "counts", "per_attribute", "pairwise", "rewardbench", "from_predictions")
    # rewardbench2 and the yardsticks (rm_bench, judgebench, helpsteer3) follow in the order they ran
    return {**{k: result[k] for k in keys if k in result}, **{k: v for k, v in result.items() if k not in keys}}


# ----------------------------------------------------------------------------- a model on data sources


def model_attributes_cheaply(path: str) -> Optional[list[str]]:
    """The attribute names a model folder will load with, read from its metadata only (no weights),
    so ``weights`` can be checked before anything heavy; None when unknown."""
    try:
        if is_run_dir(path):
            with open(layout.meta_path(path), encoding="utf-8") as f:
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


def evaluate_model(
    model_path: str,
    *,
    helpsteer: Optional[str] = None,
    helpsteer_split: str = "validation",
    rewardbench: Optional[str] = None,
    rewardbench_split: str = "filtered",
    rewardbench2: Optional[str] = None,
    rewardbench2_split: Optional[str] = None,
    yardsticks: Optional[Mapping[str, tuple[str, Optional[str]]]] = None,
    weights: Optional[WeightSpec] = None,
    output: str = "eval_results.json",
    seq_len: Optional[int] = None,
    batch_rows: int = 16,
    max_segments: int = 16,
    template: Optional[str] = None,
    dtype: str = "float32",
    drop_long_pairs: bool = False,
    progress: bool = True,
    step: Optional[int] = None,
    share_prompts: SharePrompts = "auto",
) -> tuple[dict, str]:
    """``rm-jax eval --model``: evaluate on HelpSteer2 rows, RewardBench pairs, RewardBench 2 sets and/or the
    ``yardsticks`` ({name: (source, split)}: rm_bench, judgebench, helpsteer3), write the results json and the
    prediction files next to it; returns (results, results path). Everything that can be checked without
    the model's weights (weights, template, data files) is checked first."""
    from rm_jax.evaluation.yardsticks import TITLES, evaluate_yardstick, load_yardstick

    yardsticks = dict(yardsticks or {})
    if not helpsteer and not rewardbench and not rewardbench2 and not yardsticks:
        raise InputError(
            "nothing to evaluate: give --helpsteer FILE|HUB_ID, --rewardbench FILE|HUB_ID, --rewardbench2 SRC, "
            "--rm-bench SRC, --judgebench SRC and/or --helpsteer3 SRC"
        )
    if weights is not None:
        check_weights(weights, model_attributes_cheaply(model_path) or ATTRIBUTES)
    if template:
        from rm_jax.data.conversation import resolve_template

        try:
            resolve_template(None, template)  # a built-in name or a literal jinja template
        except ValueError as e:
            raise InputError(f"--template: {e}") from None
    hs_rows = load_helpsteer(resolve_source(helpsteer), helpsteer_split).rows if helpsteer else None
    rb_rows = load_pairs(resolve_pairs_source(rewardbench), rewardbench_split).rows if rewardbench else None
    if hs_rows is not None and not hs_rows:
        raise InputError(f"--helpsteer {helpsteer}: no rows")
    if rb_rows is not None and not rb_rows:
        raise InputError(f"--rewardbench {rewardbench}: no rows")
    rb2_sets = load_rewardbench2(rewardbench2, rewardbench2_split) if rewardbench2 else None
    yard_data = {name: load_yardstick(name, src, split) for name, (src, split) in yardsticks.items()}

    try:
        model = load_scoring_model(model_path, dtype=dtype, template=template, step=step)
    except FileNotFoundError as e:
        raise ModelLoadError(f"--model {model_path}: {e}") from None
    attributes = list(model.attributes)
    weights = weights if weights is not None else default_weights(attributes)
    check_weights(weights, attributes)

    out_path = output if output.endswith(".json") else output + ".json"
    stem = output_stem(out_path)
    opts = dict(seq_len=seq_len, batch_rows=batch_rows, max_segments=max_segments, progress=progress)
    result: dict[str, Any] = {
        "model": {"path": os.path.abspath(model_path), "attributes": attributes, "template": template, "dtype": dtype},
        "weights": weights_record(weights, attributes),
        "counts": {},
    }
    if hs_rows is not None:
        rep, preds = evaluate_helpsteer(model, hs_rows, weights, share_prompts=share_prompts, **opts)
        result["counts"]["helpsteer"] = dict(rep.pop("counts"), source=helpsteer, split=helpsteer_split)
        result.update(rep)
        _report_lengths("HelpSteer2 rows", result["counts"]["helpsteer"])
        write_jsonl(stem + HELPSTEER_SUFFIX, preds)
    if rb_rows is not None:
        rep, chosen, rejected = evaluate_rewardbench(
            model, rb_rows, weights, drop_long_pairs=drop_long_pairs, share_prompts=share_prompts, **opts
        )
        result["counts"]["rewardbench"] = dict(rep.pop("counts"), source=rewardbench, split=rewardbench_split)
        result["rewardbench"] = rep
        _report_lengths("RewardBench pairs", result["counts"]["rewardbench"])
        write_jsonl(stem + REWARDBENCH_SUFFIX, rewardbench_records(rb_rows, chosen, rejected, attributes))
    if rb2_sets is not None:
        rep, pred = evaluate_rewardbench2(
            model, rb2_sets, weights, drop_long_pairs=drop_long_pairs, share_prompts=share_prompts, **opts
        )
        result["counts"]["rewardbench2"] = dict(rep.pop("counts"), source=rewardbench2)
        result["rewardbench2"] = rep
        _report_lengths("RewardBench 2 completions", result["counts"]["rewardbench2"])
        write_jsonl(stem + REWARDBENCH2_SUFFIX, rewardbench2_records(rb2_sets, pred, attributes, weights))
    for name, data in yard_data.items():
        rep, records = evaluate_yardstick(model, name, data, weights, **opts)
        src, split = yardsticks[name]
        result["counts"][name] = dict(rep.pop("counts"), source=src, split=split)
        result[name] = rep
        _report_lengths(f"{TITLES[name]} responses", result["counts"][name])
        write_jsonl(f"{stem}.{name}_scores.jsonl", records)
    result = _ordered(result)
    write_json(out_path, result)
    return result, out_path


def _warn(msg: str) -> None:
    print(f"rm-jax eval: warning: {msg}", file=sys.stderr)


def _report_lengths(what: str, c: Mapping[str, Any]) -> None:
    if c.get("truncated"):
        _warn(
            f"{what}: {c['truncated']} conversations longer than {c['seq_len']} tokens had their prompt "
            f"cut from the left"
        )
    if c.get("response_cut"):
        _warn(
            f"{what}: {c['response_cut']} responses longer than {c['seq_len']} tokens on their own were cut "
            f"from the left (the reward reads their end; raise --seq-len to score them whole)"
        )
    if c.get("dropped_sets"):
        _warn(
            f"{what}: {c['dropped_sets']} sets left out: a completion alone is longer than {c['seq_len']} tokens "
            f"(raise --seq-len)"
        )
    if c.get("dropped"):
        _warn(
            f"{what}: {c['dropped']} left out: a response alone is longer than {c['seq_len']} tokens (raise --seq-len)"
        )
