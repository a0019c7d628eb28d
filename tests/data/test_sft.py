"""Causal-LM examples for task sft: response-only targets on packed rows (checked on hand-built rows),
labels from HelpSteer2 attributes, the over-length policy keeping response_start right, chat rows."""

import json

import numpy as np
import pytest

from rm_jax.core.errors import ConversationError, DataError
from rm_jax.data.packing import build_batch, token_targets
from rm_jax.data.pipeline import bundled_tokenizer_path, make_batch
from rm_jax.data.sft import encode_sft
from rm_jax.data.sources import load_chat
from rm_jax.models.hf_io import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(bundled_tokenizer_path())


def test_targets_and_mask_on_a_hand_built_packed_row():
    # Two conversations in one row of 12: a = [10 11 | 12 13] (response from position 2),
    # b = [20 | 21 22 23] (response from position 1), then pads (id 0).
    a, b = np.array([10, 11, 12, 13]), np.array([20, 21, 22, 23])
    batch = build_batch([a, b], np.zeros((2, 0)), np.zeros((2, 0)), [[0, 1]], seq_len=12, max_segments=4, pad_id=0)
    targets, mask = token_targets(batch, np.array([2, 1]))
    #            a: 10  11  12  13 | b: 20  21  22  23 | pads
    want_t = [11, 12, 13, 0, 21, 22, 23, 0, 0, 0, 0, 0]
    want_m = [0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0]  # token 11 predicts 12 (first response token); no cross-segment
    assert targets[0].tolist() == want_t and mask[0].tolist() == want_m


def test_encode_sft_labels_and_response_start(tok):
    rows = [
        {
            "prompt": "What is 2 + 2?",
            "response": "It is 4.",
            "helpfulness": 4,
            "correctness": 4,
            "coherence": 4,
            "complexity": 1,
            "verbosity": None,
            "_row": 0,
        }
    ]
    enc = encode_sft(rows, tok, 256, attributes_as_label=True)
    ids, start = enc.ids[0], int(enc.response_start[0])
    assert tok.decode(ids[start:]) == "It is 4.\n</s>"
    assert tok.decode(ids[:start]).endswith(
        "<extra_id_1>Assistant\n<extra_id_2>helpfulness:4,correctness:4,coherence:4,complexity:1\n"
    )
    plain = encode_sft(rows, tok, 256)
    assert "<extra_id_2>" not in tok.decode(plain.ids[0])
    # A row's own "attributes" wins over its columns.
    own = encode_sft([{**rows[0], "attributes": {"verbosity": 0}}], tok, 256, attributes_as_label=True)
    assert "<extra_id_2>verbosity:0\n" in tok.decode(own.ids[0])


def test_truncation_keeps_the_response_and_its_start(tok):
    rows = [
        {"prompt": "word " * 200, "response": "short answer", "_row": 0},
        {"prompt": "hi", "response": "long " * 300, "_row": 1},
    ]
    enc = encode_sft(rows, tok, 64)
    assert len(enc.ids) == 1 and enc.report.truncated == 1 and enc.report.dropped == 1
    ids, start = enc.ids[0], int(enc.response_start[0])
    assert len(ids) == 64 and tok.decode(ids[start:]) == "short answer\n</s>"
    batch = make_batch(enc, [[0]], 64, 1, 1, tok.pad_token_id)
    assert batch["loss_mask"].sum() == len(ids) - start  # every response token, nothing else
    assert "labels" not in batch


def test_chat_rows_and_their_errors(tmp_path, tok):
    good = tmp_path / "train.jsonl"
    good.write_text(
        json.dumps(
            {
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                "attributes": "verbosity:1",
            }
        )
        + "\n"
        + json.dumps({"prompt": "q", "response": "a", "attributes": {"helpfulness": 3}})
        + "\n"
    )
    rows = load_chat(str(good)).rows
    enc = encode_sft(rows, tok, 128)
    assert "<extra_id_2>verbosity:1\n" in tok.decode(enc.ids[0])
    assert "<extra_id_2>helpfulness:3\n" in tok.decode(enc.ids[1])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: row 1, field 'messages\[0\]'"):
        load_chat(str(bad))
    level = tmp_path / "level.jsonl"
    level.write_text(json.dumps({"prompt": "q", "response": "a", "attributes": "verbosity:7"}) + "\n")
    with pytest.raises(DataError, match=r"level.jsonl: row 1, field 'attributes': verbosity level '7'"):
        load_chat(str(level))
    with pytest.raises(ConversationError, match="row 3, field 'attributes': unknown attribute 'humor'"):
        encode_sft([{"prompt": "q", "response": "a", "attributes": "humor:2", "_row": 3}], tok, 128)


def test_sft_targets_end_at_the_templates_end_of_turn_token():
    """task sft with a template writing ``<|end|>\\n`` (the EOS) after a turn: the response targets run through
    ``<|end|>`` and stop there (no newline, no second EOS for the policy to learn)."""
    from tests.helpers import END_TEMPLATE, bundled_tokenizer

    tok = bundled_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|end|>", "<|user|>", "<|assistant|>"]})
    tok.eos_token, tok.chat_template = "<|end|>", END_TEMPLATE
    enc = encode_sft([{"prompt": "hello", "response": "hi! how can I help?", "_row": 0}], tok, 256)
    ids, start = enc.ids[0], int(enc.response_start[0])
    assert tok.convert_ids_to_tokens(ids[start:].tolist())[-3:] == ["Ġhelp", "?", "<|end|>"]
    assert tok.decode(ids) == "<|user|>\nhello<|end|>\n<|assistant|>\nhi! how can I help?<|end|>"
