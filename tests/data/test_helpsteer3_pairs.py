"""HelpSteer3-Preference rows -> pairs: the sign convention (negative = response 1 better), ties left out
and counted, filters, and bad rows named by file, row and field."""

import json

import pytest

from rm_jax.core.errors import DataError
from rm_jax.data.helpsteer3_pairs import load_helpsteer3


def _row(pref, domain="general", language="english", context=None):
    return {
        "domain": domain,
        "language": language,
        "context": context or [{"role": "user", "content": "hi"}],
        "response1": "one",
        "response2": "two",
        "overall_preference": pref,
        "individual_preference": [],
    }


def _write(tmp_path, rows):
    p = tmp_path / "hs3.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_sign_convention_strength_and_ties(tmp_path):
    multi = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    rows = [_row(p) for p in (-3, -2, -1, 0, 1, 2, 3)] + [_row(-1, context=multi)]
    out = load_helpsteer3(_write(tmp_path, rows))
    assert out.ties_left_out == 1 and len(out.rows) == 7
    got = [(r["chosen"], r["rejected"], r["strength"]) for r in out.rows]
    assert got[:6] == [
        ("one", "two", 3.0),
        ("one", "two", 2.0),
        ("one", "two", 1.0),
        ("two", "one", 1.0),
        ("two", "one", 2.0),
        ("two", "one", 3.0),
    ]
    assert out.rows[-1]["prompt"] == multi and out.rows[-1]["context_id"] == 1
    assert {r["context_id"] for r in out.rows[:6]} == {0}
    assert [r["_row"] for r in out.rows] == [0, 1, 2, 4, 5, 6, 7]


def test_domain_and_language_filters_are_counted(tmp_path):
    rows = [_row(1, "code"), _row(1, "stem"), _row(-1, "multilingual", "french"), _row(0, "code")]
    out = load_helpsteer3(_write(tmp_path, rows), domains=["code", "multilingual"], languages=["english"])
    assert [r["domain"] for r in out.rows] == ["code"]
    assert out.filtered_out == 2 and out.ties_left_out == 1


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"overall_preference": 4}, "overall_preference"),
        ({"overall_preference": "1"}, "overall_preference"),
        ({"context": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, "context[1]"),
        ({"context": [{"role": "robot", "content": "x"}]}, "context[0]"),
        ({"response2": ""}, "response2"),
    ],
)
def test_bad_rows_are_named(tmp_path, bad, field):
    path = _write(tmp_path, [_row(1), {**_row(1), **bad}])
    with pytest.raises(DataError) as e:
        load_helpsteer3(path)
    assert e.value.row == 2 and e.value.field == field and e.value.file == path
