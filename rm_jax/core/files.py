"""Atomic writes (a file is written under a temporary name and renamed, so a crash never leaves a
half-written config, results table or predictions file behind) and the one JSON-lines reader."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator, Mapping, Union

import numpy as np

from rm_jax.core.errors import InputError


def write_text(path: str, text: Union[str, Iterable[str]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            for chunk in [text] if isinstance(text, str) else text:
                f.write(chunk)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=json_default) + "\n")


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> None:
    write_text(path, (json.dumps(r, ensure_ascii=False, default=json_default) + "\n" for r in records))


def read_json(path: str, missing: str, error: type = InputError) -> Any:
    """A JSON file; ``error(missing)`` when it does not exist, ``error`` naming the file when unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(missing) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: unreadable ({e})") from None


def iter_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for every non-empty line of a JSON-lines file; errors name the
    file and the line."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InputError(f"{path}: line {lineno}: invalid UTF-8") from None
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}: line {lineno}: expected a JSON object")
            yield lineno, obj


def read_jsonl(path: str) -> list[dict]:
    """Every object of a JSON-lines file (see :func:`iter_jsonl`)."""
    return [obj for _, obj in iter_jsonl(path)]
