"""JudgeBench pairs (ScalerLab/JudgeBench, ``data/dataset=judgebench,response_model=*.jsonl``).

A pair is one ``question`` with two responses, ``response_A`` and ``response_B``, and a ``label`` of
``"A>B"`` or ``"B>A"``. Its category comes from the ``source`` prefix, as ``run_judge.py`` reports them:
``mmlu-pro`` (knowledge), ``livebench-reasoning``, ``livebench-math`` and ``livecodebench`` (coding).
The two splits are files named by the model that wrote the responses: ``gpt`` (gpt-4o, 350 pairs) and
``claude`` (claude-3.5-sonnet, 270); the hub dataset ``ScalerLab/JudgeBench`` holds the same two splits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from rm_jax.data.pipeline import ASSETS, BUNDLED
from rm_jax.data.sources import _BadRow, _mapping, _row_id, _show, _string, load_unique

LABELS = ("A>B", "B>A")
# run_judge.py's source prefixes, in its order, and the names its paper gives the categories.
CATEGORIES = {
    "mmlu-pro": "knowledge",
    "livebench-reasoning": "reasoning",
    "livebench-math": "math",
    "livecodebench": "coding",
}


@dataclass(frozen=True)
class JudgeBenchPair:
    pair_id: str
    source: str
    question: str
    response_a: str
    response_b: str
    label: str  # "A>B" | "B>A"

    @property
    def category(self) -> Optional[str]:
        """knowledge / reasoning / math / coding, or None for a source outside the four (counted in overall)."""
        for prefix, name in CATEGORIES.items():
            if self.source.startswith(prefix):
                return name
        return None


def bundled_judgebench_path() -> str:
    return os.path.join(ASSETS, "sample", "judgebench.jsonl")


def load_judgebench(source: str, split: Optional[str] = None) -> list[JudgeBenchPair]:
    """Every pair of ``source`` (a file, folder, hub id or ``bundled``); hub split default ``gpt``."""
    source = bundled_judgebench_path() if str(source) == BUNDLED else str(source)
    return load_unique(source, split or "gpt", _pair, lambda p: p.pair_id, "pair_id", "JudgeBench pairs")


def _pair(record: Any) -> JudgeBenchPair:
    rec = _mapping(record)
    row_id = _row_id(rec, "pair_id")
    label = _string(rec, "label", allow_empty=False)
    if label not in LABELS:
        raise _BadRow("label", f"expected 'A>B' or 'B>A', got {_show(label)}")
    return JudgeBenchPair(
        row_id,
        _string(rec, "source", allow_empty=False),
        _string(rec, "question", allow_empty=False),
        _string(rec, "response_A", allow_empty=True),
        _string(rec, "response_B", allow_empty=True),
        label,
    )


def flatten(pairs: Sequence[JudgeBenchPair]) -> list[dict]:
    """One ``{"prompt", "response"}`` row per response, A then B for each pair: the RM scores each alone."""
    return [{"prompt": p.question, "response": r} for p in pairs for r in (p.response_a, p.response_b)]
