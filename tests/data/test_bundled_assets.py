"""The bundled tokenizer and sample data (written by scripts/make_tokenizer.py and make_sample_data.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import rm_jax
from rm_jax.data.conversation import count_turns, encode, render, row_to_messages
from rm_jax.data.sources import load_helpsteer, pair_ids

ASSETS = Path(rm_jax.__file__).parent / "assets"
TOKENIZER = ASSETS / "tokenizer"
SAMPLE = ASSETS / "sample"
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<extra_id_0>", "<extra_id_1>"]


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True)


@pytest.fixture(scope="module")
def sample():
    return {split: load_helpsteer(str(SAMPLE), split=split) for split in ("train", "validation")}


def test_tokenizer_files_present():
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (TOKENIZER / name).is_file(), name


def test_special_tokens_are_single_ids(tok):
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in SPECIALS]
    assert all(len(x) == 1 for x in ids)
    assert len({x[0] for x in ids}) == len(SPECIALS)
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<s>", "</s>", "<unk>")
    assert 900 <= len(tok) <= 1100


def test_decode_keeps_newlines_and_spaces(tok):
    text = "line one\n\n  indented line\ttab\n<extra_id_1>User\nend\n"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template_matches_encoding_the_rendered_text(tok, sample):
    row = next(r for r in sample["train"].rows if count_turns(r["prompt"]) >= 3)
    msgs = row_to_messages(row)
    out = tok.apply_chat_template(msgs, tokenize=True)
    ids = out if isinstance(out, list) else out["input_ids"]
    text = render(tok, [msgs])[0]
    assert text.startswith("<extra_id_0>System\n\n<extra_id_1>User\n") and text.endswith(row["response"] + "\n")
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ids == encode(tok, [msgs])[0].tolist()


def test_sample_loads_cleanly_with_pair_structure(sample):
    for split, n in (("train", 3000), ("validation", 400)):
        res = sample[split]
        assert res.skipped == [] and len(res.rows) == n
        ids = pair_ids(res.rows)
        assert ids == [i // 2 for i in range(n)]  # two responses per prompt, consecutive rows
        assert len({r["prompt"] for r in res.rows}) == n // 2
        multi = sum(count_turns(r["prompt"]) > 1 for r in res.rows) / n
        assert 0.2 <= multi <= 0.35
        assert all(r[a] is not None for r in res.rows for a in ("helpfulness", "verbosity"))
        assert set(Counter(r["helpfulness"] for r in res.rows)) == {0, 1, 2, 3, 4}


def test_sample_is_small():
    assert sum(p.stat().st_size for p in SAMPLE.glob("*.jsonl.gz")) < 1_000_000


def test_sample_conversations_are_short(tok, sample):
    lengths = [len(x) for x in encode(tok, [row_to_messages(r) for r in sample["validation"].rows])]
    assert sum(lengths) / len(lengths) < 100 and sorted(lengths)[int(0.95 * len(lengths))] <= 128
