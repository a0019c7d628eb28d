"""``rm-jax lm generate|logprob``: sample responses from a policy, or score responses' log-probabilities."""

from __future__ import annotations

import argparse
import json
from typing import Sequence, get_args

from rm_jax.core.config import Dtype, OnBadRow


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax lm", description="causal LMs (policies): sampling and log-probs")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, what in (
        ("generate", "rows {prompt}|{messages} (+ attributes) -> + responses, response_ids"),
        ("logprob", "rows with the response (+ response_ids) -> + logprob, response_tokens"),
    ):
        p = sub.add_parser(name, help=what, description=what)
        p.add_argument(
            "--model", required=True, help="HF *ForCausalLM folder or rm_jax lm run folder (task sft/steerlm2)"
        )
        p.add_argument("--input", required=True, help="JSON-lines rows (docs/policy.md)")
        p.add_argument("--output", required=True, help="the input rows plus the results, written atomically")
        p.add_argument("--template", default=None, help="chat template: the tokenizer's own (default) or 'nemotron'")
        p.add_argument("--dtype", default="float32", choices=get_args(Dtype))
        p.add_argument("--batch-size", type=int, default=8, help="sequences decoded together / packed rows per batch")
        p.add_argument("--no-progress", action="store_true")
        if name == "logprob":
            p.add_argument(
                "--on-bad-row",
                choices=get_args(OnBadRow),
                default="error",
                help="a row that cannot be scored: stop naming it (default), or leave it out (counted)",
            )
        if name == "generate":
            p.add_argument("--n", type=int, default=1, help="responses per row")
            p.add_argument("--temperature", type=float, default=1.0)
            p.add_argument(
                "--top-p",
                type=float,
                default=1.0,
                help="nucleus sampling: keep the most likely tokens whose probability reaches P",
            )
            p.add_argument("--max-new-tokens", type=int, default=256)
            p.add_argument("--seed", type=int, default=0, help="the same seed gives the same responses")
            p.add_argument("--greedy", action="store_true", help="argmax decoding (the same as --temperature 0)")
    a = ap.parse_args(list(argv))
    from rm_jax.core.errors import InputError
    from rm_jax.core.files import write_jsonl
    from rm_jax.policy import load_policy
    from rm_jax.policy.generate import check_sampling
    from rm_jax.policy.rows import generate_rows, logprob_rows, read_prompt_rows, read_response_rows

    if a.batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1, got {a.batch_size}")
    skipped: list[str] | None = [] if a.cmd == "logprob" and a.on_bad_row == "skip" else None
    if a.cmd == "generate":
        check_sampling(a.n, a.temperature, a.top_p, a.max_new_tokens, a.greedy)
        rows, where = read_prompt_rows(a.input)  # bad rows fail before the model loads
    else:
        rows, where = read_response_rows(a.input, skipped)
    policy = load_policy(a.model, dtype=a.dtype, template=a.template)
    if a.cmd == "generate":
        out = generate_rows(
            policy,
            rows,
            where=where,
            n=a.n,
            temperature=a.temperature,
            top_p=a.top_p,
            max_new_tokens=a.max_new_tokens,
            seed=a.seed,
            greedy=a.greedy,
            batch_size=a.batch_size,
            progress=not a.no_progress,
        )
    else:
        out = logprob_rows(
            policy, rows, where=where, batch_rows=a.batch_size, progress=not a.no_progress, skipped=skipped
        )
    write_jsonl(a.output, out)
    settings = f" (sampling: {json.dumps(out[0]['sampling'])})" if a.cmd == "generate" and out else ""
    bad = f"; skipped {len(skipped)} rows that could not be scored (first: {skipped[0]})" if skipped else ""
    print(f"lm {a.cmd}: {len(out)} rows -> {a.output}{settings}{bad}")
    return 0
