"""Request bodies -> validated inputs, and the response bodies. No HTTP here, no model.

Every rejection is a :class:`BadRequest` that names the row (0-based index into the request's list)
and the field, e.g. ``rows[3].prompt: must be a string, got int``; the app answers it as
``{"error": message, "row": 3, "field": "prompt"}`` with its status (400, or 413 for size).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import resolve_reward_weights
from rm_jax.core.errors import ConversationError
from rm_jax.data.conversation import Message, row_to_messages


class BadRequest(Exception):
    """A request the server will not score; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, row: Optional[int] = None, field: Optional[str] = None, status: int = 400):
        super().__init__(message)
        self.message, self.row, self.field, self.status = message, row, field, status

    def body(self) -> dict:
        return {"error": self.message, "row": self.row, "field": self.field}


@dataclass
class ScoreRequest:
    conversations: list[list[Message]]
    weights: Optional[np.ndarray]  # None: the server's default
    fields: list[str]  # per row: the field a template failure is reported on
    probs: bool = False  # also each attribute's level probabilities (a categorical or ordinal head)


@dataclass
class RewardRequest:
    texts: list[str]
    weights: Optional[np.ndarray]


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise BadRequest(f"body: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (UnicodeDecodeError, RecursionError, ValueError) as e:
        raise BadRequest(f"body: not readable as JSON ({type(e).__name__})") from None


def _type(x: Any) -> str:
    return (
        "null"
        if x is None
        else {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(x), type(x).__name__)
    )


def _object(obj: Any) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise BadRequest(f"body: expected a JSON object, got {_type(obj)}")
    return obj


def _list(obj: Mapping[str, Any], field: str, max_rows: int) -> list:
    if field not in obj:
        raise BadRequest(f"body: field '{field}' is required", field=field)
    if not isinstance(obj[field], list):
        raise BadRequest(f"body: field '{field}' must be an array, got {_type(obj[field])}", field=field)
    if len(obj[field]) > max_rows:  # checked before any row is looked at: it could never be admitted
        raise BadRequest(
            f"{field}: {len(obj[field])} rows in one request, more than the server's --max-queue of "
            f"{max_rows}; split the request",
            field=field,
            status=413,
        )
    return obj[field]


def parse_weights(obj: Mapping[str, Any], attributes: Sequence[str]) -> Optional[np.ndarray]:
    """``"weights"``: a preset name, an object ``{attribute: weight}`` (by name; attributes it leaves out
    weigh 0), or "w1,...,wn" / an array of numbers in the model's attribute order; absent or null: the server's."""
    spec = obj.get("weights")
    if spec is None:
        return None
    if isinstance(spec, list) and not all(_is_number(v) for v in spec):
        raise BadRequest("weights: an array of weights must hold numbers only", field="weights")
    if isinstance(spec, dict) and not all(_is_number(v) for v in spec.values()):
        raise BadRequest("weights: an object of weights must map attribute names to numbers", field="weights")
    if not isinstance(spec, (str, list, dict)):
        raise BadRequest(
            f"weights: must be a preset name, an object {{attribute: weight}}, a comma-separated string or an "
            f"array of numbers, got {_type(spec)}",
            field="weights",
        )
    try:
        return resolve_reward_weights(spec, attributes, allow_file=False)  # a client may not read server files
    except ValueError as e:
        raise BadRequest(f"weights: {e}", field="weights") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_row(i: int, row: Any) -> str:
    """The same rules as rm_jax.data.conversation.row_to_messages, checked first so the error names the field.
    Returns the field a chat-template failure on this row is reported on."""
    where = f"rows[{i}]"
    if not isinstance(row, dict):
        raise BadRequest(
            f"{where}: expected an object with 'prompt' and 'response', or 'messages'; got {_type(row)}", row=i
        )
    if row.get("messages") is not None:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest(f"{where}.messages: must be a non-empty array", row=i, field="messages")
        for j, m in enumerate(msgs):
            f = f"messages[{j}]"
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise BadRequest(f"{where}.{f}: needs 'role' and 'content'", row=i, field=f)
            for key in ("role", "content"):
                if not isinstance(m[key], str):
                    raise BadRequest(
                        f"{where}.{f}.{key}: must be a string, got {_type(m[key])}", row=i, field=f"{f}.{key}"
                    )
        if msgs[-1]["role"] != "assistant":
            f = f"messages[{len(msgs) - 1}].role"
            raise BadRequest(
                f"{where}.{f}: the last message must be the assistant's response, got {msgs[-1]['role']!r}",
                row=i,
                field=f,
            )
        return "messages"
    for key in ("prompt", "response"):
        if key not in row:
            raise BadRequest(f"{where}.{key}: is required (or give 'messages')", row=i, field=key)
        if not isinstance(row[key], str):
            raise BadRequest(f"{where}.{key}: must be a string, got {_type(row[key])}", row=i, field=key)
    return "prompt"


def parse_score_request(obj: Any, attributes: Sequence[str], max_rows: int, has_levels: bool = False) -> ScoreRequest:
    """``{"rows": [{"prompt", "response"} | {"messages"}], "weights"?: ..., "probs"?: bool}``; at most
    ``max_rows`` rows (413). ``"probs": true`` needs a model with level probabilities (``has_levels``)."""
    obj = _object(obj)
    probs = obj.get("probs", False)
    if not isinstance(probs, bool):
        raise BadRequest(f"probs: must be true or false, got {_type(probs)}", field="probs")
    if probs and not has_levels:
        raise BadRequest("probs: this model has a regression head (no level probabilities)", field="probs")
    rows = _list(obj, "rows", max_rows)
    fields = [_check_row(i, r) for i, r in enumerate(rows)]
    conversations = []
    for i, r in enumerate(rows):
        try:  # the one definition of what the RM reads (rm-jax score uses it too)
            conversations.append(row_to_messages(r, where=f"rows[{i}]"))
        except ConversationError as e:
            raise BadRequest(str(e), row=i, field=fields[i]) from None
    return ScoreRequest(conversations, parse_weights(obj, attributes), fields, probs)


def parse_reward_request(obj: Any, attributes: Sequence[str], max_rows: int) -> RewardRequest:
    """OpenRLHF's remote-RM body: ``{"query": [text, ...], "prompts"?: [...], "labels"?: [...]}``.
    ``prompts`` and ``labels`` are accepted and not used (an RM scores the whole text)."""
    obj = _object(obj)
    texts = _list(obj, "query", max_rows)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BadRequest(f"query[{i}]: must be a string, got {_type(t)}", row=i, field="query")
    return RewardRequest(texts, parse_weights(obj, attributes))


# ---------------------------------------------------------------- responses


def score_response(
    attributes: Sequence[str],
    pred: np.ndarray,
    reward: np.ndarray,
    tokens: Sequence[int],
    errors: Mapping[int, str],
    probs: Optional[np.ndarray] = None,
    row_weights: Optional[np.ndarray] = None,
) -> dict:
    """``{"results": [...]}`` in row order; a row the server did not score carries ``error`` and nulls.
    Given ``probs`` [N, A, K]: each result also has ``"probs": {attribute: [P(level 0), ...]}``; given
    ``row_weights`` [N, A] (a prompt gate's): ``"weights": {attribute: weight}``, the row's reward weights."""
    results = []
    for i, n in enumerate(tokens):
        if i in errors:
            results.append({"attributes": None, "reward": None, "tokens": int(n), "error": errors[i]})
            if probs is not None:
                results[-1]["probs"] = None
            if row_weights is not None:
                results[-1]["weights"] = None
        else:
            results.append(
                {
                    "attributes": {a: float(v) for a, v in zip(attributes, pred[i])},
                    "reward": float(reward[i]),
                    "tokens": int(n),
                }
            )
            if probs is not None:
                results[-1]["probs"] = {a: [float(x) for x in p] for a, p in zip(attributes, probs[i])}
            if row_weights is not None:
                results[-1]["weights"] = {a: float(x) for a, x in zip(attributes, row_weights[i])}
    return {"results": results}


def reward_response(reward: np.ndarray, errors: Mapping[int, str]) -> dict:
    """``{"rewards": [...], "scores": [...]}`` (OpenRLHF reads ``rewards``, and ``scores`` where present);
    a query the server did not score is null there and named in ``errors``."""
    rewards = [None if i in errors else float(r) for i, r in enumerate(reward)]
    out: dict = {"rewards": rewards, "scores": list(rewards)}
    if errors:
        out["errors"] = [{"index": i, "error": msg} for i, msg in sorted(errors.items())]
    return out
