"""Atomic writes: a file is written under a temporary name and renamed, so a crash never leaves a
half-written config, results table or predictions file behind."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Union

import numpy as np


def write_text(path: str, text: Union[str, Iterable[str]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            for chunk in ([text] if isinstance(text, str) else text):
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
