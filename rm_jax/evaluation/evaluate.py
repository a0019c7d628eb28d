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
from typing import Any, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES, WeightSpec, applicable_presets, weights_note
from rm_jax.core.errors import InputError
from rm_jax.data.pipeline import Encoded, encode_helpsteer, encode_pairs
from rm_jax.data.prefix_sharing import SharePrompts
from rm_jax.data.rewardbench2_sets import RUN_V2_MAX_LENGTH, RB2Set, encode_run_v2, flatten
from rm_jax.engine.scoring import Scorer
from rm_jax.evaluation.gate import is_gate, open_gate, row_weights
from rm_jax.evaluation.metrics import helpsteer_metrics, pairwise_by_weights
from rm_jax.evaluation.predictions import (
    REWARDBENCH2_SUFFIX,
    find_predictions,
    helpsteer_records,
    load_helpsteer_predictions,
    load_rewardbench_predictions,
    output_stem,
    subset_of,
)
from rm_jax.evaluation.rewardbench import rewardbench_metrics
from rm_jax.evaluation.rewardbench2 import (
    load_rewardbench2_scores,
    rewardbench2_metrics,
    with_ties_partners,
)
from rm_jax.evaluation.weights import check_weights, default_weights, weights_record

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
    probs: bool = False,
    share_prompts: SharePrompts = "auto",
    sharing: Optional[dict] = None,
) -> Any:
    """Attribute predictions [len(enc.ids), A] for encoded examples, packed no wider than the data needs;
    with ``probs`` (a distributional head) the pair (predictions, level probabilities [N, A, K]). Examples of
    one prompt group (``enc.group``) share their prompt's tokens per ``share_prompts``."""
    return predict_ids(
        model,
        list(enc.ids),
        limit,
        batch_rows,
        max_segments,
        progress,
        desc,
        probs,
        groups=list(enc.group),
        share_prompts=share_prompts,
        sharing=sharing,
    )


def predict_ids(
    model: Any,
    ids: Sequence[np.ndarray],
    limit: int,
    batch_rows: int = 16,
    max_segments: int = 16,
    progress: bool = True,
    desc: str = "scoring",
    probs: bool = False,
    groups: Optional[Sequence[Any]] = None,
    share_prompts: SharePrompts = "auto",
    sharing: Optional[dict] = None,
) -> Any:
    """Attribute predictions [len(ids), A] for token id sequences (each at most ``limit`` long); with
    ``probs`` the pair (predictions, level probabilities [len(ids), A, K]). ``groups`` (a key per sequence,
    equal for one prompt) and ``share_prompts``: rm_jax.data.prefix_sharing; what sharing saved is written
    into ``sharing`` when given (empty when it was off)."""
    if not ids:
        empty = np.zeros((0, model.cfg.num_outputs), np.float32)
        return (empty, np.zeros((0, model.cfg.num_labels, model.cfg.label_levels), np.float32)) if probs else empty
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
        probs=probs,
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
    gate, base = _gate_and_base(weights, attributes)
    limit = _limit(model, seq_len)
    enc = encode_helpsteer(rows, model.tokenizer, limit, model.template, overlength, attributes=ATTRIBUTES)
    levels = model.cfg.attribute_head != "regression"
    sharing: dict = {}
    out = predict_encoded(
        model, enc, limit, batch_rows, max_segments, progress, "helpsteer", levels, share_prompts, sharing
    )
    pred, probs = out if levels else (out, None)
    report = helpsteer_metrics(pred, attributes, enc.labels, enc.label_mask, enc.group, base, probs)
    if gate is not None:  # the gate's reward: each row's own weights . its attributes
        w = row_weights(gate, model, [rows[int(i)] for i in enc.source_rows], limit, batch_rows, max_segments, progress)
        h = ATTRIBUTES.index("helpfulness")
        groups = list(np.asarray(enc.group).tolist())
        ones = {gate.label: np.ones(len(attributes))}
        report["pairwise"] = _only_presets(report["pairwise"], base)
        report["pairwise"][gate.label] = pairwise_by_weights(
            pred * w, enc.labels[:, h], np.asarray(enc.label_mask)[:, h] != 0, groups, ones
        )[gate.label]
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
    gate, base = _gate_and_base(weights, attributes)
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
    pred = predict_encoded(
        model,
        enc,
        limit,
        batch_rows,
        max_segments,
        progress,
        "rewardbench",
        share_prompts=share_prompts,
        sharing=sharing,
    )
    position = {r.get("_row", i): i for i, r in enumerate(rows)}
    scored = np.asarray([position[int(src)] for src in enc.source_rows[0::2]], np.int64)
    chosen = np.full((len(rows), len(attributes)), np.nan, np.float32)
    rejected = np.full_like(chosen, np.nan)
    chosen[scored], rejected[scored] = pred[0::2], pred[1::2]
    subsets = [subset_of(rows[i]) for i in scored]
    report = rewardbench_metrics(subsets, chosen[scored], rejected[scored], attributes, base)
    if gate is not None:  # a pair's two responses share its prompt, so its weights
        convs = [{"prompt": rows[i]["prompt"], "response": rows[i]["chosen"]} for i in scored]
        w = row_weights(gate, model, convs, limit, batch_rows, max_segments, progress)
        presets = _only_presets(report["presets"], base)
        report = rewardbench_metrics(
            subsets, chosen[scored] * w, rejected[scored] * w, attributes, [1.0] * len(attributes)
        )
        report["presets"] = {
            **presets,
            gate.label: {k: report[k] for k in ("overall", "sections", "subsets", "unknown_subsets")},
        }
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
    length_policy: str = "prompt-left",
    share_prompts: SharePrompts = "auto",
) -> tuple[np.ndarray, dict]:
    """Attribute predictions [completions, A] of every completion of ``sets`` (flattened as run_v2 does:
    set by set, chosen first) and the length counts.

    ``length_policy="prompt-left"``: over-long conversations have their prompt cut from the left; a
    completion that alone does not fit is cut from the left too (``response_cut``), or with
    ``drop_long_pairs`` its whole set is dropped (NaN predictions for all its completions;
    ``dropped_sets``), since best-of-N without one completion is another question, and a Ties set's
    partner with it. ``"run_v2"``: reward-bench run_v2's tokenisation
    (:func:`rm_jax.data.rewardbench2_sets.encode_run_v2`, ``seq_len`` default 2048), nothing dropped.
    Each distinct token sequence is scored once, so identical completions get bit-identical rewards and
    run_v2's exact-tie rule sees them tie (packing may otherwise place them differently).
    """
    if length_policy == "run_v2":
        if drop_long_pairs:
            raise InputError(
                "--length-policy run_v2 scores every completion (run_v2 never drops): leave out --drop-long-pairs"
            )
        enc = encode_run_v2(sets, model.tokenizer, model.template, RUN_V2_MAX_LENGTH if seq_len is None else seq_len)
        pred, n_distinct = _predict_distinct(model, enc.ids, enc.max_length, batch_rows, max_segments, progress)
        n = len(enc.ids)
        return pred, {
            "sets": len(sets),
            "scored_sets": len(sets),
            "completions": n,
            "distinct_conversations": n_distinct,
            **enc.counts(),
            "dropped_sets": 0,
        }
    if length_policy != "prompt-left":
        raise InputError(f"--length-policy: 'prompt-left' or 'run_v2', got {length_policy!r}")
    limit = _limit(model, seq_len)
    rows = flatten(sets)
    pred, counts = predict_conversations(
        model, rows, limit, not drop_long_pairs, batch_rows, max_segments, progress, "rewardbench2", share_prompts
    )
    bounds = np.cumsum([0] + [len(s.completions) for s in sets])
    has_nan = [bool(np.isnan(pred[a:b]).any()) for a, b in zip(bounds[:-1], bounds[1:])]
    dropped = with_ties_partners(sets, has_nan)
    for i in np.flatnonzero(dropped):
        pred[bounds[i] : bounds[i + 1]] = np.nan
    dropped_sets = int(dropped.sum())
    counts = {
        "length_policy": length_policy,
        "sets": len(sets),
        "scored_sets": len(sets) - dropped_sets,
        "completions": counts.pop("rows"),
        **counts,
        "dropped_sets": dropped_sets,
        "dropped_ties_partners": dropped_sets - int(sum(has_nan)),
    }
    return pred, counts


def _predict_distinct(
    model: Any,
    ids: Sequence[np.ndarray],
    limit: int,
    batch_rows: int,
    max_segments: int,
    progress: bool,
    desc: str = "rewardbench2",
    groups: Optional[Sequence[Any]] = None,
    share_prompts: SharePrompts = "auto",
    sharing: Optional[dict] = None,
) -> tuple[np.ndarray, int]:
    """Predictions [len(ids), A] with each distinct sequence scored once; and how many were distinct.
    ``groups`` (a prompt key per sequence) lets distinct sequences of one prompt share it (``share_prompts``)."""
    unique: dict[bytes, int] = {}
    which = np.array([unique.setdefault(np.asarray(x, np.int32).tobytes(), len(unique)) for x in ids], np.int64)
    distinct = [np.frombuffer(k, np.int32) for k in unique]
    first = {}
    for j, u in enumerate(which.tolist()):
        first.setdefault(u, j)
    dgroups = None if groups is None else [groups[first[u]] for u in range(len(distinct))]
    pred = predict_ids(
        model,
        distinct,
        limit,
        batch_rows,
        max_segments,
        progress,
        desc,
        groups=dgroups,
        share_prompts=share_prompts if groups is not None else False,
        sharing=sharing,
    )
    return pred[which], len(unique)


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
    prompts = [str(rows[int(i)].get("prompt")) for i in enc.source_rows]  # one key per prompt text
    sharing: dict = {}
    pred_kept, n_distinct = _predict_distinct(
        model, enc.ids, limit, batch_rows, max_segments, progress, desc, prompts, share_prompts, sharing
    )
    pred = np.full((len(rows), len(model.attributes)), np.nan, np.float32)
    pred[enc.source_rows] = pred_kept
    counts = {
        "rows": len(rows),
        "distinct_conversations": n_distinct,
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
    gate, base = _gate_and_base(weights, attributes)
    pred, counts = predict_rewardbench2(model, sets, **opts)
    if counts["scored_sets"] == 0:
        raise InputError("RewardBench 2: every set was dropped for length (raise --seq-len)")
    report = rewardbench2_metrics(sets, pred, attributes, base)  # drops the NaN sets, names empty subsets
    if gate is not None:  # every completion of a set weighed by the gate on the set's prompt
        o = {k: opts[k] for k in ("batch_rows", "max_segments", "progress") if k in opts}
        w = row_weights(gate, model, flatten(sets), _limit(model, opts.get("seq_len")), **o)
        presets = _only_presets(report["presets"], base)
        report = rewardbench2_metrics(sets, pred * w, attributes, [1.0] * len(attributes))
        report["presets"] = {**presets, gate.label: {"score": report["score"], "subsets": report["subsets"]}}
        report[GATE_ROW_WEIGHTS] = w  # for the per-completion scores file; eval_model pops it
    report["counts"] = counts
    return report, pred


GATE_ROW_WEIGHTS = "_gate_row_weights"


def _gate_and_base(weights: WeightSpec, attributes: Sequence[str]) -> tuple[Any, WeightSpec]:
    """(the gate ``weights`` names, or None; the constant spec the metrics run with): for a gate, the presets'
    (the gate's own reward is computed beside them), else ``weights`` itself, checked."""
    if is_gate(weights):
        gate = open_gate(weights, attributes)
        presets = applicable_presets(attributes)
        return gate, next(iter(presets)) if presets else [1.0] * len(attributes)
    check_weights(weights, attributes)
    return None, weights


def _only_presets(by_name: dict, base: WeightSpec) -> dict:
    """A metrics table without the stand-in weighting :func:`_gate_and_base` ran it with (unless a preset)."""
    return {k: v for k, v in by_name.items() if not isinstance(base, list) or not k.startswith("w")}


def reweight_from_predictions(path: str, weights: Optional[WeightSpec] = None) -> dict:
    """Every metric of an earlier ``rm-jax eval`` recomputed from its saved predictions with
    ``weights`` (default: the model-appropriate default); no model, no forward pass.

    ``path``: the earlier results json, its stem, one of its predictions files, or a training run
    folder (its ``predictions/validation.jsonl``). Model and length counts are copied from the
    earlier results json when it is there.
    """
    if is_gate(weights):
        raise InputError(
            f"--from-predictions: saved predictions hold no prompt embeddings, so the prompt gate {weights} cannot "
            "be applied to them; run rm-jax eval --model ... --weights GATE_DIR"
        )
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
        counts["rewardbench2"] = dict(prev_counts.get("rewardbench2", {}), scored_sets=out["rewardbench2"]["sets"])
    assert attributes is not None
    w = default_weights(attributes) if weights is None else weights
    out["weights"] = weights_record(w, attributes)
    _note_weights(w, attributes)
    out["counts"] = counts
    return _ordered(out)


def _ordered(result: dict) -> dict:
    keys = ("model", "weights", "counts", "per_attribute", "pairwise", "rewardbench", "from_predictions")
    # rewardbench2 and the yardsticks (rm_bench, judgebench, helpsteer3) follow in the order they ran
    return {**{k: result[k] for k in keys if k in result}, **{k: v for k, v in result.items() if k not in keys}}


def _note_weights(spec: WeightSpec, attributes: Sequence[str]) -> None:
    if is_gate(spec):
        return
    note = weights_note(spec, attributes)  # a W.json naming a subset: say which attributes weigh 0
    if note:
        print(f"rm-jax eval: {note}", file=sys.stderr)
