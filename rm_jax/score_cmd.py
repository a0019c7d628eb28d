"""``rm-jax score``: attribute scores and a scalar reward for every row of a jsonl file."""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional, Sequence

import numpy as np

from rm_jax.attributes import resolve_reward_weights
from rm_jax.conversation import ConversationError, encode, row_to_messages
from rm_jax.files import write_jsonl


class InputError(ValueError):
    pass


def read_jsonl_rows(path: str) -> list[dict]:
    """Every row parsed and checked before any scoring: errors name the file and the 1-based line."""
    rows = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InputError(f"{path}: line {lineno}: invalid UTF-8") from None
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}: line {lineno}: expected a JSON object")
            try:
                row_to_messages(obj, where=f"{path}: line {lineno}")
            except ConversationError as e:
                raise InputError(str(e)) from None
            rows.append(obj)
    return rows


def score_rows(model: Any, rows: Sequence[dict], weights: Any = "70b-rewardbench", batch_rows: int = 16,
               max_segments: int = 16, seq_len: Optional[int] = None, progress: bool = True,
               where: str = "input") -> tuple[np.ndarray, np.ndarray]:
    """(attributes [N, A], reward [N]) for rows in either input form. A conversation longer than
    ``seq_len`` (default: the model's max_position_embeddings) is an error naming its row."""
    from rm_jax.scoring import Scorer
    w = resolve_reward_weights(weights, model.cfg.num_labels)
    ids = encode(model.tokenizer, [row_to_messages(r) for r in rows], model.template)
    limit = seq_len or model.cfg.max_position_embeddings
    for i, x in enumerate(ids):
        if len(x) > limit:
            raise InputError(f"{where}: row {i + 1}: {len(x)} tokens, more than the limit of {limit} "
                             f"({'--seq-len' if seq_len else 'the model max_position_embeddings'})")
    longest = max((len(x) for x in ids), default=1)
    seq_len = seq_len or min(max(512, ((longest + 127) // 128) * 128), limit)
    pred = Scorer(model.cfg, model.params, model.mesh, model.pad_id).predict(
        ids, seq_len, batch_rows, max_segments, progress=progress)
    return pred, pred.astype(np.float64) @ w


def write_scored(path: str, rows: Sequence[dict], attributes: Sequence[str], pred: np.ndarray, reward: np.ndarray) -> None:
    """Written to a temporary file and renamed: a crash never leaves a half-written output."""
    write_jsonl(path, ({**r, "attributes": {a: float(v) for a, v in zip(attributes, p)}, "reward": float(s)}
                       for r, p, s in zip(rows, pred, reward)))


def _check_weights(spec: str, n: Optional[int]) -> None:
    try:
        if n is None:
            if "," not in spec:
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
    ap.add_argument("--weights", default="70b-rewardbench", help="preset name or w1,...,w5")
    ap.add_argument("--template", default=None, help="chat template: the tokenizer's own (default) or 'nemotron'")
    ap.add_argument("--batch-rows", type=int, default=16)
    ap.add_argument("--max-segments", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    from rm_jax.runs import load_scoring_model
    _check_weights(a.weights, None)  # a bad preset name fails before anything is loaded
    rows = read_jsonl_rows(a.input)
    model = load_scoring_model(a.model, dtype=a.dtype, template=a.template)
    _check_weights(a.weights, model.cfg.num_labels)
    pred, reward = score_rows(model, rows, a.weights, a.batch_rows, a.max_segments, a.seq_len, not a.no_progress,
                              where=a.input)
    write_scored(a.output, rows, model.attributes, pred, reward)
    print(f"scored {len(rows)} rows -> {a.output}")
    return 0
