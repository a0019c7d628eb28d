"""RewardBench 2 sets in their own columns, from a local file or the hub (``allenai/reward-bench-2``).

A set is one prompt with ``chosen`` (correct) and ``rejected`` completions; ``num_correct``,
``num_incorrect`` and ``total_completions`` must agree with those lists, because reward-bench's
``run_v2`` re-groups the flattened scores by ``total_completions`` and marks completion ``i`` correct
when ``i < num_correct``: a disagreement would silently score the wrong completions. Sets of the
``Ties`` subset carry ids ``ref:K`` / ``tied:K`` (prompt K with one, or several, correct answers); a
``tied:`` set must hold two or more correct answers: reward-bench's ``process_single_model`` documents
``tied`` as "tied samples with multiple correct answers", and its current version compares every tied
set's spread (``None`` with one correct answer) numerically, which fails on such a set.
Every set needs at least one chosen and one rejected completion (the Ties formula compares the two).

:func:`encode_run_v2` tokenises completions as reward-bench's ``run_v2`` does (its ``--length-policy``).

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

import numpy as np

from rm_jax.core.errors import InputError
from rm_jax.data.pipeline import ASSETS, BUNDLED

# The record readers and field checks are shared with the other loaders on purpose: one error format.
from rm_jax.data.sources import _BadRow, _mapping, _row_id, _show, _string, load_unique

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
    return load_unique(source, split or HUB_SPLIT, _set_row, lambda s: s.id, "id", "RewardBench 2 sets")


def _set_row(record: Any) -> RB2Set:
    rec = _mapping(record)
    set_id = _row_id(rec, "id")
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
        m = _TIES_ID.match(set_id)
        if not m:
            raise _BadRow("id", f"a {subset} set needs an id 'ref:K' or 'tied:K' (K an integer), got {set_id!r}")
        if m.group(1) == "tied" and len(chosen) < 2:
            raise _BadRow("chosen", f"a {subset} set {set_id!r} needs two or more correct answers, got {len(chosen)}")
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


# ----------------------------------------------------------------------------- reward-bench run_v2's tokenisation

RUN_V2_MAX_LENGTH = 2048  # run_v2.py's --max_length default


@dataclass(frozen=True)
class RunV2Encoding:
    """Token ids of every completion (sets in order, chosen first) as run_v2 scores them, and what happened."""

    ids: list[np.ndarray]
    max_length: int
    truncation_side: str
    cut: int  # completions longer than max_length, cut on the tokenizer's truncation side
    double_bos_masked: int  # completions whose doubled leading BOS run_v2's pipeline masks (dropped here)

    def counts(self) -> dict:
        return {
            "length_policy": "run_v2",
            "seq_len": self.max_length,
            "truncation_side": self.truncation_side,
            "cut": self.cut,
            "double_bos_masked": self.double_bos_masked,
        }


def run_v2_texts(sets: Sequence[RB2Set], tokenizer: Any, template: Optional[str] = None) -> list[str]:
    """Each completion's text as run_v2 builds it: the chat template over ``[user: prompt, assistant:
    completion]`` rendered to a string (the prompt is one user turn, not split into HelpSteer2 turns).

    reward-bench (commit 05a9005; unchanged since v0.1.4): ``rewardbench/utils.py`` ``load_bon_dataset_v2``
    (L594-696) unrolls chosen + rejected and maps ``prepare_dialogue_from_tokenizer`` (L819-903), whose
    ``ift`` branch (L886-897) renders ``apply_chat_template(messages, tokenize=False)``. ``template``: a
    built-in name or literal template that this model carries (an exported run's tokenizer carries it);
    with neither that nor a tokenizer template, run_v2 would fall back to a fastchat template, which this
    does not reproduce.
    """
    from rm_jax.data.conversation import resolve_template

    own = getattr(tokenizer, "chat_template", None)
    if not template and not own:
        raise InputError(
            "--length-policy run_v2: the tokenizer has no chat template (run_v2 would use a fastchat "
            "template, which rm_jax does not reproduce); give --template or use a tokenizer with one"
        )
    tmpl = resolve_template(tokenizer, template)
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": s.prompt}, {"role": "assistant", "content": c}],
            tokenize=False,
            chat_template=tmpl,
        )
        for s in sets
        for c in s.completions
    ]


def encode_run_v2(
    sets: Sequence[RB2Set], tokenizer: Any, template: Optional[str] = None, max_length: int = RUN_V2_MAX_LENGTH
) -> RunV2Encoding:
    """Token ids of every completion exactly as reward-bench's run_v2 feeds them to the model.

    ``scripts/run_v2.py`` (L235-242) calls the pipeline with ``truncation=True, padding=True,
    max_length=args.max_length`` (default 2048, L77); the default model config's pipeline is
    ``RewardBenchPipeline`` (``rewardbench/models/__init__.py`` ``default_v2``), which runs
    ``tokenizer(samples, truncation=..., max_length=..., padding=...)`` (``rewardbench/models/pipeline.py``
    L37-44): special tokens added as the tokenizer adds them, cut on the tokenizer's
    ``truncation_side`` (right for most: the end of the response is lost). It then masks the first of
    two leading BOS tokens (L50-74, a template that writes BOS plus a tokenizer that adds one); masking a
    first token is removing it for a rotary-position model (attention depends on relative positions), so
    it is removed here. Padding adds nothing a packed forward pass needs.
    """
    texts = run_v2_texts(sets, tokenizer, template)
    if not texts:
        return RunV2Encoding([], max_length, tokenizer.truncation_side, 0, 0)
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    full = tokenizer(texts, truncation=False)["input_ids"]  # only to count what was cut
    cut = sum(len(f) > max_length for f in full)
    bos = tokenizer.bos_token_id if tokenizer.bos_token else None
    out, doubled = [], 0
    for x in ids:
        if bos is not None and len(x) >= 2 and x[0] == bos and x[1] == bos:
            x, doubled = x[1:], doubled + 1
        out.append(np.asarray(x, np.int32))
    return RunV2Encoding(out, max_length, str(tokenizer.truncation_side), int(cut), doubled)
