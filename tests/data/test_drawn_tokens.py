"""Responses given as the token ids a policy drew: encoded after the prompt as the sampler encoded it, even when
their text does not re-encode to them (a partial UTF-8 character of the byte-level bundled tokenizer), and ids
that cannot stand for the response refused by location and field. Tokenizer only, no model."""

from __future__ import annotations

import numpy as np
import pytest

from rm_jax.core.errors import ConversationError
from rm_jax.data.conversation import encode_prompts, encode_responses, end_of_turn_ids, response_text
from rm_jax.data.drawn_tokens import encode_with_response_ids, ids_problem, parse_ids
from rm_jax.data.pipeline import bundled_tokenizer_path
from rm_jax.models.hf_io import load_tokenizer

PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(bundled_tokenizer_path())


def _split_character(tok) -> list[int]:
    """Ids a byte-level policy can draw: 'h' then the first byte of 'é' alone, then its end of turn."""
    ids = tok("hé", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3 and "\ufffd" in tok.decode(ids[:2])  # h, then é as two byte tokens
    return ids[:2] + end_of_turn_ids(tok)[:1]


def _conv(tok, ids):
    text = response_text(tok, tok.decode(ids, skip_special_tokens=False))  # what `lm generate` writes
    return PROMPT + [{"role": "assistant", "content": text}]


def test_drawn_ids_are_scored_even_when_their_text_re_encodes_otherwise(tok):
    drawn = _split_character(tok)
    conv = _conv(tok, drawn)
    assert conv[-1]["content"] == "h\ufffd"
    text_ids, text_start = encode_responses(tok, [conv])
    assert text_ids[0][text_start[0] :].tolist() != drawn  # the text alone loses what was drawn
    ids, start = encode_with_response_ids(tok, [conv, conv], [drawn, None])
    prompt = encode_prompts(tok, [PROMPT])[0]
    assert ids[0][: start[0]].tolist() == prompt.tolist() and ids[0][start[0] :].tolist() == drawn
    # a conversation without ids is encoded from its text, exactly as before
    assert ids[1].tolist() == text_ids[0].tolist() and start[1] == text_start[0]


def test_a_cut_off_response_gets_the_end_of_turn_the_text_path_gives_it(tok):
    """Ids without an end of turn (cut off at max_new_tokens) are followed by what the template writes before
    its end of turn (the nemotron template's newline) and that token: for a text that re-encodes to its ids,
    the same tokens as the text path."""
    drawn = tok("hello there", add_special_tokens=False)["input_ids"]
    conv = PROMPT + [{"role": "assistant", "content": "hello there"}]
    ids, start = encode_with_response_ids(tok, [conv], [drawn])
    text_ids, text_start = encode_responses(tok, [conv])
    assert ids[0].tolist() == text_ids[0].tolist() and start[0] == text_start[0]
    assert ids[0][-1] == end_of_turn_ids(tok)[0] and len(ids[0]) > len(drawn) + start[0] + 1


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda ids, tok: ids[:-1] + [len(tok)], "token id 1000 is outside the vocabulary (ids 0..999)"),
        (lambda ids, tok: ids[:1] + end_of_turn_ids(tok)[:1] + ids[1:], "end-of-turn token at position 1"),
        (lambda ids, tok: tok("hi", add_special_tokens=False)["input_ids"], "decode to 'hi', not the response text"),
        (lambda ids, tok: ids[:1] + [True], "item 1 is True, not a token id"),
        (lambda ids, tok: ids[:1] + [-3], "item 1 is -3, not a token id"),
        (lambda ids, tok: [], "expected a non-empty list"),
    ],
)
def test_ids_that_cannot_stand_for_the_response_are_named(tok, change, needle):
    drawn = _split_character(tok)
    conv = _conv(tok, drawn)
    with pytest.raises(ConversationError) as e:
        encode_with_response_ids(tok, [conv], [change(drawn, tok)], locations=["s.jsonl: line 4, field 'responses[1]'"])
    msg = str(e.value)
    assert msg.startswith("s.jsonl: line 4, field 'responses[1]': response_ids: ") and needle in msg, msg


def test_the_vocabulary_bound_is_the_models_when_given(tok):
    """A model's embedding table may be larger than its tokenizer (padded); JAX would clamp an id past it."""
    drawn = _split_character(tok)
    text = _conv(tok, drawn)[-1]["content"]
    assert ids_problem(tok, text, drawn, None) is None
    assert "outside the vocabulary (ids 0..1)" in ids_problem(tok, text, drawn, None, vocab_size=2)
    assert parse_ids(np.asarray(drawn).tolist()) is None and parse_ids("1 2") is not None
