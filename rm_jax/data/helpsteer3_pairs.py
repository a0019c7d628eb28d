"""HelpSteer3-Preference rows (``nvidia/HelpSteer3``, config ``preference``; arXiv 2505.11475) as preference
pairs.

Columns: ``domain`` (general, stem, code, multilingual), ``language``, ``context`` (a list of ``{role,
content}`` turns ending with the user's), ``response1``, ``response2``, ``overall_preference`` (-3..3:
negative = response 1 better, 0 = about the same) and ``individual_preference`` (not used). As NeMo-RL's
converter (``nemo_rl/data/hf_datasets/helpsteer3.py``) does, response 1 is chosen when the preference is
negative and response 2 when it is positive; ``strength = |overall_preference|`` (scaled / margin BT).
Ties (0) have no chosen response: they are left out and counted, never silently.

Each pair comes out as a ``data.kind: pairs`` row whose ``prompt`` is the context's list of messages, so
the model's chat template renders every turn; ``context_id`` numbers the distinct contexts (folds by
context in ``weights fit``).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence

from rm_jax.core.errors import DataError
from rm_jax.data.pipeline import ASSETS, BUNDLED
from rm_jax.data.sources import STRENGTH_RANGE, _BadRow, _mapping, _records, _show, _string

HUB_ID = "nvidia/HelpSteer3"
HUB_CONFIG = "preference"
ROLES = ("system", "user", "assistant")


def bundled_helpsteer3_path() -> str:
    """The HelpSteer3-format sample (``train`` / ``validation`` files) made from the bundled HelpSteer2 splits."""
    return os.path.join(ASSETS, "sample", "helpsteer3")


@dataclass
class HelpSteer3Pairs:
    """Pairs (``prompt`` = the context's messages, ``chosen``, ``rejected``, ``strength``, ``domain``,
    ``language``, ``context_id``, ``_row``) and what was left out."""

    rows: list[dict]
    skipped: list[tuple[str, int, str, str]] = field(default_factory=list)  # on_bad_row=skip: (file, row, field, why)
    ties_left_out: int = 0
    filtered_out: int = 0
    by_domain: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def report(self) -> dict:
        return {
            "pairs": len(self.rows),
            "rows_skipped": len(self.skipped),
            "ties_left_out": self.ties_left_out,
            "filtered_out": self.filtered_out,
            "domains": dict(sorted(self.by_domain.items())),
        }


def load_helpsteer3(
    source: str,
    split: Optional[str] = None,
    domains: Optional[Sequence[str]] = None,
    languages: Optional[Sequence[str]] = None,
    on_bad_row: str = "error",
) -> HelpSteer3Pairs:
    """Every pair of ``source`` (a file, folder, or the hub id), validated; ``domains`` / ``languages``
    keep only rows in them (counted as ``filtered_out`` otherwise). A bad row stops the load naming file,
    row and field, or with ``on_bad_row="skip"`` is counted in ``skipped``. Hub split default ``train``."""
    source = bundled_helpsteer3_path() if str(source) == BUNDLED else str(source)
    out = HelpSteer3Pairs(rows=[], source=source)
    contexts: dict[str, int] = {}
    for row in iter_helpsteer3(source, split, out.skipped if on_bad_row == "skip" else None):
        if (domains and row["domain"] not in domains) or (languages and row["language"] not in languages):
            out.filtered_out += 1
            continue
        if row["preference"] == 0:
            out.ties_left_out += 1
            continue
        row["context_id"] = contexts.setdefault(repr(row["prompt"]), len(contexts))
        out.by_domain[row["domain"]] = out.by_domain.get(row["domain"], 0) + 1
        out.rows.append(row)
    if not out.rows:
        raise DataError(
            source, None, None, f"no HelpSteer3 pairs left ({out.ties_left_out} ties, {out.filtered_out} filtered out)"
        )
    return out


def iter_helpsteer3(source: str, split: Optional[str] = None, skipped: Optional[list] = None) -> Iterator[dict]:
    """Every validated row of ``source``, ties included (``preference`` 0; ``_row`` its 0-based position).
    A bad row raises a :class:`DataError` naming file, row and field, or, given a ``skipped`` list, is
    appended to it as ``(file, row, field, reason)`` and passed over."""
    source = bundled_helpsteer3_path() if str(source) == BUNDLED else str(source)
    for index, (file, rownum, record) in enumerate(_records_of(source, split or "train")):
        try:
            row = _row(record)
        except _BadRow as e:
            if skipped is None:
                raise DataError(file, rownum, e.field, e.reason) from None
            skipped.append((file, rownum, e.field, e.reason))
            continue
        row["_row"] = index
        yield row


def _records_of(source: str, split: str) -> Iterator[tuple[str, int, Any]]:
    if source != HUB_ID:
        yield from _records(source, split)
        return
    try:  # the hub dataset needs its config name, which the shared hub reader does not take
        import datasets

        ds = datasets.load_dataset(HUB_ID, HUB_CONFIG, split=split)
    except Exception as e:  # offline, unknown split: one line naming what was tried
        raise DataError(
            source,
            None,
            None,
            f"loading {HUB_ID} (config {HUB_CONFIG!r}, split {split!r}) from the hub failed: {type(e).__name__}: {e}",
        ) from e
    for rownum, record in enumerate(ds, start=1):
        yield f"{HUB_ID}[{HUB_CONFIG}/{split}]", rownum, record


def _row(record: Any) -> dict:
    rec = _mapping(record)
    context = _messages(rec)
    r1 = _string(rec, "response1", allow_empty=False)
    r2 = _string(rec, "response2", allow_empty=False)
    pref = rec.get("overall_preference")
    if isinstance(pref, float) and pref.is_integer():
        pref = int(pref)
    if (
        isinstance(pref, bool)
        or not isinstance(pref, numbers.Integral)
        or not STRENGTH_RANGE[0] <= pref <= STRENGTH_RANGE[1]
    ):
        raise _BadRow("overall_preference", f"expected an integer in -3..3, got {_show(pref)}")
    chosen, rejected = (r1, r2) if pref < 0 else (r2, r1)
    return {
        "prompt": context,
        "chosen": chosen,
        "rejected": rejected,
        "strength": float(abs(pref)),
        "preference": int(pref),
        "domain": _string(rec, "domain", allow_empty=False),
        "language": _language(rec),
        "subset": None,
        "id": None,
    }


def _language(rec: Mapping[str, Any]) -> str:
    v = rec.get("language")
    if v is None:  # the card's non-multilingual domains may leave it empty
        return "unknown"
    if not isinstance(v, str):
        raise _BadRow("language", f"expected a string, got {_show(v)}")
    return v or "unknown"


def _messages(rec: Mapping[str, Any]) -> list[dict]:
    if "context" not in rec:
        raise _BadRow("context", f"missing field (row has: {', '.join(map(str, rec))})")
    ctx = rec["context"]
    if hasattr(ctx, "tolist") and not isinstance(ctx, str):
        ctx = ctx.tolist()
    if not isinstance(ctx, (list, tuple)) or not ctx:
        raise _BadRow("context", f"expected a non-empty list of {{role, content}} turns, got {_show(ctx)}")
    out = []
    for j, m in enumerate(ctx):
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise _BadRow(f"context[{j}]", f"expected {{role: {'|'.join(ROLES)}, content: string}}, got {_show(m)}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise _BadRow(f"context[{len(out) - 1}]", f"the context must end with the user's turn, got {out[-1]['role']!r}")
    return out
