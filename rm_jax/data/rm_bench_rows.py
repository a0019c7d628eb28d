"""RM-Bench rows (THU-KEG/RM-Bench, ``data/total_dataset.json``) from a local file or the hub.

A row is one prompt with three chosen and three rejected responses in the same three styles, in the
order the benchmark fixes: concise, detailed plain, detailed markdown. ``domain`` is one of ``chat``,
``code``, ``math``, ``safety-refuse``, ``safety-response``; RM-Bench's ``split_dataset_by_domain``
(``scripts/utils.py``) buckets rows by ``domain.startswith`` into chat / math / code / safety, so the two
safety domains are pooled. Their code drops a row whose domain starts with none of the four without a
word; here such a row is a :class:`DataError` naming file, row and field.

RM-Bench ships as a file in its GitHub repository, not as a hub dataset: download
``data/total_dataset.json`` from THU-KEG/RM-Bench and pass its path. Rows are read by the shared record
readers (:mod:`rm_jax.data.sources`: json, jsonl, parquet, csv, a folder, a hub id).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from rm_jax.data.pipeline import ASSETS, BUNDLED
from rm_jax.data.sources import _BadRow, _mapping, _row_id, _show, _string, load_unique

DOMAINS = ("chat", "math", "code", "safety")  # RM-Bench's split_dataset_by_domain order
STYLES = ("concise", "detailed_plain", "detailed_markdown")


@dataclass(frozen=True)
class RMBenchRow:
    id: str
    domain: str  # as written in the file, e.g. "safety-refuse"
    prompt: str
    chosen: tuple[str, ...]  # one per style, STYLES order
    rejected: tuple[str, ...]

    @property
    def bucket(self) -> str:
        """The scored domain: the first of :data:`DOMAINS` that ``domain`` starts with."""
        return domain_bucket(self.domain)


def domain_bucket(domain: str) -> str:
    for d in DOMAINS:
        if domain.startswith(d):
            return d
    raise ValueError(f"domain {domain!r} starts with none of {', '.join(DOMAINS)}")


def bundled_rm_bench_path() -> str:
    return os.path.join(ASSETS, "sample", "rm_bench.jsonl")


def load_rm_bench(source: str, split: Optional[str] = None) -> list[RMBenchRow]:
    """Every row of ``source`` (a file, folder, hub id or ``bundled``), validated."""
    source = bundled_rm_bench_path() if str(source) == BUNDLED else str(source)
    return load_unique(source, split or "train", _row, lambda r: r.id, "id", "RM-Bench rows")


def _row(record: Any) -> RMBenchRow:
    rec = _mapping(record)
    row_id = _row_id(rec, "id")
    domain = _string(rec, "domain", allow_empty=False)
    try:
        domain_bucket(domain)
    except ValueError as e:
        raise _BadRow("domain", str(e)) from None
    return RMBenchRow(
        row_id, domain, _string(rec, "prompt", allow_empty=True), _styles(rec, "chosen"), _styles(rec, "rejected")
    )


def _styles(rec: Any, name: str) -> tuple[str, ...]:
    if name not in rec:
        raise _BadRow(name, f"missing field (row has: {', '.join(map(str, rec))})")
    value = rec[name]
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy arrays from parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) != len(STYLES):
        raise _BadRow(name, f"expected a list of {len(STYLES)} responses ({', '.join(STYLES)}), got {_show(value)}")
    for j, text in enumerate(value):
        if not isinstance(text, str):
            raise _BadRow(f"{name}[{j}]", f"expected a string, got {_show(text)}")
    return tuple(value)


def flatten(rows: Sequence[RMBenchRow]) -> list[dict]:
    """One ``{"prompt", "response"}`` row per response: per row its three chosen, then its three rejected."""
    return [{"prompt": r.prompt, "response": t} for r in rows for t in (*r.chosen, *r.rejected)]
