"""Loading RewardBench 2 sets: its own columns from jsonl / parquet / bundled, bad rows named by file, line, field."""

import json

import pytest

from rm_jax.core.errors import DataError, InputError
from rm_jax.data.rewardbench2_sets import RB2Set, encode_run_v2, flatten, load_rewardbench2


def _row(**over):
    r = {
        "id": "7",
        "prompt": "p",
        "chosen": ["good"],
        "rejected": ["bad", "worse", "worst"],
        "num_correct": 1,
        "num_incorrect": 3,
        "total_completions": 4,
        "subset": "Math",
        "models": ["m"] * 4,
    }
    r.update(over)
    return r


def _write(tmp_path, rows, name="rb2.jsonl"):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(p)


def test_loads_sets_in_run_v2_order(tmp_path):
    ties = [
        _row(id="ref:3", subset="Ties"),
        _row(id="tied:3", subset="Ties", chosen=["a", "b"], num_correct=2, total_completions=5),
    ]
    sets = load_rewardbench2(_write(tmp_path, [_row()] + ties))
    assert [s.id for s in sets] == ["7", "ref:3", "tied:3"]
    assert sets[0].completions == ("good", "bad", "worse", "worst") and sets[0].num_correct == 1
    assert [s.is_ties for s in sets] == [False, True, True]
    assert [r["response"] for r in flatten(sets)][:5] == ["good", "bad", "worse", "worst", "good"]


def test_parquet_same_as_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_row(), _row(id="8", chosen=["x"], subset="Focus")]
    p = tmp_path / "rb2.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p)
    assert load_rewardbench2(str(p)) == load_rewardbench2(_write(tmp_path, rows))


@pytest.mark.parametrize(
    "over, line, field, words",
    [
        (dict(chosen="good"), 2, "chosen", "list of strings"),
        (dict(rejected=["bad", 3, "x"]), 2, "rejected[1]", "string"),
        (dict(rejected=["bad", " ", "x"]), 2, "rejected[1]", "empty"),
        (dict(num_correct=2), 2, "num_correct", "'chosen' holds 1"),
        (dict(num_incorrect=2), 2, "num_incorrect", "holds 3"),
        (dict(total_completions=5), 2, "total_completions", "hold 4"),
        (dict(subset="Ties"), 2, "id", "'ref:K' or 'tied:K'"),
        (dict(subset="Ties", id="tied:4"), 2, "chosen", "'tied:4' needs two or more correct answers, got 1"),
        (dict(rejected=[], num_incorrect=0, total_completions=1), 2, "rejected", "non-empty list"),
        (dict(id="7"), 2, "id", "duplicate id '7'"),
        (dict(id=None), 2, "id", "string or an integer"),
        (dict(num_correct="1"), 2, "num_correct", "non-negative integer"),
    ],
)
def test_bad_rows_named(tmp_path, over, line, field, words):
    path = _write(tmp_path, [_row(), _row(**{"id": "8", **over})])
    with pytest.raises(DataError) as e:
        load_rewardbench2(path)
    assert (e.value.file, e.value.row, e.value.field) == (path, line, field)
    assert words in e.value.reason


def test_missing_column_named(tmp_path):
    r = _row()
    del r["num_incorrect"]
    with pytest.raises(DataError, match=r"row 1, field 'num_incorrect': missing field"):
        load_rewardbench2(_write(tmp_path, [r]))


def test_bundled_sample():
    sets = load_rewardbench2("bundled")
    subsets = {s.subset for s in sets}
    assert {"Math", "Factuality", "Focus", "Ties"} <= subsets
    refs = {s.id.split(":")[1] for s in sets if s.id.startswith("ref:")}
    tied = {s.id.split(":")[1] for s in sets if s.id.startswith("tied:")}
    assert refs and refs == tied
    # exact repeats of the chosen completion among the rejected ones exist (run_v2's shared-maximum rule)
    assert any(s.completions[0] in s.completions[1:] for s in sets if not s.is_ties)


def test_hub_id_goes_through_datasets(monkeypatch):
    import datasets

    seen = {}

    def fake_load(source, split=None, **kw):
        seen.update(source=source, split=split)
        return [_row()]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    sets = load_rewardbench2("allenai/reward-bench-2")
    assert seen == {"source": "allenai/reward-bench-2", "split": "test"} and sets[0].id == "7"


# ----------------------------------------------------------------------------- reward-bench run_v2's tokenisation


@pytest.fixture(scope="module")
def tok():
    from tests.helpers import bundled_tokenizer

    return bundled_tokenizer()


def _long_sets():
    prompt = "start here " + " ".join(["word"] * 2500)  # well over 2048 tokens with the template
    return [RB2Set("1", "Math", prompt, ("right answer", "wrong answer"), 1), RB2Set("2", "Math", "hi", ("a", "b"), 1)]


def _texts(tokenizer, sets):
    # run_v2's text: the tokenizer's chat template over one user and one assistant turn, as a string
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": s.prompt}, {"role": "assistant", "content": c}], tokenize=False
        )
        for s in sets
        for c in s.completions
    ]


def test_run_v2_tokens_are_the_tokenizers_truncation(tok):
    sets = _long_sets()
    enc = encode_run_v2(sets, tok)  # run_v2's default max_length, 2048
    want = [tok(t, truncation=True, max_length=2048)["input_ids"] for t in _texts(tok, sets)]
    assert [list(x) for x in enc.ids] == want
    assert [len(x) for x in enc.ids[:2]] == [2048, 2048] and len(enc.ids[2]) < 50
    assert enc.cut == 2 and enc.double_bos_masked == 0 and enc.truncation_side == "right"
    # cut on the right: the conversation's start survives, the response (its end) is lost
    start = tok(_texts(tok, sets)[0], add_special_tokens=False)["input_ids"][:20]
    assert list(enc.ids[0][:20]) == start and list(enc.ids[0]) == list(enc.ids[1])
    assert enc.counts() == dict(
        length_policy="run_v2", seq_len=2048, truncation_side="right", cut=2, double_bos_masked=0
    )


def test_run_v2_left_truncation_side_keeps_the_end(tok):
    import copy

    left = copy.deepcopy(tok)
    left.truncation_side = "left"
    sets = _long_sets()
    enc = encode_run_v2(sets, left, max_length=64)
    full = [tok(t)["input_ids"] for t in _texts(tok, sets)]
    assert [list(x) for x in enc.ids] == [f[-64:] if len(f) > 64 else f for f in full]
    assert enc.cut == 2 and enc.truncation_side == "left" and list(enc.ids[0]) != list(enc.ids[1])


def test_run_v2_masks_a_doubled_bos(tok):
    import copy

    t = copy.deepcopy(tok)
    t.add_bos_token = True  # the tokenizer adds BOS ...
    t.chat_template = "{{ bos_token }}" + tok.chat_template  # ... and the template writes one too
    sets = [RB2Set("1", "Math", "hi", ("a", "b"), 1)]
    enc = encode_run_v2(sets, t)
    raw = [t(x, truncation=True, max_length=2048)["input_ids"] for x in _texts(t, sets)]
    assert raw[0][:2] == [t.bos_token_id] * 2  # what run_v2's pipeline sees, then masks the first of
    assert [list(x) for x in enc.ids] == [r[1:] for r in raw] and enc.double_bos_masked == 2


def test_run_v2_needs_a_chat_template(tok):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = None
    with pytest.raises(InputError, match="no chat template"):
        encode_run_v2(_long_sets(), t)
    assert len(encode_run_v2(_long_sets(), t, template="nemotron").ids) == 4  # a template the model carries
