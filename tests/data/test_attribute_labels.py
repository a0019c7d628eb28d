"""SteerLM attribute labels: parsed and checked once, placed where the template puts them (the
nemotron label turn, or a system message), never read by the reward model."""

import pytest

from rm_jax.core.errors import ConversationError
from rm_jax.data.conversation import (
    ATTRIBUTES_ROLE,
    attribute_label,
    encode,
    encode_with_prompt_lengths,
    parse_attribute_label,
    render,
    row_to_messages,
)
from rm_jax.data.pipeline import bundled_tokenizer_path
from rm_jax.models.hf_io import load_tokenizer

ROW = {
    "prompt": "hi\n<extra_id_1>Assistant\nyo\n<extra_id_1>User\nsay more",
    "response": "ok then",
    "attributes": "helpfulness:4,verbosity:0",
}
PLAIN = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(bundled_tokenizer_path())


def test_label_forms_and_order():
    assert attribute_label({"verbosity": 4, "helpfulness": 2}) == "verbosity:4,helpfulness:2"
    assert attribute_label(" helpfulness : 4 ,verbosity:0") == "helpfulness:4,verbosity:0"
    assert parse_attribute_label("complexity:2") == {"complexity": 2}


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("helpfulness:5", "not an integer 0-4"),
        ({"verbosity": -1}, "not an integer 0-4"),
        ({"verbosity": 2.0}, "not an integer 0-4"),
        ({"verbosity": True}, "not an integer 0-4"),
        ("toxicity:1", "unknown attribute 'toxicity'"),
        ("helpfulness", "not name:level"),
        ("verbosity:1,verbosity:2", "given twice"),
        ("", "not name:level"),
        (["helpfulness", 4], "expected a string"),
    ],
)
def test_bad_labels_name_row_and_field(bad, needle):
    with pytest.raises(ConversationError) as e:
        row_to_messages({**ROW, "attributes": bad}, where="in.jsonl: line 7", with_attributes=True)
    assert str(e.value).startswith("in.jsonl: line 7, field 'attributes': ") and needle in str(e.value)


def test_nemotron_label_turn_after_the_assistant_header(tok):
    msgs = row_to_messages(ROW, with_attributes=True)
    assert msgs[0] == {"role": ATTRIBUTES_ROLE, "content": "helpfulness:4,verbosity:0"}
    head = "<extra_id_0>System\n\n<extra_id_1>User\nhi\n<extra_id_1>Assistant\nyo\n<extra_id_1>User\nsay more\n"
    assert render(tok, [msgs], "nemotron") == [
        head + "<extra_id_1>Assistant\n<extra_id_2>helpfulness:4,verbosity:0\nok then\n"
    ]
    assert render(tok, [msgs[:-1]], "nemotron", add_generation_prompt=True) == [
        head + "<extra_id_1>Assistant\n<extra_id_2>helpfulness:4,verbosity:0\n"
    ]
    # The tokenizer's own template (the bundled one is nemotron) places it the same way, and so does
    # transformers itself given the template variable: exported tokenizers keep working.
    assert render(tok, [msgs], None) == render(tok, [msgs], "nemotron")
    direct = tok.apply_chat_template(msgs[1:], tokenize=False, attribute_label="helpfulness:4,verbosity:0")
    assert [direct] == render(tok, [msgs], None)
    # The response part is what follows the labelled generation prompt.
    ids, plen = encode_with_prompt_lengths(tok, [msgs])
    assert tok.decode(ids[0][plen[0] :]) == "ok then\n"


def test_other_templates_get_the_label_as_a_system_message(tok):
    msgs = row_to_messages(ROW, with_attributes=True)
    assert render(tok, [msgs], PLAIN)[0].startswith("[system] helpfulness:4,verbosity:0\n[user] hi\n")
    with_system = row_to_messages(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ],
            "attributes": {"verbosity": 1},
        },
        with_attributes=True,
    )
    assert render(tok, [with_system], PLAIN)[0] == "[system] Be brief.\nverbosity:1\n[user] q\n[assistant] a\n"


def test_reward_model_path_ignores_labels(tok):
    plain = {k: v for k, v in ROW.items() if k != "attributes"}
    assert encode(tok, [row_to_messages(ROW)])[0].tolist() == encode(tok, [row_to_messages(plain)])[0].tolist()
    assert all(m["role"] != ATTRIBUTES_ROLE for m in row_to_messages(ROW))


def test_causal_lm_views_end_the_turn_with_eos(tok):
    from rm_jax.data.conversation import encode_prompts, encode_responses

    msgs = row_to_messages(ROW, with_attributes=True)
    ids, start = encode_responses(tok, [msgs])
    assert tok.decode(ids[0][start[0] :]) == "ok then\n</s>" and ids[0][-1] == tok.eos_token_id
    prompt = encode_prompts(tok, [msgs[:-1]])[0]
    assert prompt.tolist() == ids[0][: start[0]].tolist()  # what a policy continues is the prompt part
