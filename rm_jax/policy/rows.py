"""``rm-jax lm generate`` / ``rm-jax lm logprob`` as library functions over JSON-lines rows.

Generate rows: ``{"prompt": str}`` (a HelpSteer2 prompt, turns joined by ``<extra_id_1>`` markers) or
``{"messages": [...]}`` ending with the user's turn, each optionally with ``"attributes"`` (a SteerLM
label string or ``{name: level}``). Logprob rows: the same with the response, ``{"prompt", "response"}``
or ``{"messages"}`` ending with the assistant's turn. Everything is checked before any model work;
errors name the file, line and field."""

from __future__ import annotations

from typing import Any, Sequence

from rm_jax.conversation import Message, row_to_messages, split_prompt, with_label, attribute_label
from rm_jax.errors import ConversationError, InputError
from rm_jax.files import iter_jsonl


def prompt_messages(row: dict, where: str) -> list[Message]:
    """The conversation a policy continues (ending with the user's turn), carrying the row's label."""
    try:
        if "messages" in row:
            msgs = row["messages"]
            if not isinstance(msgs, list) or not msgs:
                raise InputError(f"{where}, field 'messages': expected a non-empty list")
            if not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "user":
                raise InputError(f"{where}, field 'messages[{len(msgs) - 1}]': the last message must be the user's "
                                 f"turn (the policy writes the next one)")
            out = row_to_messages({"messages": list(msgs) + [{"role": "assistant", "content": "-"}]}, where)[:-1]
        elif "prompt" in row:
            if not isinstance(row["prompt"], str):
                raise InputError(f"{where}, field 'prompt': expected a string")
            out = split_prompt(row["prompt"])
        else:
            raise InputError(f"{where}: needs 'prompt' or 'messages'")
        if not out[-1]["content"].strip():
            raise InputError(f"{where}, field '{'prompt' if 'prompt' in row else 'messages'}': empty prompt")
        label = attribute_label(row["attributes"], where) if row.get("attributes") is not None else None
    except ConversationError as e:
        raise InputError(str(e)) from None
    return with_label(out, label)


def response_messages(row: dict, where: str) -> list[Message]:
    """A whole conversation ending with the response, carrying the row's label."""
    try:
        msgs = row_to_messages(row, where, with_attributes=True)
    except ConversationError as e:
        raise InputError(str(e)) from None
    if not msgs[-1]["content"].strip():
        raise InputError(f"{where}, field 'response': empty response")
    return msgs


def read_rows(path: str, parse: Any) -> tuple[list[dict], list[list[Message]]]:
    rows, convs = [], []
    for lineno, row in iter_jsonl(path):
        convs.append(parse(row, f"{path}: line {lineno}"))
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows, convs


def generate_rows(policy: Any, path: str, *, n: int = 1, temperature: float = 1.0, top_p: float = 1.0,
                  max_new_tokens: int = 256, seed: int = 0, greedy: bool = False, batch_size: int = 8,
                  progress: bool = True) -> list[dict]:
    """The input rows plus ``"responses"`` (n texts each)."""
    from rm_jax.policy.generate import generate
    if n < 1:
        raise InputError(f"--n: must be at least 1, got {n}")
    rows, convs = read_rows(path, prompt_messages)
    texts = generate(policy, convs, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                     seed=seed, greedy=greedy, batch_size=batch_size, progress=progress)
    return [{**r, "responses": t} for r, t in zip(rows, texts)]


def logprob_rows(policy: Any, path: str, *, batch_rows: int = 8, progress: bool = True) -> list[dict]:
    """The input rows plus ``"logprob"`` (the response's summed token log-probabilities, given the prompt
    and the label when present) and ``"response_tokens"``."""
    from rm_jax.policy.logprob import response_logprobs
    rows, convs = read_rows(path, response_messages)
    lp, count = response_logprobs(policy, convs, batch_rows=batch_rows, progress=progress)
    return [{**r, "logprob": float(a), "response_tokens": int(c)} for r, a, c in zip(rows, lp, count)]


__all__: Sequence[str] = ("prompt_messages", "response_messages", "generate_rows", "logprob_rows")
