"""RewardBench 2 sets in their own columns, from a local file or the hub (``allenai/reward-bench-2``).

A set is one prompt with ``chosen`` (correct) and ``rejected`` completions; ``num_correct``,
``num_incorrect`` and ``total_completions`` must agree with those lists, because reward-bench's
``run_v2`` re-groups the flattened scores by ``total_completions`` and marks completion ``i`` correct
when ``i < num_correct``: a disagreement would silently score the wrong completions. Sets of the
``Ties`` subset carry ids ``ref:K`` / ``tied:K`` (prompt K with one, or several, correct answers).
Every set needs at least one chosen and one rejected completion (the Ties formula compares the two).

Rows are read by the same record readers as every other source (:mod:`rm_jax.data.sources`: jsonl,
json, parquet, csv, a folder's ``{split}`` files, a hub id with ``datasets`` imported lazily), so a
bad row is a :class:`DataError` naming file, row (the line for jsonl) and field.
"""

from __future__ import annotations

import numbers
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from rm_jax.core.errors import DataError
from rm_jax.data.pipeline import ASSETS, BUNDLED

# The record readers and field checks are shared with the other loaders on purpose: one error format.
from rm_jax.data.sources import _BadRow, _mapping, _records, _show, _string

HUB_ID = "allenai/reward-bench-2"
HUB_SPLIT = "test"
TIES = "Ties"
_TIES_ID = re.compile(r"^(ref|tied):(\d+)$")


@dataclass(frozen=True)
class RB2Set:
    """One best-of-N set; ``completions`` are the chosen ones first, as run_v2 flattens them."""

    id: str
    subset: str
    prompt: str
    completions: tuple[str, ...]
    num_correct: int

    @property
    def is_ties(self) -> bool:
        return self.subset.lower() == TIES.lower()  # run_v2 compares subset.lower() == "ties"


def bundled_rewardbench2_path() -> str:
    return os.path.join(ASSETS, "sample", "rewardbench2.jsonl")


def resolve_rewardbench2_source(source: str) -> str:
    """``bundled`` -> the RewardBench 2-format sample shipped with the package."""
    return bundled_rewardbench2_path() if source == BUNDLED else source


def load_rewardbench2(source: str, split: Optional[str] = None) -> list[RB2Set]:
    """Every set of ``source`` (a file, folder, hub id or ``bundled``), validated; hub split default ``test``."""
    source = resolve_rewardbench2_source(str(source))
    seen: dict[str, str] = {}
    sets: list[RB2Set] = []
    for file, rownum, record in _records(source, split or HUB_SPLIT):
        try:
            s = _set_row(record)
            if s.id in seen:
                raise _BadRow("id", f"duplicate id {s.id!r} (first seen at {seen[s.id]})")
        except _BadRow as e:
            raise DataError(file, rownum, e.field, e.reason) from None
        seen[s.id] = f"{file} row {rownum}"
        sets.append(s)
    if not sets:
        raise DataError(source, None, None, "no RewardBench 2 sets")
    return sets


def _set_row(record: Any) -> RB2Set:
    rec = _mapping(record)
    raw_id = rec.get("id")
    if raw_id is None or isinstance(raw_id, bool) or not isinstance(raw_id, (str, numbers.Integral)):
        raise _BadRow("id", f"expected a string or an integer, got {_show(raw_id)}")
    set_id = str(raw_id)
    prompt = _string(rec, "prompt", allow_empty=True)
    chosen = _texts(rec, "chosen")
    rejected = _texts(rec, "rejected")
    subset = _string(rec, "subset", allow_empty=False)
    counts = {name: _count(rec, name) for name in ("num_correct", "num_incorrect", "total_completions")}
    if counts["num_correct"] != len(chosen):
        raise _BadRow("num_correct", f"{counts['num_correct']} but 'chosen' holds {len(chosen)} completions")
    if counts["num_incorrect"] != len(rejected):
        raise _BadRow("num_incorrect", f"{counts['num_incorrect']} but 'rejected' holds {len(rejected)} completions")
    if counts["total_completions"] != len(chosen) + len(rejected):
        raise _BadRow(
            "total_completions",
            f"{counts['total_completions']} but chosen + rejected hold {len(chosen) + len(rejected)} completions",
        )
    s = RB2Set(set_id, subset, prompt, tuple(chosen) + tuple(rejected), len(chosen))
    if s.is_ties:
        if not _TIES_ID.match(set_id):
            raise _BadRow("id", f"a {subset} set needs an id 'ref:K' or 'tied:K' (K an integer), got {set_id!r}")
    return s


def _texts(rec: Any, name: str) -> list[str]:
    if name not in rec:
        raise _BadRow(name, f"missing field (row has: {', '.join(map(str, rec))})")
    value = rec[name]
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy arrays from pandas / parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise _BadRow(name, f"expected a non-empty list of strings, got {_show(value)}")
    for j, text in enumerate(value):
        if not isinstance(text, str):
            raise _BadRow(f"{name}[{j}]", f"expected a string, got {_show(text)}")
        if not text.strip():
            raise _BadRow(f"{name}[{j}]", "empty text")
    return list(value)


def _count(rec: Any, name: str) -> int:
    if name not in rec:
        raise _BadRow(name, f"missing field (row has: {', '.join(map(str, rec))})")
    v = rec[name]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
        raise _BadRow(name, f"expected a non-negative integer, got {_show(v)}")
    return int(v)


def ties_key(set_id: str) -> tuple[str, int]:
    """``"tied:12"`` -> ``("tied", 12)``."""
    m = _TIES_ID.match(set_id)
    if not m:
        raise ValueError(f"not a Ties id: {set_id!r}")
    return m.group(1), int(m.group(2))


def flatten(sets: Sequence[RB2Set]) -> list[dict]:
    """One ``{"prompt", "response"}`` row per completion, set by set, chosen first (run_v2's order)."""
    return [{"prompt": s.prompt, "response": c} for s in sets for c in s.completions]
