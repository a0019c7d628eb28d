"""``rm-jax score``: attribute scores and a scalar reward for every row of a jsonl file."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence, get_args

from rm_jax.core.attributes import check_weight_spec, resolve_reward_weights, weights_note
from rm_jax.core.config import Dtype
from rm_jax.core.errors import InputError


def check_weights(spec: str, attributes: Optional[Sequence[str]]) -> None:
    """A bad ``--weights`` fails before anything is loaded (``attributes`` unknown: a known preset, numbers
    that parse, a readable W.json) or once the model names its attributes (matched by name)."""
    from rm_jax.evaluation.gate import is_gate, open_gate

    if is_gate(spec):  # a prompt gate: its folder now, the model's attributes once known
        open_gate(spec, attributes)
        return
    try:
        if attributes is None:
            check_weight_spec(spec)
        else:
            resolve_reward_weights(spec, attributes)
    except ValueError as e:
        raise InputError(f"--weights: {e}") from None


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax score", description=__doc__)
    ap.add_argument("--model", required=True, help="HF *ForSequenceClassification folder or rm_jax run folder")
    ap.add_argument("--input", required=True, help="jsonl rows: {prompt, response} or {messages: [...]}")
    ap.add_argument("--output", required=True)
    ap.add_argument(
        "--weights",
        default="70b-rewardbench",
        help="matched to the model's attributes by name: a preset, a W.json (weights fit), w1,...,wn in the "
        "model's attribute order, or a GATE_DIR (weights fit --gate: per-row weights, written to each row)",
    )
    ap.add_argument("--template", default=None, help="chat template: the tokenizer's own (default) or 'nemotron'")
    ap.add_argument("--batch-rows", type=int, default=16)
    ap.add_argument("--max-segments", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=get_args(Dtype))
    ap.add_argument(
        "--probs", action="store_true", help="also write each attribute's level probabilities (categorical/ordinal)"
    )
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
    from rm_jax.evaluation.gate import is_gate
    from rm_jax.runs.read import load_scoring_model

    check_weights(a.weights, None)
    rows = read_score_rows(a.input)
    model = load_scoring_model(a.model, dtype=a.dtype, template=a.template, step=a.step)
    check_weights(a.weights, model.attributes)
    row_weights = None
    if is_gate(a.weights):  # weights per row from the gate on each row's prompt
        from rm_jax.evaluation.gate import open_gate
        from rm_jax.evaluation.gate import row_weights as gate_row_weights

        limit = a.seq_len or model.cfg.max_position_embeddings
        gate = open_gate(a.weights, model.attributes)
        row_weights = gate_row_weights(gate, model, rows, limit, a.batch_rows, a.max_segments, not a.no_progress)
    else:
        note = weights_note(a.weights, model.attributes)  # a W.json naming a subset: the rest weigh 0
        if note:
            print(f"rm-jax score: {note}", file=sys.stderr)
    out = score_rows(
        model,
        rows,
        a.weights,
        a.batch_rows,
        a.max_segments,
        a.seq_len,
        not a.no_progress,
        a.input,
        a.probs,
        row_weights,
        share_prompts="auto" if a.share_prompts is None else a.share_prompts,
    )
    write_scored(a.output, rows, model.attributes, *out, row_weights=row_weights)
    print(f"scored {len(rows)} rows -> {a.output}")
    return 0
