"""RM-Bench rows: three styles a side, domains bucketed as RM-Bench's split_dataset_by_domain does, and bad rows
named by file, row and field (RM-Bench's code drops an unknown domain silently; here it stops)."""

import json

import pytest

from rm_jax.core.errors import DataError
from rm_jax.data.rm_bench_rows import load_rm_bench


def _row(i, domain="chat", **over):
    return {"id": i, "prompt": "p", "chosen": ["a", "b", "c"], "rejected": ["d", "e", "f"], "domain": domain, **over}


def _write(tmp_path, rows):
    p = tmp_path / "rmb.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def test_bundled_sample_and_buckets():
    rows = load_rm_bench("bundled")
    assert {r.bucket for r in rows} == {"chat", "code", "math", "safety"}
    assert {r.domain for r in rows if r.bucket == "safety"} == {"safety-refuse", "safety-response"}


@pytest.mark.parametrize(
    "bad, field",
    [
        (_row(0), "id"),  # a repeat of row 1's id
        (_row(1, domain="poetry"), "domain"),
        (_row(1, chosen=["a", "b"]), "chosen"),
        (_row(1, rejected=["d", 5, "f"]), "rejected[1]"),
    ],
)
def test_bad_rows_are_named(tmp_path, bad, field):
    path = _write(tmp_path, [_row(0), bad])
    with pytest.raises(DataError) as e:
        load_rm_bench(path)
    assert (e.value.file, e.value.row, e.value.field) == (path, 2, field)
