"""Rows -> chat messages -> token ids. The one place that defines what the RM reads.

HelpSteer2 prompts hold earlier turns joined by ``\\n<extra_id_1>Assistant\\n`` and
``\\n<extra_id_1>User\\n``; the row's response is the final assistant turn. Conversations are
rendered with the tokenizer's chat template (or a named built-in) and then encoded without
added special tokens, which is exactly what transformers' ``apply_chat_template(tokenize=True)``
does, but batched through the fast tokenizer. The RM reads the hidden state of the last token.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from rm_jax.errors import ConversationError

Message = dict[str, str]

_TURN_SPLIT = re.compile(r"\n<extra_id_1>(User|Assistant)\n")

# The dataset's own (Nemotron) format; used when a tokenizer has no chat template.
NEMOTRON_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{{- '<extra_id_0>System\\n' + system + '\\n' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '<extra_id_1>User\\n' + message['content'] + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '<extra_id_1>Assistant\\n' + message['content'] + '\\n' -}}"
    "{%- else -%}{{- raise_exception('nemotron template: unknown role ' + message['role']) -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<extra_id_1>Assistant\\n' -}}{%- endif -%}"
)

BUILTIN_TEMPLATES: dict[str, str] = {"nemotron": NEMOTRON_TEMPLATE}




def split_prompt(prompt: str) -> list[Message]:
    """A HelpSteer2 prompt string -> alternating user/assistant messages (starting with user)."""
    parts = _TURN_SPLIT.split(prompt)
    messages: list[Message] = [{"role": "user", "content": parts[0]}]
    for i in range(1, len(parts), 2):
        messages.append({"role": parts[i].lower(), "content": parts[i + 1]})
    return messages


def count_turns(prompt: str) -> int:
    """Number of messages (user and assistant turns) in a HelpSteer2 prompt."""
    return len(split_prompt(prompt))


def row_to_messages(row: Mapping[str, Any], where: str = "row") -> list[Message]:
    """``{"prompt", "response"}`` (HelpSteer2) or ``{"messages": [...]}`` -> messages ending with the response."""
    if "messages" in row and row["messages"] is not None:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ConversationError(f"{where}: field 'messages' must be a non-empty list")
        out = []
        for j, m in enumerate(msgs):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise ConversationError(f"{where}: messages[{j}] needs 'role' and 'content'")
            if not isinstance(m["content"], str):
                raise ConversationError(f"{where}: messages[{j}].content must be a string")
            out.append({"role": str(m["role"]), "content": m["content"]})
        if out[-1]["role"] != "assistant":
            raise ConversationError(f"{where}: the last message must be the assistant's response (got role {out[-1]['role']!r})")
        return out
    if "prompt" in row and "response" in row:
        prompt, response = row["prompt"], row["response"]
        if not isinstance(prompt, str):
            raise ConversationError(f"{where}: field 'prompt' must be a string")
        if not isinstance(response, str):
            raise ConversationError(f"{where}: field 'response' must be a string")
        return split_prompt(prompt) + [{"role": "assistant", "content": response}]
    raise ConversationError(f"{where}: needs either 'prompt' and 'response', or 'messages'")


def resolve_template(tokenizer: Any, template: str | None) -> str:
    """The jinja template to render with: a built-in name, a literal template, or the tokenizer's own."""
    if template:
        if template in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[template]
        if "{" in template:
            return template
        raise ValueError(f"unknown chat template {template!r}; built-ins: {', '.join(BUILTIN_TEMPLATES)}")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one
        own = own.get("default")
    return own or NEMOTRON_TEMPLATE


def render(tokenizer: Any, conversations: Sequence[list[Message]], template: str | None = None,
           add_generation_prompt: bool = False) -> list[str]:
    tmpl = resolve_template(tokenizer, template)
    return [
        tokenizer.apply_chat_template(c, tokenize=False, chat_template=tmpl, add_generation_prompt=add_generation_prompt)
        for c in conversations
    ]


def encode(tokenizer: Any, conversations: Sequence[list[Message]], template: str | None = None) -> list[np.ndarray]:
    """Token ids of each whole conversation, as ``apply_chat_template(c, tokenize=True)`` gives them."""
    texts = render(tokenizer, conversations, template)
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [np.asarray(x, dtype=np.int32) for x in ids]


def encode_with_prompt_lengths(tokenizer: Any, conversations: Sequence[list[Message]],
                               template: str | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Ids of each conversation and the token count of its prompt part (everything before the
    final assistant message, with the generation prompt), used by the over-length policy."""
    ids = encode(tokenizer, conversations, template)
    prefixes = render(tokenizer, [c[:-1] for c in conversations], template, add_generation_prompt=True)
    plen = tokenizer(prefixes, add_special_tokens=False)["input_ids"] if prefixes else []
    return ids, np.asarray([min(len(p), len(x)) for p, x in zip(plen, ids)], dtype=np.int64)
