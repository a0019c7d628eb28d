"""Prompts to sample for: each a conversation up to the user's turn, optionally with a SteerLM label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.errors import InputError
from rm_jax.core.files import iter_jsonl
from rm_jax.data.conversation import Message, attribute_label, split_label, with_label
from rm_jax.data.pipeline import resolve_source
from rm_jax.data.sources import load_helpsteer
from rm_jax.policy.rows import prompt_messages


@dataclass
class Prompt:
    messages: list[Message]  # ends with the user's turn; no label
    label: Optional[str]  # the row's own SteerLM label (its "attributes", else its HelpSteer2 values), or None
    row: dict  # what the output row keeps of the input (prompt or messages)


def prompt_from_row(row: dict, where: str) -> Prompt:
    """A row's prompt (a whole conversation loses its last assistant turn; a ``response`` is ignored) and
    its own label: its ``"attributes"``, else its HelpSteer2 attribute values."""
    label = None
    if row.get("attributes") is not None:
        label = attribute_label(row["attributes"], where)
    elif any(row.get(a) is not None for a in ATTRIBUTES):
        label = attribute_label({a: row[a] for a in ATTRIBUTES if row.get(a) is not None}, where)
    keep = {k: row[k] for k in ("prompt", "messages") if k in row}
    msgs = keep.get("messages")
    if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
        keep["messages"] = msgs[:-1]  # a whole conversation: sample a new last turn
    return Prompt(prompt_messages(keep, where), label, keep)


def read_prompts(
    source: str, limit: Optional[int] = None, split: str = "validation", by_label: bool = False
) -> list[Prompt]:
    """Prompts from a JSON-lines file (rows ``{"prompt"}`` or ``{"messages"}``, optionally ``"attributes"``;
    a ``response`` is ignored), or from HelpSteer2-format data (file, folder, hub id, ``bundled``: its
    ``split``), one per distinct prompt in order, the first ``limit`` of them. ``by_label``: one per distinct
    (prompt, own label) instead, for sampling each row under its own label (HelpSteer2 rates about two
    responses per prompt, with different labels)."""
    out: list[Prompt] = []
    seen: set[str] = set()
    if source.endswith(".jsonl"):
        rows = ((f"{source}: line {n}", r) for n, r in iter_jsonl(source))
    else:
        rows = (
            (f"{source}: row {r.get('_row', i) + 1}", r)
            for i, r in enumerate(load_helpsteer(resolve_source(source), split).rows)
        )
    for where, r in rows:
        p = prompt_from_row(r, where)
        key = repr((p.messages, p.label)) if by_label else repr(p.messages)
        if key in seen:
            continue
        seen.add(key)
        out.append(p)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{source}: no prompts")
    return out


def labelled(prompt: Prompt, label: Optional[str]) -> list[Message]:
    return with_label(list(prompt.messages), label)


def targets_as_labels(targets: Optional[Sequence[Any]], where: str = "--targets") -> Optional[list[str]]:
    """Requested attribute vectors (label strings or {name: level} mappings) -> canonical label strings."""
    if targets is None:
        return None
    if isinstance(targets, str):
        targets = [t for t in targets.split(";") if t.strip()]
    return [attribute_label(t, f"{where}[{i}]") for i, t in enumerate(targets)]


__all__ = ["Prompt", "read_prompts", "labelled", "targets_as_labels", "split_label"]
