"""``rm-jax eval --model``: one model on every data source asked for (HelpSteer2 rows, RewardBench 1 pairs,
RewardBench 2 sets, and the yardsticks of :mod:`.yardsticks`), the results JSON and prediction files.

It sits above :mod:`.evaluate` (each source's prediction and metrics) and :mod:`.yardsticks` (RM-Bench,
JudgeBench, HelpSteer3), which are independent of each other.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping, Optional

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES, WeightSpec
from rm_jax.core.errors import InputError, ModelLoadError
from rm_jax.core.files import write_json, write_jsonl
from rm_jax.data.pipeline import resolve_pairs_source, resolve_source
from rm_jax.data.prefix_sharing import SharePrompts
from rm_jax.data.rewardbench2_sets import load_rewardbench2
from rm_jax.data.sources import load_helpsteer, load_pairs
from rm_jax.evaluation.evaluate import (
    GATE_ROW_WEIGHTS,
    _note_weights,
    _ordered,
    evaluate_helpsteer,
    evaluate_rewardbench,
    evaluate_rewardbench2,
)
from rm_jax.evaluation.gate import is_gate, open_gate
from rm_jax.evaluation.predictions import (
    HELPSTEER_SUFFIX,
    REWARDBENCH2_SUFFIX,
    REWARDBENCH_SUFFIX,
    output_stem,
    rewardbench_records,
)
from rm_jax.evaluation.rewardbench2 import rewardbench2_records
from rm_jax.evaluation.weights import check_weights, default_weights, weights_record
from rm_jax.evaluation.yardsticks import TITLES, evaluate_yardstick, load_yardstick
from rm_jax.runs import layout
from rm_jax.runs.read import is_run_dir, load_scoring_model


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
    length_policy: str = "prompt-left",
    share_prompts: SharePrompts = "auto",
) -> tuple[dict, str]:
    """``rm-jax eval --model``: evaluate on HelpSteer2 rows, RewardBench pairs, RewardBench 2 sets and/or the
    ``yardsticks`` ({name: (source, split)}: rm_bench, judgebench, helpsteer3), write the results json and the
    prediction files next to it; returns (results, results path). Everything that can be checked without
    the model's weights (weights, template, data files) is checked first."""

    yardsticks = dict(yardsticks or {})
    if not helpsteer and not rewardbench and not rewardbench2 and not yardsticks:
        raise InputError(
            "nothing to evaluate: give --helpsteer FILE|HUB_ID, --rewardbench FILE|HUB_ID, --rewardbench2 SRC, "
            "--rm-bench SRC, --judgebench SRC and/or --helpsteer3 SRC"
        )
    if weights is not None and is_gate(weights):  # a prompt gate: its folder now, its attributes below
        open_gate(weights)
    elif weights is not None:  # matched by name to the attributes the folder names (HelpSteer2's when unreadable)
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
    if is_gate(weights):
        open_gate(weights, attributes)
    else:
        check_weights(weights, attributes)

    out_path = output if output.endswith(".json") else output + ".json"
    stem = output_stem(out_path)
    opts = dict(seq_len=seq_len, batch_rows=batch_rows, max_segments=max_segments, progress=progress)
    result: dict[str, Any] = {
        "model": {"path": os.path.abspath(model_path), "attributes": attributes, "template": template, "dtype": dtype},
        "weights": weights_record(weights, attributes),
        "counts": {},
    }
    _note_weights(weights, attributes)
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
            model,
            rb2_sets,
            weights,
            drop_long_pairs=drop_long_pairs,
            length_policy=length_policy if length_policy != "rm_bench" else "prompt-left",
            share_prompts=share_prompts,
            **opts,
        )
        result["counts"]["rewardbench2"] = dict(rep.pop("counts"), source=rewardbench2)
        result["rewardbench2"] = rep
        _report_lengths("RewardBench 2 completions", result["counts"]["rewardbench2"])
        gate_w = rep.pop(GATE_ROW_WEIGHTS, None)
        records = rewardbench2_records(
            rb2_sets, pred, attributes, weights if gate_w is None else [1.0] * len(attributes)
        )
        if gate_w is not None:  # each completion's reward under its set's gate weights, and those weights
            for rec, p, w in zip(records, pred, gate_w):
                rec["reward"] = None if rec["reward"] is None else float(np.asarray(p, np.float64) @ w)
                rec["weights"] = {a: float(x) for a, x in zip(attributes, w)}
        write_jsonl(stem + REWARDBENCH2_SUFFIX, records)
    for name, data in yard_data.items():
        policy = "rm_bench" if name == "rm_bench" and length_policy == "rm_bench" else "prompt-left"
        rep, records = evaluate_yardstick(
            model, name, data, weights, length_policy=policy, share_prompts=share_prompts, **opts
        )
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
    if c.get("cut"):
        _warn(
            f"{what}: {c['cut']} completions longer than {c['seq_len']} tokens were cut on the tokenizer's "
            f"{c.get('truncation_side')} side ({c.get('length_policy')}'s rule"
            + (
                "; cut on the right, the reward reads a token before the end of the response)"
                if c.get("truncation_side") == "right"
                else ")"
            )
        )
    if c.get("dropped_sets"):
        partners = c.get("dropped_ties_partners") or 0
        _warn(
            f"{what}: {c['dropped_sets']} sets left out: a completion alone is longer than {c['seq_len']} tokens"
            + (f" ({partners} of them Ties sets whose ref/tied partner was)" if partners else "")
            + " (raise --seq-len)"
        )
    if c.get("dropped"):
        _warn(
            f"{what}: {c['dropped']} left out: a response alone is longer than {c['seq_len']} tokens (raise --seq-len)"
        )
