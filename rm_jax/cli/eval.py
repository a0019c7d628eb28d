"""``rm-jax eval``: HelpSteer2 metrics, RewardBench 1 / 2, RM-Bench, JudgeBench and HelpSteer3-Preference
accuracy for a reward model, or the same metrics recomputed from an earlier evaluation's saved predictions
(``--from-predictions``)."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence, get_args

from rm_jax.core.attributes import REWARD_PRESETS
from rm_jax.core.config import Dtype
from rm_jax.core.errors import InputError


def _parser() -> argparse.ArgumentParser:
    from rm_jax.evaluation.evaluate import DEFAULT_MAX_SEQ_LEN
    from rm_jax.evaluation.weights import DEFAULT_WEIGHTS

    ap = argparse.ArgumentParser(
        prog="rm-jax eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", help="HF *ForSequenceClassification folder or rm_jax run folder")
    ap.add_argument("--helpsteer", help="HelpSteer2-format data: file, folder, hub id, or 'bundled'")
    ap.add_argument("--helpsteer-split", default="validation")
    ap.add_argument("--rewardbench", help="RewardBench-format pairs: file, folder or hub id (allenai/reward-bench)")
    ap.add_argument("--rewardbench-split", default="filtered")
    ap.add_argument(
        "--rewardbench2",
        help="RewardBench 2 sets in their own columns: .jsonl/.parquet file, folder, hub id "
        "(allenai/reward-bench-2) or 'bundled'; per-completion scores go to <stem>.rewardbench2_scores.jsonl",
    )
    ap.add_argument("--rewardbench2-split", default=None, help="hub split (default test)")
    ap.add_argument(
        "--rm-bench",
        help="RM-Bench rows (THU-KEG/RM-Bench data/total_dataset.json, or 'bundled'): hard / normal / easy and "
        "per-domain accuracy as its compute_accuracy; per-response scores to <stem>.rm_bench_scores.jsonl",
    )
    ap.add_argument(
        "--judgebench",
        help="JudgeBench pairs (file, hub id ScalerLab/JudgeBench, or 'bundled'): single-game accuracy overall and "
        "per category; per-response scores to <stem>.judgebench_scores.jsonl",
    )
    ap.add_argument("--judgebench-split", default="gpt", help="gpt (350 pairs) or claude (270); hub split or file")
    ap.add_argument(
        "--helpsteer3",
        help="HelpSteer3-Preference rows (file, folder, hub id nvidia/HelpSteer3, or 'bundled'): pairwise accuracy "
        "overall, per domain and per language, ties left out and counted",
    )
    ap.add_argument("--helpsteer3-split", default="validation")
    ap.add_argument(
        "--weights",
        default=None,
        help=f"reward weights, matched to the model's attributes by name: a preset ({', '.join(REWARD_PRESETS)}), "
        f"a W.json from 'rm-jax weights fit', w1,...,wn in the model's attribute order, or a GATE_DIR from "
        f"'rm-jax weights fit --gate' (each row weighed by the gate on its prompt) (default {DEFAULT_WEIGHTS})",
    )
    ap.add_argument(
        "--output",
        default=None,
        help="results json (default eval_results.json; with --from-predictions, print only); "
        "predictions go to <stem>.helpsteer_predictions.jsonl / <stem>.rewardbench_predictions.jsonl",
    )
    ap.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help=f"longest conversation in tokens; longer prompts are cut from the left "
        f"(default: the model's positions, at most {DEFAULT_MAX_SEQ_LEN})",
    )
    ap.add_argument(
        "--drop-long-pairs",
        action="store_true",
        help="drop RewardBench pairs (RewardBench 2: whole sets) whose response alone is longer than --seq-len "
        "(default: cut them from the left and count them, so every pair is scored)",
    )
    ap.add_argument(
        "--length-policy",
        default="prompt-left",
        choices=("prompt-left", "run_v2", "rm_bench"),
        help="tokenisation: 'prompt-left' (default: as above, --seq-len cuts prompts from the left); "
        "'run_v2' for --rewardbench2 (reward-bench's run_v2.py: the tokenizer's chat template and tokenizer(text, "
        "truncation=True, max_length=--seq-len or 2048), cut on the tokenizer's side); 'rm_bench' for --rm-bench "
        "(RM-Bench's run_rm.py: the whole templated text cut from the left at --seq-len or 2048); cuts counted",
    )
    ap.add_argument("--batch-rows", type=int, default=16, help="packed rows per forward pass")
    ap.add_argument("--max-segments", type=int, default=16, help="conversations packed into one row at most")
    ap.add_argument("--template", default=None, help="chat template: the tokenizer's own (default) or 'nemotron'")
    ap.add_argument("--dtype", default="float32", choices=get_args(Dtype))
    ap.add_argument("--step", type=int, default=None, help="a run folder's checkpoint step (default: the kept one)")
    ap.add_argument(
        "--from-predictions",
        default=None,
        metavar="PATH",
        help="recompute all metrics from an earlier eval's saved predictions (its results json or "
        "stem); no model needed",
    )
    ap.add_argument(
        "--share-prompts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="encode each prompt once for all its responses (exact; default: on where rows share a prompt "
        "and the attention kernel reads the shared layout, docs/sharing.md)",
    )
    ap.add_argument("--no-progress", action="store_true")
    return ap


def _check_positive(name: str, value: Optional[int]) -> None:
    if value is not None and value < 1:
        raise InputError(f"{name}: must be a positive integer, got {value}")


def main(argv: Sequence[str]) -> int:
    a = _parser().parse_args(list(argv))
    _check_positive("--batch-rows", a.batch_rows)
    _check_positive("--max-segments", a.max_segments)
    if a.seq_len is not None and a.seq_len < 2:
        raise InputError(f"--seq-len: must be at least 2, got {a.seq_len}")
    from rm_jax.evaluation.eval_model import evaluate_model
    from rm_jax.evaluation.evaluate import reweight_from_predictions
    from rm_jax.evaluation.predictions import copy_predictions, output_stem
    from rm_jax.evaluation.report_text import format_report

    if a.length_policy == "run_v2" and not a.rewardbench2:
        raise InputError("--length-policy run_v2 applies to --rewardbench2 only")
    if a.length_policy == "rm_bench" and not a.rm_bench:
        raise InputError("--length-policy rm_bench applies to --rm-bench only")
    if a.length_policy == "run_v2" and a.drop_long_pairs:
        raise InputError(
            "--length-policy run_v2 scores every completion (run_v2 never drops): leave out --drop-long-pairs"
        )
    if a.from_predictions:
        if a.model or a.helpsteer or a.rewardbench or a.rewardbench2 or a.rm_bench or a.judgebench or a.helpsteer3:
            raise InputError(
                "--from-predictions recomputes metrics from saved predictions: "
                "do not also give --model or a data source"
            )
        result = reweight_from_predictions(a.from_predictions, a.weights)
        print(format_report(result))
        if a.output:
            from rm_jax.core.files import write_json

            out = a.output if a.output.endswith(".json") else a.output + ".json"
            copy_predictions(result["from_predictions"], output_stem(out))
            write_json(out, result)
            print(f"\nresults -> {out}")
        return 0

    if not a.model:
        raise InputError("--model is required (or --from-predictions PATH to re-weight an earlier evaluation)")
    result, out_path = evaluate_model(
        a.model,
        helpsteer=a.helpsteer,
        helpsteer_split=a.helpsteer_split,
        rewardbench=a.rewardbench,
        rewardbench_split=a.rewardbench_split,
        rewardbench2=a.rewardbench2,
        rewardbench2_split=a.rewardbench2_split,
        yardsticks={
            name: (src, split)
            for name, src, split in (
                ("rm_bench", a.rm_bench, None),
                ("judgebench", a.judgebench, a.judgebench_split),
                ("helpsteer3", a.helpsteer3, a.helpsteer3_split),
            )
            if src
        },
        weights=a.weights,
        output=a.output or "eval_results.json",
        seq_len=a.seq_len,
        batch_rows=a.batch_rows,
        max_segments=a.max_segments,
        template=a.template,
        dtype=a.dtype,
        drop_long_pairs=a.drop_long_pairs,
        progress=not a.no_progress,
        step=a.step,
        length_policy=a.length_policy,
        share_prompts="auto" if a.share_prompts is None else a.share_prompts,
    )
    print(format_report(result))
    print(f"\nresults -> {out_path}")
    return 0
