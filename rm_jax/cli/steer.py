"""``rm-jax steer label|eval``: SteerLM 2.0 labelling (NeMo-Aligner's format) and attribute-following evaluation."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence, get_args

from rm_jax.core.config import OnBadRow


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax steer")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lb = sub.add_parser("label", help="sampled responses -> SteerLM 2.0 groups with importance-weight terms")
    lb.add_argument("--policy", required=True, help="the sampling policy Q' (HF *ForCausalLM folder or lm run)")
    lb.add_argument("--rm", required=True, help="the multi-attribute RM (HF folder or rm_jax run folder)")
    lb.add_argument(
        "--sft",
        default=None,
        help="the unconditional model for log P(y|x) (default: the policy read without the label)",
    )
    lb.add_argument("--input", required=True, help="samples: rm-jax lm generate output rows with 'attributes'")
    lb.add_argument("--output", required=True, help="groups JSONL in NeMo-Aligner's SteerLM 2.0 format")
    lb.add_argument(
        "--sigma",
        default=None,
        help="P(a|x,y) widths: one number or five (default: the RM's validation RMSE per attribute)",
    )
    lb.add_argument("--batch-size", type=int, default=16)
    lb.add_argument(
        "--share-prompts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="encode each prompt once for all its responses (exact; default: where it saves tokens, docs/sharing.md)",
    )
    lb.add_argument(
        "--skip-empty",
        action="store_true",
        help="leave out empty responses (counted) instead of stopping; a group left with one response goes too",
    )
    lb.add_argument(
        "--skip-unfinished",
        action="store_true",
        help="leave out responses cut off at --max-new-tokens (the samples' 'finished' false; "
        "counted); kept by default, with a count",
    )
    lb.add_argument(
        "--equal-groups",
        choices=["drop", "fill"],
        default=None,
        help="NeMo-safe output: every group the same number of responses (NeMo-Aligner needs it per batch): "
        "drop the smaller groups, or fill them by repeating their responses (biases those groups' weights)",
    )
    lb.add_argument(
        "--on-bad-row",
        choices=get_args(OnBadRow),
        default="error",
        help="a row or response that cannot be scored (bad response_ids, log Q' outside the nucleus): stop "
        "naming file, line and field, writing nothing (default), or leave it out (counted, reasons in the report)",
    )
    lb.add_argument("--no-progress", action="store_true")
    ev = sub.add_parser("eval", help="requested vs RM-predicted attributes of a policy's samples")
    ev.add_argument("--policy", required=True)
    ev.add_argument("--rm", required=True)
    ev.add_argument(
        "--input",
        required=True,
        help="prompts: JSONL rows {prompt}|{messages}, or HelpSteer2 data ('bundled' = its validation split)",
    )
    ev.add_argument(
        "--targets",
        nargs="*",
        default=None,
        help="requested attribute vectors, e.g. helpfulness:4,verbosity:0 (default: a grid over "
        "complexity and verbosity at helpfulness/correctness/coherence 4)",
    )
    ev.add_argument("--k", type=int, default=4, help="samples per prompt and target")
    ev.add_argument("--prompts", type=int, default=16, help="at most this many prompts")
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--max-new-tokens", type=int, default=128)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--output", default="steer_eval", help="folder for steer_eval.json / .md / .png")
    ev.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(list(argv))
    if a.cmd == "label":
        from rm_jax.steer.label import label_samples

        rep = label_samples(
            a.input,
            a.policy,
            a.rm,
            a.output,
            sft=a.sft,
            sigma=a.sigma,
            batch_size=a.batch_size,
            skip_empty=a.skip_empty,
            skip_unfinished=a.skip_unfinished,
            progress=not a.no_progress,
            equal_groups=a.equal_groups,
            on_bad_row=a.on_bad_row,
            share_prompts="auto" if a.share_prompts is None else a.share_prompts,
        )
        sk = rep["skipped"]
        what = [
            f"{sk[k]} {name}"
            for k, name in (
                ("empty_responses", "empty responses"),
                ("unfinished_responses", "cut-off responses"),
                ("bad_rows", "rows that could not be read"),
                ("bad_responses", "responses that could not be scored"),
                ("groups", "groups left with fewer than 2"),
            )
            if sk.get(k)
        ]
        print(
            f"labelled {rep['groups']} groups ({rep['responses']} responses) -> {a.output}; log P(y|x) from "
            f"{rep['log_p_y_given_x']}" + (f"; skipped {', '.join(what)}" if what else "")
        )
        if rep["bad"]:
            print(f"--on-bad-row skip: first left out: {rep['bad'][0]}", file=sys.stderr)
        if rep["equal_groups"]:
            eq = rep["equal_groups"]
            done = "dropped" if eq["policy"] == "drop" else "filled"
            print(f"--equal-groups {eq['policy']}: {eq['groups']} groups {done}")
        if rep["nemo"]:
            print(f"note: {rep['nemo']}; --equal-groups drop|fill writes NeMo-safe groups", file=sys.stderr)
        if rep["sampling"] is None:
            print(
                "note: the samples record no sampling settings; log Q' is the policy's own distribution "
                "(temperature 1, top-p 1)",
                file=sys.stderr,
            )
        else:
            used = ", ".join(f"temperature {s['temperature']} top-p {s['top_p']}" for s in rep["sampling"])
            print(f"log Q' under the sampling distribution: {used}")
        if rep["unfinished"]:
            print(
                f"note: {rep['unfinished']} labelled responses were cut off at max_new_tokens; their log-probs "
                f"include an end of turn they never wrote (--skip-unfinished leaves them out)",
                file=sys.stderr,
            )
        return 0
    from rm_jax.runs.layout import STEER_EVAL
    from rm_jax.steer.steer_eval import format_steer_eval, steer_eval

    res = steer_eval(
        a.policy,
        a.rm,
        a.input,
        a.output,
        targets=a.targets,
        k=a.k,
        prompts=a.prompts,
        temperature=a.temperature,
        top_p=a.top_p,
        max_new_tokens=a.max_new_tokens,
        seed=a.seed,
        progress=not a.no_progress,
    )
    print(format_steer_eval(res))
    print(f"results -> {a.output}/{STEER_EVAL}: " + json.dumps(res["mean_abs_error"]))
    return 0
