"""rm_jax.data.sources: schema checks with precise errors, formats, pairs, pair grouping."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from rm_jax.data import sources
from rm_jax.data.sources import DataError, load_helpsteer, load_pairs, pair_ids

ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
MULTI_TURN = "What is 2 + 2?\n<extra_id_1>Assistant\n4.\n<extra_id_1>User\nAnd 3 + 3?"


def hs_row(prompt="Q?", response="A.", labels=(3, 3, 4, 1, 2)) -> dict:
    return {"prompt": prompt, "response": response, **dict(zip(ATTRS, labels))}


def write_lines(path, lines: list) -> str:
    """Write jsonl: dicts are dumped, str/bytes written verbatim (for broken lines)."""
    out = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out += (line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n"
    path.write_bytes(out)
    return str(path)


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Tests never reach the hub; a test that means to fake it patches again. Without `datasets` (the
    GPU image has none) there is no hub to reach: the local-file tests run, the hub tests skip."""
    try:
        import datasets
    except ImportError:
        return

    def refuse(*a, **k):
        raise AssertionError("the hub was called")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


# ----------------------------------------------------------------------------- bad rows

BAD_ROWS = [
    ({k: v for k, v in hs_row().items() if k != "correctness"}, "correctness", "missing field"),
    ({k: v for k, v in hs_row().items() if k != "response"}, "response", "missing field"),
    ({**hs_row(), "helpfulness": "abc"}, "helpfulness", "expected an integer 0..4 or -100 (missing), got 'abc'"),
    ({**hs_row(), "coherence": 2.5}, "coherence", "got 2.5"),
    ({**hs_row(), "verbosity": 5}, "verbosity", "got 5"),
    ({**hs_row(), "complexity": -1}, "complexity", "got -1"),
    ({**hs_row(), "helpfulness": True}, "helpfulness", "got True"),
    ({**hs_row(), "response": ""}, "response", "empty"),
    ({**hs_row(), "response": "  \n "}, "response", "empty"),
    ({**hs_row(), "prompt": 123}, "prompt", "expected a string"),
    ({**hs_row(), "response": ["a"]}, "response", "expected a string"),
]


@pytest.mark.parametrize("bad,field,reason", BAD_ROWS)
def test_bad_row_names_file_row_and_field(tmp_path, bad, field, reason):
    # Line 2 is blank: jsonl rows are reported by line number.
    path = write_lines(tmp_path / "train.jsonl", [hs_row(), "", hs_row(), bad, hs_row()])
    with pytest.raises(DataError) as info:
        load_helpsteer(path)
    msg = str(info.value)
    assert path in msg and "row 4" in msg and f"field '{field}'" in msg and reason in msg
    assert (info.value.file, info.value.row, info.value.field) == (path, 4, field)


def test_message_format_matches_the_documented_example(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [hs_row()] * 16 + [{**hs_row(), "helpfulness": "abc"}])
    with pytest.raises(
        DataError,
        match=r"train\.jsonl: row 17, field 'helpfulness': expected an integer "
        r"0\.\.4 or -100 \(missing\), got 'abc'$",
    ):
        load_helpsteer(path)


@pytest.mark.parametrize(
    "line,reason",
    [
        (b'{"prompt": "Q?", "response": ', "invalid JSON"),
        (b'{"prompt": "\xff\xfe", "response": "A."}', "invalid UTF-8"),
        (b"[1, 2, 3]", "expected an object"),
    ],
)
def test_undecodable_line_names_file_and_line(tmp_path, line, reason):
    path = write_lines(tmp_path / "x.jsonl", [hs_row(), hs_row(), line])
    with pytest.raises(DataError) as info:
        load_helpsteer(path)
    assert path in str(info.value) and "row 3" in str(info.value) and reason in str(info.value)


def test_missing_labels_load_as_none(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [{**hs_row(), "helpfulness": -100, "verbosity": None}])
    row = load_helpsteer(path).rows[0]
    assert row["helpfulness"] is None and row["verbosity"] is None and row["correctness"] == 3
    assert row["_row"] == 0


def test_skip_mode_records_each_bad_row(tmp_path):
    path = write_lines(
        tmp_path / "x.jsonl",
        [
            hs_row("a"),
            {**hs_row("b"), "verbosity": 9},
            hs_row("c"),
            b"not json",
            {**hs_row("e"), "response": ""},
        ],
    )
    res = load_helpsteer(path, on_bad_row="skip")
    assert [r["prompt"] for r in res.rows] == ["a", "c"]
    assert [r["_row"] for r in res.rows] == [0, 2]  # original positions survive skipping
    assert [(f, row, field) for f, row, field, _ in res.skipped] == [
        (path, 2, "verbosity"),
        (path, 4, ""),
        (path, 5, "response"),
    ]
    assert res.source == path


def test_on_bad_row_must_be_error_or_skip(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [hs_row()])
    with pytest.raises(ValueError, match="on_bad_row") as info:
        load_helpsteer(path, on_bad_row="warn")
    assert not isinstance(info.value, DataError)


def test_corrupt_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps(hs_row(f"p{i}")).encode() + b"\n" for i in range(200)))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="x.jsonl.gz"):
        load_helpsteer(str(path))


# ----------------------------------------------------------------------------- formats

ROWS = [
    hs_row('Plain, with "quotes", commas', "A.\nSecond line", (4, 4, 4, 1, 2)),
    hs_row('Plain, with "quotes", commas', "Other.", (1, 0, 3, 2, 1)),
    hs_row(MULTI_TURN, "6.", (3, -100, 4, 0, 0)),
    hs_row(MULTI_TURN, "Seven?", (0, 1, 2, 3, 4)),
    hs_row("42", "x", (2, 2, 2, 2, 2)),  # a numeric-looking prompt must stay a string
]


def expected_rows():
    out = []
    for i, r in enumerate(ROWS):
        out.append({**r, **{a: (None if r[a] == -100 else r[a]) for a in ATTRS}, "_row": i})
    return out


def test_formats_round_trip_to_the_same_rows(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    frame = pd.DataFrame(ROWS)
    # As pandas leaves a label column with a null: float, 3.0 and NaN (CSV cells "3.0" and "").
    frame["correctness"] = frame["correctness"].where(frame["correctness"] != -100).astype("float64")
    frame.to_parquet(tmp_path / "a.parquet")
    frame.to_csv(tmp_path / "a.csv", index=False)
    for name in ("a.jsonl", "a.jsonl.gz", "a.json", "a.parquet", "a.csv"):
        assert load_helpsteer(str(tmp_path / name)).rows == expected_rows(), name


def test_directory_picks_the_split(tmp_path):
    write_lines(tmp_path / "train.jsonl", [hs_row("t1"), hs_row("t2")])
    pd.DataFrame([hs_row("v1")]).to_parquet(tmp_path / "validation.parquet")
    assert [r["prompt"] for r in load_helpsteer(str(tmp_path)).rows] == ["t1", "t2"]
    assert [r["prompt"] for r in load_helpsteer(str(tmp_path), split="validation").rows] == ["v1"]
    with pytest.raises(DataError, match="split 'test'") as info:
        load_helpsteer(str(tmp_path), split="test")
    assert str(tmp_path) in str(info.value)


def test_directory_with_hub_style_shards(tmp_path):
    (tmp_path / "data").mkdir()
    pd.DataFrame([hs_row("s1")]).to_parquet(tmp_path / "data" / "train-00000-of-00002.parquet")
    pd.DataFrame([hs_row("s2")]).to_parquet(tmp_path / "data" / "train-00001-of-00002.parquet")
    rows = load_helpsteer(str(tmp_path)).rows
    assert [(r["prompt"], r["_row"]) for r in rows] == [("s1", 0), ("s2", 1)]


def test_bad_label_in_parquet_and_csv(tmp_path):
    pd.DataFrame([hs_row(), {**hs_row(), "complexity": 7}]).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet: row 2, field 'complexity'.*got 7"):
        load_helpsteer(str(tmp_path / "b.parquet"))
    pd.DataFrame([hs_row(), hs_row(), {**hs_row(), "helpfulness": "abc"}]).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError, match=r"b\.csv: row 3, field 'helpfulness'.*got 'abc'"):
        load_helpsteer(str(tmp_path / "b.csv"))


def test_missing_local_path_does_not_go_to_the_hub(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_helpsteer(str(tmp_path / "nope" / "train.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        load_helpsteer("data/typo.jsonl.gz")


def test_hub_rows_go_through_the_same_validation(monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the hub path needs `datasets` (not on the GPU image)")

    calls = []

    def fake_load(source, split=None):
        calls.append((source, split))
        return [hs_row("h1"), {**hs_row("h2"), "correctness": 11}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    with pytest.raises(DataError, match=r"org/set\[train\]: row 2, field 'correctness'"):
        load_helpsteer("org/set")
    assert calls == [("org/set", "train")]
    res = load_helpsteer("org/set", split="validation", on_bad_row="skip")
    assert calls[-1] == ("org/set", "validation") and len(res.rows) == 1 and len(res.skipped) == 1


def test_hub_file_with_split_column_for_helpsteer2_preference(monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the hub path needs `datasets` (not on the GPU image)")

    calls = []
    rows = [
        {"split": "train", "prompt": "Q", "response_1": "a", "response_2": "b", "preference_strength": 2},
        {"split": "validation", "prompt": "Q2", "response_1": "c", "response_2": "d", "preference_strength": -1},
        {"split": "train", "prompt": "Q3", "response_1": "e", "response_2": "f", "preference_strength": -3},
    ]

    def fake_load(source, data_files=None, split=None):
        calls.append((source, data_files, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    res = load_pairs("nvidia/HelpSteer2:preference/preference.jsonl.gz", split="train")
    assert calls == [("nvidia/HelpSteer2", "preference/preference.jsonl.gz", "train")]
    assert [(r["chosen"], r["rejected"], r["strength"]) for r in res.rows] == [("b", "a", 2), ("e", "f", 3)]
    val = load_pairs("nvidia/HelpSteer2:preference/preference.jsonl.gz", split="validation")
    assert [(r["chosen"], r["strength"]) for r in val.rows] == [("c", 1)]


def test_hub_failure_is_a_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the hub path needs `datasets` (not on the GPU image)")

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"org/set: .*hub.*offline"):
        load_helpsteer("org/set")


# ----------------------------------------------------------------------------- pairs


def pair(prompt="Q?", chosen="good", rejected="bad", **extra) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def test_rewardbench_pairs(tmp_path):
    path = write_lines(
        tmp_path / "rb.jsonl",
        [pair(subset="alpacaeval-easy", id=1), pair(MULTI_TURN, "6", "5", subset="mt-bench-med", id=2), pair()],
    )
    rows = load_pairs(path).rows
    assert rows[0] == {
        "prompt": "Q?",
        "chosen": "good",
        "rejected": "bad",
        "subset": "alpacaeval-easy",
        "id": 1,
        "strength": None,
        "_row": 0,
    }
    assert rows[1]["prompt"] == MULTI_TURN  # HelpSteer2 multi-turn prompt kept verbatim
    assert rows[2]["subset"] is None and rows[2]["id"] is None


def test_helpsteer2_preference_conversion(tmp_path):
    def pref(s):
        return {"prompt": "Q?", "response_1": "one", "response_2": "two", "preference_strength": s}

    path = write_lines(tmp_path / "pref.jsonl", [pref(-3), pref(2), pref(0), pref(-1)])
    got = [(r["chosen"], r["rejected"], r["strength"]) for r in load_pairs(path).rows]
    assert got == [("one", "two", 3), ("two", "one", 2), ("one", "two", 0), ("one", "two", 1)]


@pytest.mark.parametrize(
    "bad,field,reason",
    [
        (pair(chosen=""), "chosen", "empty"),
        (pair(rejected=" "), "rejected", "empty"),
        ({"prompt": "Q?", "chosen": "good"}, "rejected", "missing field"),
        (pair(id=1), "id", "duplicate id 1 (first seen at"),
        (pair(subset=3), "subset", "expected a string"),
        (
            {"prompt": "Q", "response_1": "a", "response_2": "b", "preference_strength": 4},
            "preference_strength",
            "expected an integer -3..3, got 4",
        ),
        ({"prompt": "Q", "response_1": "a", "response_2": "", "preference_strength": 1}, "response_2", "empty"),
    ],
)
def test_bad_pairs(tmp_path, bad, field, reason):
    path = write_lines(tmp_path / "pairs.jsonl", [pair(id=1), pair(id=2), bad])
    with pytest.raises(DataError) as info:
        load_pairs(path)
    msg = str(info.value)
    assert path in msg and "row 3" in msg and f"field '{field}'" in msg and reason in msg


def test_duplicate_id_skip_keeps_the_first(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [pair("a", id="x"), pair("b", id="x"), pair("c", id="y")])
    res = load_pairs(path, on_bad_row="skip")
    assert [r["prompt"] for r in res.rows] == ["a", "c"]
    assert res.skipped[0][:3] == (path, 2, "id") and f"{path} row 1" in res.skipped[0][3]


def test_rewardbench_hub_defaults_to_filtered(monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the hub path needs `datasets` (not on the GPU image)")

    calls = []
    monkeypatch.setattr(
        datasets, "load_dataset", lambda source, split=None: calls.append(split) or [pair(subset="hep-go", id=0)]
    )
    assert load_pairs("allenai/reward-bench").rows[0]["subset"] == "hep-go"
    assert calls == ["filtered"]


# ----------------------------------------------------------------------------- pair_ids


def test_pair_ids_group_runs_of_equal_prompts():
    rows = [{"prompt": p} for p in ["a", "a", "b", "b", "a", "a", "c"]]
    assert pair_ids(rows) == [0, 0, 1, 1, 2, 2, 3]
    assert pair_ids([]) == []


def test_pair_ids_on_loaded_rows(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [hs_row("p"), hs_row("p"), hs_row(MULTI_TURN), hs_row(MULTI_TURN)])
    assert pair_ids(load_helpsteer(path).rows) == [0, 0, 1, 1]


def test_looks_local():
    assert sources._looks_local("./x") and sources._looks_local("x.parquet")
    assert not sources._looks_local("nvidia/HelpSteer2")
