"""Conversations whose response is given as the token ids a policy drew (``response_ids``), not only as text.

A sampled response's text does not always re-encode to the tokens drawn: a byte-level BPE policy can stop
half-way through a multi-byte character (its bytes decode to U+FFFD), and the text of an unusual split
re-encodes to the tokenizer's usual split. Log-probabilities of what was drawn (log Q' in SteerLM 2.0) and
training on it need the drawn ids, so ``rm-jax lm generate`` and the sample step write them beside the text
and the scorers use them where present: the prompt is encoded as the sampler encoded it (the template's
generation prompt, :func:`rm_jax.data.conversation.encode_prompts`) and the drawn ids follow it.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from rm_jax.core.errors import ConversationError
from rm_jax.data.conversation import Message, encode_prompts, encode_responses, end_of_turn_ids, response_text, turn_end

FIELD = "response_ids"


def parse_ids(value: Any) -> Optional[str]:
    """None when ``value`` is a non-empty list of non-negative integers (token ids as JSON gives them), else
    what is wrong with it (the caller names the file, row and field)."""
    if not isinstance(value, list) or not value:
        return f"expected a non-empty list of token ids, got {type(value).__name__}"
    for k, t in enumerate(value):
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            return f"item {k} is {t!r}, not a token id (an integer >= 0)"
    return None


def ids_problem(
    tokenizer: Any, text: str, ids: Any, template: Optional[str], vocab_size: Optional[int] = None
) -> Optional[str]:
    """None when ``ids`` can stand for the response ``text`` drawn by a policy with this tokenizer and template,
    else why not: an id outside the vocabulary (``vocab_size``, default the tokenizer's; JAX would clamp the
    lookup and score another token), an end of turn before the last id (the turn ended there), or ids that
    decode to other text than the response (the text was edited after sampling, or the ids are another
    response's)."""
    problem = parse_ids(ids)
    if problem:
        return problem
    size = int(vocab_size) if vocab_size is not None else len(tokenizer)
    bad = next((int(t) for t in ids if int(t) >= size), None)
    if bad is not None:
        return f"token id {bad} is outside the vocabulary (ids 0..{size - 1})"
    stops = set(end_of_turn_ids(tokenizer, template))
    early = next((k for k, t in enumerate(ids[:-1]) if int(t) in stops), None)
    if early is not None:
        return f"holds the end-of-turn token at position {early}, before its last token (a turn ends there)"
    decoded = response_text(tokenizer, tokenizer.decode([int(t) for t in ids], skip_special_tokens=False), template)
    if decoded != text:
        return f"decode to {decoded[:60]!r}, not the response text {text[:60]!r}"
    return None


def encode_with_response_ids(
    tokenizer: Any,
    conversations: Sequence[list[Message]],
    response_ids: Optional[Sequence[Optional[Sequence[int]]]],
    template: Optional[str] = None,
    locations: Optional[Sequence[str]] = None,
    vocab_size: Optional[int] = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`rm_jax.data.conversation.encode_responses` (ids, response_start), except that a conversation
    with ``response_ids[i]`` (not None) is its prompt's ids, as the sampler encoded them, followed by those
    ids: the tokens drawn, through the end of turn when one was drawn. A response cut off before its end of
    turn gets what the text path gives it: the text the template writes before its end-of-turn token, then
    that token. Ids that cannot stand for the response (:func:`ids_problem`) raise
    :class:`ConversationError` naming ``locations[i]`` and the field."""
    n = len(conversations)
    given = [None] * n if response_ids is None else list(response_ids)
    if len(given) != n:
        raise ValueError(f"{len(given)} response_ids for {n} conversations")
    names = list(locations) if locations is not None else [f"conversation {i + 1}" for i in range(n)]
    out: list[Optional[np.ndarray]] = [None] * n
    starts = np.zeros(n, np.int64)
    text_idx = [i for i in range(n) if given[i] is None]
    if text_idx:
        convs, where = [conversations[i] for i in text_idx], [names[i] for i in text_idx]
        ids, st = encode_responses(tokenizer, convs, template, where)
        for i, x, s in zip(text_idx, ids, st):
            out[i], starts[i] = x, s
    drawn_idx = [i for i in range(n) if given[i] is not None]
    if drawn_idx:
        stops = set(end_of_turn_ids(tokenizer, template))
        _, before = turn_end(tokenizer, template)
        # what the text path writes after a response that did not end its turn: the text before the end of turn
        ending = tokenizer(before, add_special_tokens=False)["input_ids"] if before else []
        ending = [int(t) for t in ending] + end_of_turn_ids(tokenizer, template)[:1]
        prompts = encode_prompts(tokenizer, [conversations[i][:-1] for i in drawn_idx], template)
        for i, p in zip(drawn_idx, prompts):
            drawn = given[i].tolist() if isinstance(given[i], np.ndarray) else given[i]
            problem = ids_problem(tokenizer, conversations[i][-1]["content"], drawn, template, vocab_size)
            if problem:
                raise ConversationError(f"{names[i]}: {FIELD}: {problem}")
            tail = drawn if drawn[-1] in stops else drawn + ending
            out[i], starts[i] = np.asarray(list(p) + tail, np.int32), len(p)
    return [x for x in out if x is not None], starts  # every slot is filled by one of the two paths
