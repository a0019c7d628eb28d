"""The evaluation a training run writes for its kept checkpoint: ``eval.json`` (validation loss,
per-attribute metrics, pairwise accuracy under ``eval.reward_weights``), the per-row predictions
``predictions/validation.jsonl`` (so any re-weighting needs no forward pass), and, with
``eval.rewardbench`` set, RewardBench-format pairs scored into ``predictions/rewardbench.jsonl``; with
``eval.rewardbench2`` set, RewardBench 2 sets scored into ``predictions/rewardbench2.jsonl``; likewise
``eval.rm_bench``, ``eval.judgebench`` and ``eval.helpsteer3`` into ``predictions/<name>.jsonl``."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np

from rm_jax.core.config import RunConfig
from rm_jax.core.files import write_json, write_jsonl
from rm_jax.data.pipeline import Encoded, resolve_pairs_source
from rm_jax.data.rewardbench2_sets import load_rewardbench2
from rm_jax.data.sources import load_pairs
from rm_jax.evaluation.evaluate import evaluate_rewardbench, evaluate_rewardbench2
from rm_jax.evaluation.predictions import rewardbench_records
from rm_jax.evaluation.rewardbench2 import rewardbench2_records
from rm_jax.evaluation.weights import default_weights
from rm_jax.runs import layout
from rm_jax.runs.read import load_scoring_model
from rm_jax.training.setup import build_mesh
from rm_jax.training.tasks import task_for


def kept_checkpoint_report(
    cfg: RunConfig, enc: Encoded, pred: np.ndarray, val: dict, step: int, probs: Optional[np.ndarray] = None
) -> dict:
    return {"step": step, **val, **task_for(cfg).eval_report(enc, pred, probs)}


def validation_records(enc: Encoded, pred: np.ndarray, attributes: list) -> list[dict]:
    """``predictions/validation.jsonl``: labels of the model's own attributes (floats; None where missing)."""
    return [
        {
            "row": int(enc.source_rows[i]),
            "group": int(enc.group[i]),
            "pred": {a: float(pred[i, j]) for j, a in enumerate(attributes)},
            "label": {a: (float(enc.labels[i, j]) if enc.label_mask[i, j] else None) for j, a in enumerate(attributes)},
        }
        for i in range(len(enc.ids))
    ]


def write_run_evaluation(cfg: RunConfig, fit: Any) -> None:
    """eval.json and predictions/validation.jsonl from a :class:`rm_jax.training.loop.FitResult`."""
    if fit.val is None or jax.process_index() != 0:
        return
    result = kept_checkpoint_report(cfg, fit.val_enc, fit.val_pred, fit.val, fit.kept_step, fit.val_probs)
    result["train_rows"] = fit.train_rows
    result["train_examples"] = fit.train_examples
    if fit.val_pred is not None:
        write_jsonl(
            layout.predictions_path(fit.run_dir, "validation"),
            validation_records(fit.val_enc, fit.val_pred, list(cfg.model.attributes)),
        )
    if cfg.eval.label_probe.prompts and cfg.data.validation:
        result["label_probe"] = label_probe(cfg, fit.run_dir, fit.mesh)
    write_json(layout.eval_path(fit.run_dir), result)


def label_probe(cfg: RunConfig, run_dir: str, mesh: Any = None) -> dict:
    """Does the policy read its label? For held-out validation prompts, generate at each requested level
    of one attribute (the others from ``eval.label_probe.base``) and compare response lengths: on
    HelpSteer2 data verbosity is mostly length, so a policy that follows it writes longer at 4 than at 0."""
    from rm_jax.policy import load_policy

    prompts = probe_prompts(cfg)
    return probe_labels(cfg, load_policy(run_dir, mesh=mesh), prompts)


def probe_prompts(cfg: RunConfig) -> list:
    """The label probe's held-out prompts (the first ``eval.label_probe.prompts`` of the validation split)."""
    from rm_jax.steer.prompts import read_prompts

    return read_prompts(cfg.data.validation, cfg.eval.label_probe.prompts, split=cfg.data.validation_split)


def probe_labels(cfg: RunConfig, policy: Any, prompts: list) -> dict:
    """:func:`label_probe` for a policy in memory (the kept checkpoint's, or the training state's)."""
    from rm_jax.data.conversation import attribute_label, parse_attribute_label
    from rm_jax.policy import generate
    from rm_jax.steer.prompts import labelled

    probe = cfg.eval.label_probe
    base = parse_attribute_label(probe.base) if probe.base else {}
    out: dict[str, Any] = {
        "attribute": probe.attribute,
        "base": probe.base,
        "prompts": len(prompts),
        "max_new_tokens": probe.max_new_tokens,
        "temperature": probe.temperature,
        "levels": {},
    }
    for level in probe.levels:
        label = attribute_label({**base, probe.attribute: level})
        texts = [
            ys[0]
            for ys in generate(
                policy,
                [labelled(p, label) for p in prompts],
                n=1,
                temperature=probe.temperature or 1.0,
                greedy=probe.temperature == 0,
                max_new_tokens=probe.max_new_tokens,
                seed=probe.seed,
            )
        ]
        tokens = [len(policy.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        out["levels"][str(level)] = {
            "label": label,
            "mean_response_tokens": float(np.mean(tokens)),
            "mean_response_chars": float(np.mean([len(t) for t in texts])),
            "examples": texts[:2],
        }
    lo, hi = str(min(probe.levels)), str(max(probe.levels))
    out["higher_level_longer"] = out["levels"][hi]["mean_response_tokens"] > out["levels"][lo]["mean_response_tokens"]
    return out


def score_rewardbench(cfg: RunConfig, run_dir: str, mesh: Any = None) -> dict:
    """RewardBench-format pairs scored by the run's kept checkpoint. The per-pair attribute
    predictions go to predictions/rewardbench.jsonl, so every reward weighting is scored from them
    without another forward pass; returns the metrics under eval.reward_weights[0] and adds them
    to eval.json (when the run wrote one)."""
    model = _kept_model(cfg, run_dir, mesh)
    rows = load_pairs(
        resolve_pairs_source(cfg.eval.rewardbench), cfg.eval.rewardbench_split, on_bad_row=cfg.data.on_bad_row
    ).rows
    weights = _reported_weights(cfg)
    report, chosen, rejected = evaluate_rewardbench(
        model,
        rows,
        weights,
        **_scoring_opts(cfg),
        overlength=cfg.data.overlength,
    )
    if jax.process_index() == 0:
        write_jsonl(
            layout.predictions_path(run_dir, "rewardbench"),
            rewardbench_records(rows, chosen, rejected, list(model.attributes)),
        )
        _add_to_eval_json(run_dir, "rewardbench", report)
    return report


def score_rewardbench2(cfg: RunConfig, run_dir: str, mesh: Any = None) -> dict:
    """RewardBench 2 sets scored by the run's kept checkpoint: per-completion attributes go to
    predictions/rewardbench2.jsonl (any weighting is scored from them later), and the scores under
    eval.reward_weights[0] (every preset under ``presets``) to eval.json's ``rewardbench2``."""
    model = _kept_model(cfg, run_dir, mesh)
    sets = load_rewardbench2(cfg.eval.rewardbench2, cfg.eval.rewardbench2_split)
    weights = _reported_weights(cfg)
    report, pred = evaluate_rewardbench2(
        model,
        sets,
        weights,
        **_scoring_opts(cfg),
    )
    if jax.process_index() == 0:
        attributes = list(model.attributes)
        w = weights if weights is not None else default_weights(attributes)
        write_jsonl(
            layout.predictions_path(run_dir, "rewardbench2"),
            rewardbench2_records(sets, pred, attributes, w),
        )
        _add_to_eval_json(run_dir, "rewardbench2", report)
    return report


def _add_to_eval_json(run_dir: str, key: str, report: dict) -> None:
    """eval.json gains ``key`` (when the run wrote one: a policy run has none)."""
    path = layout.eval_path(run_dir)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        result[key] = report
        write_json(path, result)


def score_yardstick(cfg: RunConfig, run_dir: str, name: str, mesh: Any = None) -> dict:
    """``eval.<name>`` (rm_bench, judgebench, helpsteer3) scored by the run's kept checkpoint: per-response
    scores to predictions/<name>.jsonl and the report under eval.reward_weights[0] (every preset's
    headline under ``presets``) to eval.json's ``<name>``."""
    from rm_jax.evaluation.yardsticks import evaluate_yardstick, load_yardstick

    source, split = getattr(cfg.eval, name), getattr(cfg.eval, f"{name}_split", None)
    data = load_yardstick(name, source, split)
    model = _kept_model(cfg, run_dir, mesh)
    weights = _reported_weights(cfg)
    report, records = evaluate_yardstick(
        model,
        name,
        data,
        weights,
        **_scoring_opts(cfg),
    )
    report["counts"].update(source=str(source), split=split)
    if jax.process_index() == 0:
        write_jsonl(layout.predictions_path(run_dir, name), records)
        _add_to_eval_json(run_dir, name, report)
    return report


def _kept_model(cfg: RunConfig, run_dir: str, mesh: Any) -> Any:
    """The run's kept checkpoint as a scoring model, on ``mesh`` (default: the run's evaluation mesh)."""
    return load_scoring_model(run_dir, mesh=mesh or build_mesh(cfg, train_state=False), dtype=cfg.model.dtype)


def _reported_weights(cfg: RunConfig) -> Any:
    """The weighting eval.json reports first (every preset's numbers go beside it)."""
    return cfg.eval.reward_weights[0] if cfg.eval.reward_weights else None


def _scoring_opts(cfg: RunConfig) -> dict:
    """How the end-of-run yardsticks score: the training sequence length and packing, eval_rows per pass."""
    return dict(
        seq_len=cfg.data.seq_len,
        batch_rows=cfg.train.eval_rows,
        max_segments=cfg.data.max_segments,
        progress=cfg.logging.progress,
    )
