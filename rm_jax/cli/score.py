"""``rm-jax score``: attribute scores and a scalar reward for every row of a jsonl file."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence, get_args

from rm_jax.core.attributes import fitted_weights, resolve_reward_weights
from rm_jax.core.config import Dtype
from rm_jax.core.errors import InputError


def check_weights(spec: str, n: Optional[int]) -> None:
    """A bad ``--weights`` fails before anything is loaded (``n`` unknown) or once the model says how
    many attributes it predicts."""
    try:
        if n is None:
            if spec.strip().endswith(".json"):  # a W.json: readable now, its length checked against the model
                fitted_weights(spec.strip())
            elif "," not in spec:
                resolve_reward_weights(spec)
        else:
            resolve_reward_weights(spec, n)
    except ValueError as e:
        raise InputError(f"--weights: {e}") from None


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax score", description=__doc__)
    ap.add_argument("--model", required=True, help="HF *ForSequenceClassification folder or rm_jax run folder")
    ap.add_argument("--input", required=True, help="jsonl rows: {prompt, response} or {messages: [...]}")
    ap.add_argument("--output", required=True)
    ap.add_argument("--weights", default="70b-rewardbench", help="preset name, w1,...,w5, or a W.json (weights fit)")
    ap.add_argument("--template", default=None, help="chat template: the tokenizer's own (default) or 'nemotron'")
    ap.add_argument("--batch-rows", type=int, default=16)
    ap.add_argument("--max-segments", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=get_args(Dtype))
    ap.add_argument(
        "--share-prompts",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="encode each prompt once for all its responses (exact; default: on where rows share a prompt "
        "and the attention kernel reads the shared layout, docs/sharing.md)",
    )
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--step", type=int, default=None, help="a run folder's checkpoint step (default: the kept one)")
    a = ap.parse_args(list(argv))
    from rm_jax.engine.scoring import read_score_rows, score_rows, write_scored
    from rm_jax.runs.read import load_scoring_model

    check_weights(a.weights, None)
    rows = read_score_rows(a.input)
    model = load_scoring_model(a.model, dtype=a.dtype, template=a.template, step=a.step)
    check_weights(a.weights, model.cfg.num_labels)
    pred, reward = score_rows(
        model,
        rows,
        a.weights,
        a.batch_rows,
        a.max_segments,
        a.seq_len,
        not a.no_progress,
        where=a.input,
        share_prompts="auto" if a.share_prompts is None else a.share_prompts,
    )
    write_scored(a.output, rows, model.attributes, pred, reward)
    print(f"scored {len(rows)} rows -> {a.output}")
    return 0
