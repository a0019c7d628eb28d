"""``rm-jax lm generate`` / ``rm-jax lm logprob`` as library functions over JSON-lines rows.

Generate rows: ``{"prompt": str}`` (a HelpSteer2 prompt, turns joined by ``<extra_id_1>`` markers) or
``{"messages": [...]}`` ending with the user's turn, each optionally with ``"attributes"`` (a SteerLM
label string or ``{name: level}``). Logprob rows: the same with the response, ``{"prompt", "response"}``
or ``{"messages"}`` ending with the assistant's turn, optionally with ``"response_ids"`` (the token ids the
policy drew for that response, as ``lm generate`` writes them: the log-probability is then that of those
tokens). Every row is checked before any model work; errors name the file, line and field.

``where`` names rows in errors: a string (row i is ``"{where}: row {i}"``) or one location per row (what
:func:`read_prompt_rows` / :func:`read_response_rows` return: ``"IN.jsonl: line 7"``)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

from rm_jax.core.errors import ConversationError, InputError
from rm_jax.core.files import iter_jsonl
from rm_jax.data.conversation import (
    ATTRIBUTES_ROLE,
    Message,
    attribute_label,
    row_to_messages,
    split_prompt,
    with_label,
)
from rm_jax.data.drawn_tokens import FIELD as IDS
from rm_jax.data.drawn_tokens import ids_problem, parse_ids

Where = Union[str, Sequence[str]]


def prompt_messages(row: dict, where: str) -> list[Message]:
    """The conversation a policy continues (ending with the user's turn), carrying the row's label."""
    try:
        if "messages" in row:
            msgs = row["messages"]
            if not isinstance(msgs, list) or not msgs:
                raise InputError(f"{where}, field 'messages': expected a non-empty list")
            if not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "user":
                raise InputError(
                    f"{where}, field 'messages[{len(msgs) - 1}]': the last message must be the user's "
                    f"turn (the policy writes the next one)"
                )
            out = row_to_messages({"messages": list(msgs) + [{"role": "assistant", "content": "-"}]}, where)[:-1]
            field = "messages"
        elif "prompt" in row:
            if not isinstance(row["prompt"], str):
                raise InputError(f"{where}, field 'prompt': expected a string")
            out = split_prompt(row["prompt"])
            if out[-1]["role"] != "user":
                raise InputError(
                    f"{where}, field 'prompt': ends with an assistant turn; a prompt ends with the "
                    f"user's turn (the policy writes the next one)"
                )
            field = "prompt"
        else:
            raise InputError(f"{where}: needs 'prompt' or 'messages'")
        if not out[-1]["content"].strip():
            raise InputError(f"{where}, field '{field}': empty prompt")
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
        field = "messages" if "messages" in row else "response"
        raise InputError(f"{where}, field '{field}': empty response")
    prompt = [m for m in msgs[:-1] if m["role"] != ATTRIBUTES_ROLE]
    if not prompt or not prompt[-1]["content"].strip():
        raise InputError(f"{where}, field '{'messages' if 'messages' in row else 'prompt'}': empty prompt")
    if row.get(IDS) is not None:
        problem = parse_ids(row[IDS])
        if problem:
            raise InputError(f"{where}, field '{IDS}': {problem}")
    return msgs


def _locations(rows: Sequence[dict], where: Where) -> list[str]:
    if isinstance(where, str):
        return [f"{where}: row {i + 1}" for i in range(len(rows))]
    if len(where) != len(rows):
        raise ValueError(f"{len(where)} row locations for {len(rows)} rows")
    return list(where)


def _read(
    path: str, parse: Callable[[dict, str], Any], skipped: Optional[list[str]] = None
) -> tuple[list[dict], list[str]]:
    rows, wheres = [], []
    for lineno, row in iter_jsonl(path):
        where = f"{path}: line {lineno}"
        try:
            parse(row, where)  # every row checked before any model work
        except InputError as e:
            if skipped is None:
                raise
            skipped.append(str(e))
            continue
        rows.append(row)
        wheres.append(where)
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows, wheres


def read_prompt_rows(path: str) -> tuple[list[dict], list[str]]:
    """(rows, their locations ``"PATH: line N"``) of an ``rm-jax lm generate`` input, every row checked."""
    return _read(path, prompt_messages)


def read_response_rows(path: str, skipped: Optional[list[str]] = None) -> tuple[list[dict], list[str]]:
    """(rows, their locations) of an ``rm-jax lm logprob`` input, every row checked. With a ``skipped`` list
    (``--on-bad-row skip``) a bad row is left out and its error appended there instead of raised."""
    return _read(path, response_messages, skipped)


def generate_rows(
    policy: Any,
    rows: Sequence[dict],
    *,
    where: Where = "rows",
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    greedy: bool = False,
    batch_size: int = 8,
    progress: bool = True,
) -> list[dict]:
    """The rows plus ``"responses"`` (n texts each, in row order), sampled as :func:`rm_jax.policy.generate`
    samples (a row's ``"attributes"`` condition it), ``"response_ids"`` (per response, the token ids drawn,
    through the end-of-turn token when one was drawn: a response's text need not re-encode to them, e.g. one
    that stops inside a multi-byte character), ``"finished"`` (per response: it ended its turn
    within ``max_new_tokens``; false means cut off) and ``"sampling"`` (the settings they were drawn with:
    temperature, 0 for greedy, top_p, seed, max_new_tokens; ``rm-jax steer label`` scores log Q' under them)."""
    from rm_jax.policy.generate import generate, sampling_record

    if n < 1:
        raise InputError(f"--n: must be at least 1, got {n}")
    locations = _locations(rows, where)
    convs = [prompt_messages(r, w) for r, w in zip(rows, locations)]
    gen = generate(
        policy,
        convs,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        greedy=greedy,
        batch_size=batch_size,
        progress=progress,
        locations=locations,
        return_tokens=True,
    )
    settings = sampling_record(temperature, top_p, seed, max_new_tokens, greedy)
    return [
        {**r, "responses": t, IDS: [x.tolist() for x in ids], "finished": f, "sampling": settings}
        for r, t, ids, f in zip(rows, gen.texts, gen.tokens, gen.finished)
    ]


def logprob_rows(
    policy: Any,
    rows: Sequence[dict],
    *,
    where: Where = "rows",
    batch_rows: int = 8,
    progress: bool = True,
    skipped: Optional[list[str]] = None,
) -> list[dict]:
    """The rows plus ``"logprob"`` (the summed token log-probabilities of the response, or of its
    ``"response_ids"`` when the row has them, given the prompt and the label when present) and
    ``"response_tokens"``. A row whose ids cannot be scored (outside the policy's vocabulary, or not decoding to
    the response) raises, naming it; with a ``skipped`` list it is left out and its error appended there."""
    from rm_jax.policy.logprob import response_logprobs

    locations = _locations(rows, where)
    keep, convs, ids = [], [], []
    for i, (r, w) in enumerate(zip(rows, locations)):
        try:
            msgs = response_messages(r, w)
            drawn = r.get(IDS)
            problem = None
            if drawn is not None:
                problem = ids_problem(
                    policy.tokenizer, msgs[-1]["content"], drawn, policy.template, policy.cfg.vocab_size
                )
            if problem:
                raise InputError(f"{w}, field '{IDS}': {problem}")
        except InputError as e:
            if skipped is None:
                raise
            skipped.append(str(e))
            continue
        keep.append(i)
        convs.append(msgs)
        ids.append(drawn)
    lp, count = response_logprobs(
        policy,
        convs,
        batch_rows=batch_rows,
        progress=progress,
        locations=[locations[i] for i in keep],
        response_ids=ids,
    )
    return [{**rows[i], "logprob": float(a), "response_tokens": int(c)} for i, a, c in zip(keep, lp, count)]


__all__ = [
    "prompt_messages",
    "response_messages",
    "read_prompt_rows",
    "read_response_rows",
    "generate_rows",
    "logprob_rows",
]
