"""SteerLM 2.0 groups: a group is one context (its prompt cut once, for its longest response, never through the
label, or the group dropped), and NeMo-Aligner's rules (prompt turns alternating User/Assistant from and to
User, equal group sizes) checked with messages naming the group. Round trips, weights and batches are in
tests/engine/test_losses.py."""

from __future__ import annotations

import dataclasses
import json

import pytest

from rm_jax.core.errors import ConversationError, DataError
from rm_jax.data.pipeline import bundled_tokenizer_path
from rm_jax.data.steer_groups import encode_groups, equalise, load_groups, unequal_sizes
from rm_jax.models.hf_io import load_tokenizer

LABEL = "helpfulness:4,verbosity:1"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(bundled_tokenizer_path())


def _group(turns, responses, label=LABEL):
    return {
        "system": "",
        "prompt_turns": [{"from": "User" if i % 2 == 0 else "Assistant", "value": t} for i, t in enumerate(turns)],
        "label": label,
        "responses": [
            {"from": "Assistant", "value": y, "log(P(a|x,y))": -1.0, "log(P(y|x))": -2.0 - i, "log(Q(y|a,x))": -3.0}
            for i, y in enumerate(responses)
        ],
    }


def _load(tmp_path, groups):
    p = tmp_path / "groups.jsonl"
    p.write_text("".join(json.dumps(g) + "\n" for g in groups))
    return load_groups(str(p)), str(p)


TURNS = ["Tell me about the weather in Paris in spring, please.", "It is mild.", "And in the autumn?"]
RESPONSES = ["Cool.", "Cool and rainy, with some sunny days.", "Often rainy, with mild days and cold nights."]


def _lengths(tok, groups):
    full = encode_groups(groups, tok, 10_000)
    return [len(x) for x in full.ids], [int(s) for s in full.response_start]


def test_a_groups_prompt_is_cut_once_for_its_longest_response(tok, tmp_path):
    groups, _ = _load(tmp_path, [_group(TURNS, RESPONSES)])
    lengths, starts = _lengths(tok, groups)
    seq_len = max(lengths) - 5
    enc = encode_groups(groups, tok, seq_len)
    assert enc.report.truncated == 1 and enc.report.dropped == 0
    prompts = [x[:s].tolist() for x, s in zip(enc.ids, enc.response_start)]
    assert prompts[0] == prompts[1] == prompts[2]  # every response sees the same context
    assert len(prompts[0]) == starts[0] - 5 and max(len(x) for x in enc.ids) == seq_len
    assert f"<extra_id_2>{LABEL}\n" in tok.decode(prompts[0])
    full = encode_groups(groups, tok, 10_000)
    for x, s, y, t in zip(enc.ids, enc.response_start, full.ids, full.response_start):
        assert x[s:].tolist() == y[t:].tolist()  # responses whole
        assert x[:s].tolist() == y[t - len(prompts[0]) : t].tolist()  # the prompt's end kept


def test_a_cut_that_would_reach_the_label_drops_the_group(tok, tmp_path):
    groups, _ = _load(tmp_path, [_group(TURNS, RESPONSES)])
    lengths, starts = _lengths(tok, groups)
    label_turn = len(tok(f"<extra_id_2>{LABEL}\n", add_special_tokens=False)["input_ids"])
    header = len(tok("<extra_id_1>Assistant\n", add_special_tokens=False)["input_ids"])
    room = max(lengths) - starts[0] + header + label_turn  # the longest response, its header and its label turn
    enc = encode_groups(groups, tok, room)
    prompt = tok.decode(enc.ids[0][: enc.response_start[0]])
    assert enc.report.truncated == 1 and prompt == f"<extra_id_1>Assistant\n<extra_id_2>{LABEL}\n"
    enc = encode_groups(groups, tok, room - 1)  # one token short: the header before the label would be cut
    assert enc.report.dropped == 1 and not enc.ids
    enc = encode_groups(groups, tok, max(lengths) - 5, overlength="drop")
    assert enc.report.dropped == 1 and not enc.ids


def test_a_label_in_the_system_message_is_never_cut(tok, tmp_path):
    """A template without a label turn carries the label in the system message, first: any cut would remove
    it, so an over-long group is dropped rather than trained without its label."""
    template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    groups, _ = _load(tmp_path, [_group(TURNS, RESPONSES)])
    full = encode_groups(groups, tok, 10_000, template=template)
    assert tok.decode(full.ids[0]).startswith(f"[system] {LABEL}")
    enc = encode_groups(groups, tok, max(len(x) for x in full.ids) - 2, template=template)
    assert enc.report.dropped == 1 and not enc.ids


@pytest.mark.parametrize(
    "turns, field",
    [
        (lambda t: t.__setitem__(1, {"from": "User", "value": "again"}), "prompt_turns[1]"),
        (lambda t: t.__setitem__(0, {"from": "Assistant", "value": "hi"}), "prompt_turns[0]"),
        (lambda t: t.pop(), "prompt_turns[1]"),  # ends with Assistant
    ],
)
def test_prompt_turns_must_alternate_from_and_to_user(tmp_path, turns, field):
    bad = _group(TURNS, RESPONSES)
    turns(bad["prompt_turns"])
    with pytest.raises(DataError) as e:
        _load(tmp_path, [_group(TURNS, RESPONSES), bad])
    assert f"row 2, field '{field}'" in str(e.value) and ("alternate" in str(e.value) or "end with" in str(e.value))


def test_unequal_group_sizes_are_named_and_equalised():
    assert unequal_sizes([3, 3, 3]) is None
    msg = unequal_sizes([3, 2, 3, 1], lambda i: f"samples.jsonl: line {i + 1}")
    assert msg.startswith("samples.jsonl: line 2 holds 2 responses, while the largest groups hold 3 (2 of 4")
    groups = [list("abc"), list("ab"), list("xyz"), list("q")]
    kept, n = equalise(groups, "drop", len, lambda g, k: g)
    assert kept == [list("abc"), list("xyz")] and n == 2
    filled, n = equalise(groups, "fill", len, lambda g, k: [g[j % len(g)] for j in range(k)])
    assert filled == [list("abc"), list("aba"), list("xyz"), list("qqq")] and n == 2
    assert unequal_sizes([len(g) for g in filled]) is None


def test_groups_carry_the_drawn_ids_and_training_encodes_them(tok, tmp_path):
    """`steer label` writes each response's drawn ids into its group; the steerlm2 task trains on those tokens
    (what log Q' was scored on), not on a re-encoding of the text, which differs for a split character."""
    from rm_jax.data.conversation import end_of_turn_ids, response_text
    from rm_jax.data.steer_groups import group_record, write_groups

    split = tok("hé", add_special_tokens=False)["input_ids"][:2] + end_of_turn_ids(tok)[:1]  # 'h' + half of 'é'
    text = response_text(tok, tok.decode(split, skip_special_tokens=False))
    rec = group_record("", [{"role": "user", "content": TURNS[0]}], LABEL, [text, "Fine."], [-1, -1], [-2, -2],
                       [-3, -3], [split, None])  # fmt: skip
    assert rec["responses"][0]["response_ids"] == split and "response_ids" not in rec["responses"][1]
    groups, path = _load(tmp_path, [rec])
    assert groups[0].response_ids == [split, None]
    write_groups(str(tmp_path / "again.jsonl"), groups)  # the ids survive a rewrite
    assert load_groups(str(tmp_path / "again.jsonl"))[0].response_ids == [split, None]
    enc = encode_groups(groups, tok, 10_000)
    assert enc.ids[0][enc.response_start[0] :].tolist() == split
    plain = encode_groups([dataclasses.replace(groups[0], response_ids=None)], tok, 10_000)
    assert plain.ids[0][plain.response_start[0] :].tolist() != split  # the text alone would train other tokens
    assert enc.ids[1].tolist() == plain.ids[1].tolist()  # a response without ids: its text, as before

    rec["responses"][1]["response_ids"] = [5, "6"]
    with pytest.raises(DataError) as e:
        _load(tmp_path, [rec])
    assert str(e.value).startswith(f"{path}: row 1, field 'responses[1].response_ids': item 1 is '6'")
    rec["responses"][1]["response_ids"] = [len(tok)]
    groups, _ = _load(tmp_path, [rec])
    with pytest.raises(ConversationError, match=r"row 1, field 'responses\[1\]': response_ids: token id 1000 is out"):
        encode_groups(groups, tok, 10_000)
