"""Validated inputs -> token ids, exactly as ``rm-jax score`` makes them, and the over-length policy.

Conversations go through :func:`rm_jax.data.conversation.encode` (the chat template, then the fast tokenizer
with ``add_special_tokens=False``), the function ``rm-jax score`` calls. OpenRLHF queries are already
templated text and are tokenized as they are: ``tokenizer(text, add_special_tokens=False)``, the call
OpenRLHF's own ``serve_rm`` makes; nothing is stripped or appended, and special-token strings in the
text (``<|eot_id|>``...) become their special tokens. A query equal to the rendered chat template of a
conversation therefore gets the same ids, and the same reward, as that conversation on ``/score``.

Over-length: ``rm-jax score`` refuses a conversation longer than its limit, naming the row. The server
applies the same limit (``--seq-len``) per row: that row is answered with an error entry and the rest of
the request is scored. Truncating would read the reward at some token other than the end of the
response, a silent wrong answer.

Hugging Face fast tokenizers are not safe to call from several threads at once (their truncation and
padding state is mutable), so one :class:`Encoder` is used from one thread (the server's tokenizer
executor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from rm_jax.data.conversation import Message, encode
from rm_jax.serving.protocol import BadRequest


@dataclass
class Encoded:
    ids: list[Optional[np.ndarray]]  # None for a row answered with an error
    tokens: list[int]  # token count of every row (over-long ones too)
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def to_score(self) -> list[int]:
        return [i for i, x in enumerate(self.ids) if x is not None]


class Encoder:
    def __init__(self, tokenizer: Any, template: Optional[str], seq_len: int):
        self.tokenizer, self.template, self.seq_len = tokenizer, template, seq_len

    def conversations(self, conversations: Sequence[list[Message]], fields: Sequence[str]) -> Encoded:
        try:
            ids = encode(self.tokenizer, conversations, self.template)
        except Exception:  # a template refusing a conversation (e.g. an unknown role): find and name the row
            for i, c in enumerate(conversations):
                try:
                    encode(self.tokenizer, [c], self.template)
                except Exception as e:
                    raise BadRequest(
                        f"rows[{i}].{fields[i]}: the chat template cannot render this conversation "
                        f"({type(e).__name__}: {e})",
                        row=i,
                        field=fields[i],
                    ) from None
            raise
        return self._limit(ids, "rows", fields)

    def texts(self, texts: Sequence[str]) -> Encoded:
        if not texts:
            return Encoded([], [])
        ids = [
            np.asarray(x, dtype=np.int32) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        ]
        return self._limit(ids, "query", [""] * len(ids))

    def _limit(self, ids: list[np.ndarray], name: str, fields: Sequence[str]) -> Encoded:
        out = Encoded(list(ids), [len(x) for x in ids])
        for i, x in enumerate(ids):
            if len(x) == 0:  # the reward is read at the last token: there must be one
                where = f"{name}[{i}]" + (f".{fields[i]}" if fields[i] else "")
                raise BadRequest(f"{where}: empty (0 tokens), nothing to score", row=i, field=fields[i] or name)
            if len(x) > self.seq_len:
                out.errors[i] = (
                    f"{name}[{i}]: {len(x)} tokens, more than the limit of {self.seq_len} "
                    f"(the server's --seq-len); not scored"
                )
                out.ids[i] = None
        return out
