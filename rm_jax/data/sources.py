"""Loading HelpSteer2 rows and preference pairs from local files or the Hugging Face hub.

Every row goes through one validator whatever its source, so a bad label in a parquet shard,
a hub split or a hand-written jsonl gives the same error: a :class:`DataError` naming the file,
the 1-based row (the line number for jsonl) and the field. ``on_bad_row="skip"`` turns those
errors into entries of ``LoadResult.skipped`` instead; problems with a whole file (missing,
unreadable, unknown type) always raise.

A ``source`` is, in this order:

* a local file: ``.jsonl``, ``.jsonl.gz``, ``.json`` (an array of objects, or JSON lines),
  ``.parquet``, ``.csv``; ``split`` is ignored;
* a local directory holding ``{split}.jsonl[.gz]`` / ``{split}.parquet`` / ``{split}.json`` /
  ``{split}.csv``, or shards ``{split}-*.{ext}`` (also under ``data/``, as hub snapshots lay them out);
* anything else that does not exist locally and does not look like a path: a hub dataset id,
  loaded with ``datasets.load_dataset(source, split=split)``.
"""

from __future__ import annotations

import gzip
import json
import math
import numbers
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, get_args

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.config import OnBadRow
from rm_jax.core.errors import ConversationError, DataError
from rm_jax.data.conversation import parse_attribute_label

MISSING_LABEL = -100  # NeMo-Aligner's marker for "not annotated"; loaded as None
LABEL_RANGE = (0, 4)
STRENGTH_RANGE = (-3, 3)

# A hub id never ends like this, so such a source that does not exist is a typo, not a hub id.
_FILE_SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".parquet", ".csv")
_DEFAULT_HUB_SPLITS = {"allenai/reward-bench": "filtered"}
# CSV cells are all text; these columns are parsed back to numbers before validation.
_INT_FIELDS = frozenset(ATTRIBUTES) | {"preference_strength"}


@dataclass
class LoadResult:
    """Validated rows, what was skipped (``(file, row, field, reason)``), and the source they came from.

    Each row keeps ``_row``: its 0-based position among the source's records, skipped ones included.
    """

    rows: list[dict]
    skipped: list[tuple[str, int, str, str]] = field(default_factory=list)
    source: str = ""


class _BadRow(Exception):
    """Raised by the validators; the loader adds file and row and raises or records it."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


@dataclass
class _Unparsable:
    """A record that could not be decoded: skippable like any bad row."""

    reason: str


# ----------------------------------------------------------------------------- public API


def load_helpsteer(source: str, split: str | None = None, on_bad_row: str = "error") -> LoadResult:
    """HelpSteer2 rows: ``prompt``, ``response`` and the five attributes as int (missing -> None).

    Missing labels may be written as ``-100`` or null. An absent attribute column is an error,
    not a missing label: it usually means the wrong file.
    """
    return _load(source, split, on_bad_row, lambda: _helpsteer_row)


def load_chat(source: str, split: str | None = None, on_bad_row: str = "error") -> LoadResult:
    """Conversations for a causal LM: ``{"prompt", "response"}`` (HelpSteer2 style) or ``{"messages": [...]}``
    ending with the assistant's response, optionally with ``"attributes"`` (a SteerLM label string or
    ``{name: level}`` mapping, checked when the conversation is built). HelpSteer2 attribute columns,
    when present, are validated and kept like :func:`load_helpsteer` keeps them."""
    return _load(source, split, on_bad_row, lambda: _chat_row)


def load_pairs(source: str, split: str | None = None, on_bad_row: str = "error") -> LoadResult:
    """Preference pairs: rows ``prompt``, ``chosen``, ``rejected``, ``subset``, ``id``, ``strength``.

    Accepts RewardBench rows (``prompt``, ``chosen``, ``rejected``[, ``subset``, ``id``];
    ``strength`` is None) and HelpSteer2-Preference rows (``prompt``, ``response_1``,
    ``response_2``, ``preference_strength`` in -3..3, negative meaning response_1 is better;
    ``strength = abs(preference_strength)``). Strength-0 rows (ties) are kept with chosen =
    response_1. Absent ``subset``/``id`` are None; a repeated ``id`` is an error.
    """
    return _load(source, split, on_bad_row, _PairConverter)


def pair_ids(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Group id per row: consecutive rows with the same prompt string share an id (0, 1, ...).

    HelpSteer2 stores the two responses to a prompt as rows 1-2, 3-4, ...; grouping by runs
    (not by a global prompt lookup) keeps that structure even if a prompt recurs later.
    """
    ids: list[int] = []
    current, previous = -1, None
    for i, row in enumerate(rows):
        # Chat rows (load_chat) have no prompt string: their earlier messages are the prompt.
        prompt = row["prompt"] if "prompt" in row else repr(row["messages"][:-1])
        if i == 0 or prompt != previous:
            current += 1
            previous = prompt
        ids.append(current)
    return ids


# ----------------------------------------------------------------------------- the loading loop


def _load(
    source: str, split: str | None, on_bad_row: str, make_converter: Callable[[], Callable[[Any, str], dict]]
) -> LoadResult:
    if on_bad_row not in get_args(OnBadRow):
        raise ValueError(f"on_bad_row must be {' or '.join(map(repr, get_args(OnBadRow)))}, got {on_bad_row!r}")
    convert = make_converter()  # fresh per load: the pair converter remembers ids it has seen
    rows: list[dict] = []
    skipped: list[tuple[str, int, str, str]] = []
    for index, (file, rownum, record) in enumerate(_records(str(source), split)):
        try:
            row = convert(record, f"{file} row {rownum}")
        except _BadRow as e:
            if on_bad_row == "error":
                raise DataError(file, rownum, e.field, e.reason) from None
            skipped.append((file, rownum, e.field, e.reason))
            continue
        row["_row"] = index
        rows.append(row)
    return LoadResult(rows=rows, skipped=skipped, source=str(source))


# ----------------------------------------------------------------------------- row validators


def _helpsteer_row(record: Any, where: str) -> dict:
    rec = _mapping(record)
    out: dict[str, Any] = {
        "prompt": _string(rec, "prompt", allow_empty=True),
        "response": _string(rec, "response", allow_empty=False),
    }
    for name in ATTRIBUTES:
        out[name] = _integer(rec, name, *LABEL_RANGE, allow_missing=True)
    return out


def _chat_row(record: Any, where: str) -> dict:
    rec = _mapping(record)
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise _BadRow("messages", "expected a non-empty list of {role, content} objects")
        for j, m in enumerate(msgs):
            if (
                not isinstance(m, Mapping)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise _BadRow(f"messages[{j}]", "expected an object with string 'role' and 'content'")
        if msgs[-1]["role"] != "assistant" or not msgs[-1]["content"].strip():
            raise _BadRow(f"messages[{len(msgs) - 1}]", "the last message must be the assistant's non-empty response")
        out: dict[str, Any] = {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}
    else:
        out = {
            "prompt": _string(rec, "prompt", allow_empty=True),
            "response": _string(rec, "response", allow_empty=False),
        }
    for name in ATTRIBUTES:
        if name in rec:
            out[name] = _integer(rec, name, *LABEL_RANGE, allow_missing=True)
    label = rec.get("attributes")
    if label is not None and not isinstance(label, (str, Mapping)):
        raise _BadRow("attributes", f"expected a label string or a {{name: level}} object, got {_show(label)}")
    if label is not None:
        try:
            parse_attribute_label(label)
        except ConversationError as e:  # named here by file and row, not later by position
            raise _BadRow("attributes", str(e).split("field 'attributes': ", 1)[-1]) from None
        out["attributes"] = label
    return out


class _PairConverter:
    """Validates one pair row; remembers ids so a duplicate names both rows."""

    def __init__(self) -> None:
        self.seen: dict[Any, str] = {}

    def __call__(self, record: Any, where: str) -> dict:
        rec = _mapping(record)
        prompt = _string(rec, "prompt", allow_empty=True)
        if "chosen" in rec or "rejected" in rec or "response_1" not in rec:
            chosen = _string(rec, "chosen", allow_empty=False)
            rejected = _string(rec, "rejected", allow_empty=False)
            strength = None
        else:  # HelpSteer2-Preference
            r1 = _string(rec, "response_1", allow_empty=False)
            r2 = _string(rec, "response_2", allow_empty=False)
            pref = _integer(rec, "preference_strength", *STRENGTH_RANGE, allow_missing=False)
            chosen, rejected = (r1, r2) if pref <= 0 else (r2, r1)
            strength = abs(pref)
        subset = rec.get("subset")
        if subset is not None and not isinstance(subset, str):
            raise _BadRow("subset", f"expected a string, got {_show(subset)}")
        pid = rec.get("id")
        if pid is not None:
            if isinstance(pid, bool) or not isinstance(pid, (str, numbers.Integral)):
                raise _BadRow("id", f"expected a string or an integer, got {_show(pid)}")
            pid = int(pid) if isinstance(pid, numbers.Integral) else pid
            if pid in self.seen:
                raise _BadRow("id", f"duplicate id {pid!r} (first seen at {self.seen[pid]})")
            self.seen[pid] = where
        return {
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "subset": subset,
            "id": pid,
            "strength": strength,
        }


def _mapping(record: Any) -> Mapping[str, Any]:
    if isinstance(record, _Unparsable):
        raise _BadRow("", record.reason)
    if not isinstance(record, Mapping):
        raise _BadRow("", f"expected an object with named fields, got {type(record).__name__}")
    return record


def _string(rec: Mapping[str, Any], name: str, allow_empty: bool) -> str:
    if name not in rec:
        raise _BadRow(name, f"missing field (row has: {', '.join(map(str, rec)) or 'no fields'})")
    value = rec[name]
    if not isinstance(value, str):
        raise _BadRow(name, f"expected a string, got {_show(value)}")
    if not allow_empty and not value.strip():
        raise _BadRow(name, "empty text")
    return value


def _integer(rec: Mapping[str, Any], name: str, lo: int, hi: int, allow_missing: bool) -> int | None:
    if name not in rec:
        raise _BadRow(name, f"missing field (row has: {', '.join(map(str, rec)) or 'no fields'})")
    value = rec[name]
    expected = f"an integer {lo}..{hi}" + (f" or {MISSING_LABEL} (missing)" if allow_missing else "")
    if value is None or (isinstance(value, float) and math.isnan(value)):  # parquet null, pandas NaN
        if allow_missing:
            return None
        raise _BadRow(name, f"expected {expected}, got null")
    if isinstance(value, bool):  # bool is an int subclass in Python; True is not a label
        raise _BadRow(name, f"expected {expected}, got {_show(value)}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, float) and value.is_integer():  # a float column because of nulls
        number = int(value)
    else:
        raise _BadRow(name, f"expected {expected}, got {_show(value)}")
    if allow_missing and number == MISSING_LABEL:
        return None
    if not lo <= number <= hi:
        raise _BadRow(name, f"expected {expected}, got {number}")
    return number


def _row_id(rec: Mapping[str, Any], name: str) -> str:
    """A row's id field (a string or an integer; a bool is neither) as a string."""
    raw = rec.get(name)
    if raw is None or isinstance(raw, bool) or not isinstance(raw, (str, numbers.Integral)):
        raise _BadRow(name, f"expected a string or an integer, got {_show(raw)}")
    return str(raw)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- record readers
# Each yields (file name for messages, 1-based row number, record or _Unparsable).


def load_unique(
    source: str, split: str | None, convert: Callable[[Any], Any], key: Callable[[Any], Any], field: str, what: str
) -> list:
    """Every record of ``source`` through ``convert`` (which raises ``_BadRow``), ``key(row)`` unique: a bad or
    repeated row is a :class:`DataError` naming file, row and field (a repeat also names where it was first
    seen); no rows at all is one naming ``what``. The loop of the benchmark loaders (RewardBench 2 sets, RM-Bench
    rows, JudgeBench pairs)."""
    seen: dict[Any, str] = {}
    rows: list = []
    for file, rownum, record in _records(source, split):
        try:
            row = convert(record)
            k = key(row)
            if k in seen:
                raise _BadRow(field, f"duplicate {field} {k!r} (first seen at {seen[k]})")
        except _BadRow as e:
            raise DataError(file, rownum, e.field, e.reason) from None
        seen[k] = f"{file} row {rownum}"
        rows.append(row)
    if not rows:
        raise DataError(source, None, None, f"no {what}")
    return rows


def _records(source: str, split: str | None) -> Iterator[tuple[str, int, Any]]:
    path = Path(source).expanduser()
    if path.is_file():
        yield from _read_file(str(path))
    elif path.is_dir():
        for file in _split_files(path, split or "train"):
            yield from _read_file(str(file))
    elif _HUB_FILE.match(source):
        repo, file = source.split(":", 1)
        yield from _read_hub(repo, split, data_files=file)
    elif _looks_local(source):
        raise DataError(source, None, None, "no such file or directory")
    else:
        yield from _read_hub(source, split)


_HUB_FILE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+:[^:]+$")


def _looks_local(source: str) -> bool:
    return source.lower().endswith(_FILE_SUFFIXES) or source.startswith(("/", ".", "~"))


def _split_files(directory: Path, split: str) -> list[Path]:
    whole = [directory / f"{split}{ext}" for ext in _FILE_SUFFIXES]
    found = [p for p in whole if p.is_file()]
    if len(found) > 1:
        raise DataError(
            str(directory),
            None,
            None,
            f"several files for split '{split}': {', '.join(p.name for p in found)}; pass one file",
        )
    if found:
        return found
    for where in (directory, directory / "data"):
        for ext in _FILE_SUFFIXES:
            shards = sorted(where.glob(f"{split}-*{ext}"))
            if shards:
                return shards
    present = ", ".join(sorted(p.name for p in directory.iterdir())[:20]) or "nothing"
    raise DataError(
        str(directory),
        None,
        None,
        f"no data file for split '{split}' (looked for {split}.jsonl[.gz], {split}.parquet, "
        f"{split}.json, {split}.csv and {split}-*.* shards); the directory holds: {present}",
    )


def _read_file(file: str) -> Iterator[tuple[str, int, Any]]:
    name = file.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        reader = _read_jsonl
    elif name.endswith(".json"):
        reader = _read_json
    elif name.endswith(".parquet"):
        reader = _read_parquet
    elif name.endswith(".csv"):
        reader = _read_csv
    else:
        raise DataError(file, None, None, f"unknown file type; expected one of {', '.join(_FILE_SUFFIXES)}")
    for rownum, record in reader(file):
        yield file, rownum, record


def _read_jsonl(file: str) -> Iterator[tuple[int, Any]]:
    # Line by line in bytes, so one bad line is reported (or skipped) with its line number.
    opener = gzip.open if file.lower().endswith(".gz") else open
    try:
        fh = opener(file, "rb")
    except OSError as e:
        raise DataError(file, None, None, f"cannot open: {e}") from None
    with fh:
        lineno = 0
        while True:
            try:
                raw = fh.readline()
            except (OSError, EOFError, zlib.error) as e:  # corrupt or truncated gzip
                raise DataError(file, lineno + 1, None, f"cannot read: {e}") from None
            if not raw:
                return
            lineno += 1
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            yield lineno, _decode_json_line(raw)


def _decode_json_line(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _Unparsable(f"invalid UTF-8 at byte {e.start} of the line")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return _Unparsable(f"invalid JSON: {e.msg} at column {e.colno}")


def _read_json(file: str) -> Iterator[tuple[int, Any]]:
    try:
        text = Path(file).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(file, None, None, f"invalid UTF-8 at byte {e.start}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines saved as .json
            yield from _read_jsonl(file)
            return
        raise DataError(file, None, None, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if isinstance(data, Mapping):
        lists = [v for k, v in data.items() if k in ("data", "rows") and isinstance(v, list)]
        if lists:
            data = lists[0]
    if not isinstance(data, list):
        raise DataError(file, None, None, "expected a JSON array of objects (or JSON lines)")
    yield from enumerate(data, start=1)


def _read_parquet(file: str) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise DataError(file, None, None, f"cannot read as parquet: {e}") from None
    rownum = 0
    for batch in pf.iter_batches(batch_size=4096):
        for record in batch.to_pylist():  # native Python values, nulls as None
            rownum += 1
            yield rownum, record


def _read_csv(file: str) -> Iterator[tuple[int, Any]]:
    import pandas as pd

    try:
        # Everything as text, so that "" stays an empty string and numbers are parsed only
        # where the schema wants numbers (a prompt "42" must stay a string).
        frame = pd.read_csv(file, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, ValueError, OSError) as e:
        raise DataError(file, None, None, f"cannot read as CSV: {e}") from None
    for rownum, record in enumerate(frame.to_dict(orient="records"), start=1):
        yield rownum, {k: (_csv_number(v) if k in _INT_FIELDS else v) for k, v in record.items()}


def _csv_number(cell: str) -> Any:
    text = cell.strip()
    if not text:
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return cell  # left as text: the validator reports it


def _read_hub(source: str, split: str | None, data_files: str | None = None) -> Iterator[tuple[str, int, Any]]:
    """A hub dataset split; or, with ``data_files`` (``org/name:path/in/repo``), one file of a dataset
    repo whose rows carry a ``split`` column (e.g. HelpSteer2-Preference), filtered on ``split``."""
    try:
        import datasets

        if data_files:
            ds = datasets.load_dataset(source, data_files=data_files, split="train")
        else:
            split = split or _DEFAULT_HUB_SPLITS.get(source, "train")
            ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # offline, unknown id, unknown split: all reported the same way
        raise DataError(
            source,
            None,
            None,
            f"not a local file or directory, and loading it from the Hugging Face hub "
            f"({'file ' + data_files if data_files else f'split {split!r}'}) failed: "
            f"{type(e).__name__}: {e}",
        ) from e
    label = f"{source}:{data_files}" if data_files else f"{source}[{split}]"
    for rownum, record in enumerate(ds, start=1):
        if data_files and split and isinstance(record, Mapping) and "split" in record and record["split"] != split:
            continue
        yield label, rownum, record
