"""JudgeBench pairs: categories by source prefix as run_judge.py reports them; bad rows named."""

import json

import pytest

from rm_jax.core.errors import DataError
from rm_jax.data.judgebench_pairs import load_judgebench


def _pair(i, **over):
    row = {"pair_id": i, "original_id": "x", "source": "livebench-math", "question": "q", "response_model": "m"}
    return {**row, "response_A": "a", "response_B": "b", "label": "A>B", **over}


def test_categories_by_source_prefix(tmp_path):
    p = tmp_path / "jb.jsonl"
    sources = ["mmlu-pro-law", "livebench-reasoning", "livebench-math", "livecodebench-x", "other"]
    p.write_text("".join(json.dumps(_pair(i, source=s)) + "\n" for i, s in enumerate(sources)))
    assert [x.category for x in load_judgebench(str(p))] == ["knowledge", "reasoning", "math", "coding", None]


@pytest.mark.parametrize("bad, field", [(_pair(0), "pair_id"), (_pair(1, label="A=B"), "label")])
def test_bad_rows_are_named(tmp_path, bad, field):
    p = tmp_path / "jb.jsonl"
    p.write_text(json.dumps(_pair(0)) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as e:
        load_judgebench(str(p))
    assert (e.value.row, e.value.field) == (2, field)
