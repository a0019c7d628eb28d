"""Conversations -> causal-LM examples for supervised fine-tuning (``task: sft``).

Each example is a whole conversation's token ids (``rm_jax.data.conversation.encode_responses``: the
response runs through the end-of-turn EOS) plus where its response starts; packing and the loader
are the reward model's (:mod:`rm_jax.data.pipeline`), and :func:`rm_jax.data.packing.token_targets`
turns a packed batch into next-token targets with a response-only loss mask.

With ``attributes_as_label`` (SteerLM's attribute-conditioned SFT) each HelpSteer2 row's own
attribute values become its label, ``helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2``
(missing values left out), placed where the template puts it.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.data.conversation import attribute_label, encode_responses, row_to_messages, with_label
from rm_jax.data.pipeline import Encoded, LengthReport, fit_length
from rm_jax.data.sources import pair_ids


def row_label(row: dict, where: str, attributes_as_label: bool, names: Sequence[str] = ATTRIBUTES) -> Optional[str]:
    """The row's SteerLM label: its ``"attributes"`` field, else (with ``attributes_as_label``) its
    HelpSteer2 attribute values; None for an unconditioned row."""
    if row.get("attributes") is not None:
        return attribute_label(row["attributes"], where, names)
    if attributes_as_label:
        values = {a: row[a] for a in names if row.get(a) is not None}
        return attribute_label(values, where, names) if values else None
    return None


def encode_sft(
    rows: Sequence[dict],
    tokenizer: Any,
    seq_len: int,
    template: Optional[str] = None,
    overlength: str = "truncate",
    attributes_as_label: bool = False,
    names: Sequence[str] = ATTRIBUTES,
) -> Encoded:
    """Causal-LM examples with ``response_start``. Over-long conversations follow the RM's policy: the
    prompt is cut from the left (a leading BOS kept); one whose response alone does not fit is dropped
    (counted), and so is every conversation under ``overlength: drop``."""
    report = LengthReport(rows=len(rows))
    convs, wheres = [], []
    for i, r in enumerate(rows):
        where = f"row {r.get('_row', i)}"
        msgs = row_to_messages({k: v for k, v in r.items() if k != "attributes"}, where)
        convs.append(with_label(msgs, row_label(r, where, attributes_as_label, names)))
        wheres.append(where)
    ids, starts = encode_responses(tokenizer, convs, template, wheres)
    bos = getattr(tokenizer, "bos_token_id", None)
    kept, kept_start, kept_rows = [], [], []
    for i, (x, s) in enumerate(zip(ids, starts)):
        y, truncated = fit_length(x, int(s), seq_len, overlength, bos)
        if y is None:
            report.dropped += 1
            continue
        report.truncated += truncated
        kept.append(y)
        kept_start.append(int(s) - (len(x) - len(y)))  # the prompt lost len(x) - len(y) tokens
        kept_rows.append(i)
    groups = np.asarray(pair_ids(rows), np.int64)[kept_rows] if rows else np.zeros(0, np.int64)
    n = len(kept)
    return Encoded(
        ids=kept,
        labels=np.zeros((n, 0), np.float32),
        label_mask=np.zeros((n, 0), np.float32),
        units=[(j,) for j in range(n)],
        source_rows=np.asarray([rows[i].get("_row", i) for i in kept_rows], np.int64),
        group=groups,
        strength=np.ones(n, np.float32),
        report=report,
        response_start=np.asarray(kept_start, np.int64),
    )
