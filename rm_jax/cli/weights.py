"""``rm-jax weights fit``: the attribute weights that best order preference pairs (Bradley-Terry regression
on the RM's predicted attribute differences, L2-regularised on standardised differences, no intercept), with
held-out accuracy of the fit and of every preset on k folds of prompts. W.json works as ``--weights`` in
score / eval / serve / configs. ``--gate`` fits a prompt gate instead (one weighting per prompt from the RM's
prompt embedding: :mod:`rm_jax.evaluation.gate`), written to a folder that works as ``--weights GATE_DIR``."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence, get_args

from rm_jax.core.config import Dtype
from rm_jax.core.errors import InputError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rm-jax weights", description=__doc__)
    sub = ap.add_subparsers(dest="action", required=True)
    fit = sub.add_parser("fit", help="fit reward weights from preferences")
    fit.add_argument("--model", help="HF *ForSequenceClassification folder or rm_jax run folder")
    src = fit.add_mutually_exclusive_group()
    src.add_argument("--pairs", help="RewardBench-format pairs (prompt, chosen, rejected): file, folder or hub id")
    src.add_argument("--rewardbench2", help="RewardBench 2 sets: every chosen vs rejected completion of a set")
    src.add_argument("--helpsteer", help="HelpSteer2 rows ('bundled' too): same-prompt responses by helpfulness")
    src.add_argument(
        "--helpsteer3",
        help="HelpSteer3-Preference rows ('bundled' too; split default validation): chosen by the sign of "
        "overall_preference, ties left out, folds by context",
    )
    src.add_argument("--from-predictions", help="refit from an earlier fit's <W>.fit_predictions.jsonl (no model)")
    fit.add_argument("--split", default=None, help="split of a folder / hub source (helpsteer default: validation)")
    fit.add_argument("--folds", type=int, default=5)
    fit.add_argument(
        "--l2", type=float, default=0.01, help="L2 penalty on the weights of standardised attribute differences"
    )
    fit.add_argument(
        "--pair-weighting",
        default="prompt",
        choices=("prompt", "pair"),
        help="prompt: each prompt counts once in fit and accuracy (a pair weighs 1/pairs of its prompt); pair: 1 each",
    )
    fit.add_argument("--seed", type=int, default=0, help="fold assignment (folds are groups of prompts)")
    fit.add_argument(
        "--output", required=True, help="W.json (predictions to <stem>.fit_predictions.jsonl); with --gate a folder"
    )
    gate = fit.add_argument_group("prompt gate (ArmoRM stage 2): weights per prompt from the RM's prompt embedding")
    gate.add_argument("--gate", action="store_true", help="fit a gate MLP; --output is then GATE_DIR")
    gate.add_argument("--gate-hidden", type=int, default=64, help="hidden units per layer (ArmoRM: 1024)")
    gate.add_argument("--gate-layers", type=int, default=2, help="hidden layers (ArmoRM: 3)")
    gate.add_argument("--gate-temperature", type=float, default=10.0, help="softmax temperature (ArmoRM: 10)")
    gate.add_argument("--gate-steps", type=int, default=400, help="full-batch Adam steps")
    gate.add_argument("--gate-lr", type=float, default=3e-3)
    gate.add_argument("--gate-l2", type=float, default=0.01, help="L2 on the gate's kernels (pulls toward a constant)")
    fit.add_argument("--seq-len", type=int, default=None)
    fit.add_argument("--batch-rows", type=int, default=16)
    fit.add_argument("--max-segments", type=int, default=16)
    fit.add_argument("--dtype", default="float32", choices=get_args(Dtype))
    fit.add_argument(
        "--share-prompts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="encode each prompt once for all its responses (exact; default: where it saves tokens, docs/sharing.md)",
    )
    fit.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: Sequence[str]) -> int:
    a = _parser().parse_args(list(argv))
    kind = next((k for k in ("pairs", "rewardbench2", "helpsteer", "helpsteer3") if getattr(a, k)), None)
    if a.from_predictions and a.model:
        raise InputError("--from-predictions refits saved predictions: do not also give --model")
    if not a.from_predictions and (not a.model or not kind):
        raise InputError(
            "give --model and one of --pairs / --rewardbench2 / --helpsteer / --helpsteer3 (or --from-predictions)"
        )
    for name in ("folds", "batch_rows", "max_segments"):
        if getattr(a, name) < 1:
            raise InputError(f"--{name.replace('_', '-')}: must be a positive integer, got {getattr(a, name)}")
    if a.gate:
        return _fit_gate(a, kind)
    from rm_jax.evaluation.weight_fit import fit_weights, format_fit

    report, path = fit_weights(
        a.output,
        model_path=a.model,
        kind=kind,
        source=getattr(a, kind) if kind else None,
        split=a.split,
        from_predictions=a.from_predictions,
        folds=a.folds,
        l2=a.l2,
        seed=a.seed,
        pair_weighting=a.pair_weighting,
        seq_len=a.seq_len,
        batch_rows=a.batch_rows,
        max_segments=a.max_segments,
        dtype=a.dtype,
        progress=not a.no_progress,
        share_prompts="auto" if a.share_prompts is None else a.share_prompts,
    )
    print(format_fit(report))
    print(f"\nweights -> {path}")
    return 0


def _fit_gate(a: argparse.Namespace, kind: Optional[str]) -> int:
    from rm_jax.evaluation.gate import GateConfig
    from rm_jax.evaluation.gate_fit import fit_gate, format_gate

    if a.from_predictions or not kind:
        raise InputError(
            "--gate reads the RM's prompt embeddings, which a predictions file does not hold: give --model and a "
            "pair source, not --from-predictions"
        )
    if a.output.endswith(".json"):
        raise InputError(f"--gate: --output is a folder (gate.json and gate.safetensors go in it), got {a.output}")
    cfg = GateConfig(
        hidden=a.gate_hidden,
        layers=a.gate_layers,
        temperature=a.gate_temperature,
        steps=a.gate_steps,
        lr=a.gate_lr,
        l2=a.gate_l2,
        seed=a.seed,
    )
    report = fit_gate(
        a.output,
        model_path=a.model,
        kind=kind,
        source=getattr(a, kind),
        split=a.split,
        folds=a.folds,
        l2=a.l2,
        seed=a.seed,
        pair_weighting=a.pair_weighting,
        cfg=cfg,
        seq_len=a.seq_len,
        batch_rows=a.batch_rows,
        max_segments=a.max_segments,
        dtype=a.dtype,
        progress=not a.no_progress,
    )
    print(format_gate(report))
    print(f"\ngate -> {a.output} (use it as --weights {a.output})")
    return 0
