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

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.errors import ConversationError

Message = dict[str, str]

_TURN_SPLIT = re.compile(r"\n<extra_id_1>(User|Assistant)\n")

# The dataset's own (Nemotron) format; used when a tokenizer has no chat template. With a SteerLM
# attribute label (the ``attribute_label`` variable) the final assistant turn, or the generation
# prompt, opens with NeMo's label turn: ``<extra_id_1>Assistant\n<extra_id_2>{label}\n{response}\n``.
NEMOTRON_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- if attribute_label is defined and attribute_label -%}"
    "{%- set label_turn = '<extra_id_2>' + attribute_label + '\\n' -%}"
    "{%- else -%}{%- set label_turn = '' -%}{%- endif -%}"
    "{{- '<extra_id_0>System\\n' + system + '\\n' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '<extra_id_1>User\\n' + message['content'] + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<extra_id_1>Assistant\\n' + (label_turn if loop.last and not add_generation_prompt else '')"
    " + message['content'] + '\\n' -}}"
    "{%- else -%}{{- raise_exception('nemotron template: unknown role ' + message['role']) -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<extra_id_1>Assistant\\n' + label_turn -}}{%- endif -%}"
)
LABEL_VARIABLE = "attribute_label"  # a template that uses it places the label itself
ATTRIBUTES_ROLE = "attributes"  # a conversation carries its label as a message of this role (see with_label)

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


def row_to_messages(row: Mapping[str, Any], where: str = "row", with_attributes: bool = False) -> list[Message]:
    """``{"prompt", "response"}`` (HelpSteer2) or ``{"messages": [...]}`` -> messages ending with the response.
    ``with_attributes``: a row's ``"attributes"`` (SteerLM label) travels with the conversation; a reward
    model reads prompt and response only, so it is off by default."""
    msgs = _row_messages(row, where)
    if with_attributes and row.get("attributes") is not None:
        return with_label(msgs, attribute_label(row["attributes"], where))
    return msgs


def _row_messages(row: Mapping[str, Any], where: str) -> list[Message]:
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
            raise ConversationError(
                f"{where}: the last message must be the assistant's response (got role {out[-1]['role']!r})"
            )
        return out
    if "prompt" in row and "response" in row:
        prompt, response = row["prompt"], row["response"]
        if not isinstance(response, str):
            raise ConversationError(f"{where}: field 'response' must be a string")
        if isinstance(prompt, list):  # the turns before the response as messages (HelpSteer3's context)
            return _row_messages({"messages": [*prompt, {"role": "assistant", "content": response}]}, where)
        if not isinstance(prompt, str):
            raise ConversationError(f"{where}: field 'prompt' must be a string or a list of messages")
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


def render(
    tokenizer: Any,
    conversations: Sequence[list[Message]],
    template: str | None = None,
    add_generation_prompt: bool = False,
) -> list[str]:
    """Rendered text of each conversation. A conversation carrying a SteerLM label (:func:`with_label`)
    gets it where the template puts it: its label turn (the nemotron template) or a system message."""
    tmpl = resolve_template(tokenizer, template)
    out = []
    for c in conversations:
        msgs, label = split_label(c)
        extra = {}
        if label and LABEL_VARIABLE in tmpl:
            extra[LABEL_VARIABLE] = label
        elif label:
            msgs = _label_as_system(msgs, label)
        out.append(
            tokenizer.apply_chat_template(
                msgs, tokenize=False, chat_template=tmpl, add_generation_prompt=add_generation_prompt, **extra
            )
        )
    return out


def encode(tokenizer: Any, conversations: Sequence[list[Message]], template: str | None = None) -> list[np.ndarray]:
    """Token ids of each whole conversation, as ``apply_chat_template(c, tokenize=True)`` gives them."""
    texts = render(tokenizer, conversations, template)
    if not texts:
        return []
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [np.asarray(x, dtype=np.int32) for x in ids]


def encode_with_prompt_lengths(
    tokenizer: Any, conversations: Sequence[list[Message]], template: str | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """Ids of each conversation and the token count of its prompt part (everything before the
    final assistant message, with the generation prompt), used by the over-length policy."""
    ids = encode(tokenizer, conversations, template)
    prefixes = render(tokenizer, [c[:-1] for c in conversations], template, add_generation_prompt=True)
    plen = tokenizer(prefixes, add_special_tokens=False)["input_ids"] if prefixes else []
    return ids, np.asarray([min(len(p), len(x)) for p, x in zip(plen, ids)], dtype=np.int64)


# ---------------------------------------------------------------- SteerLM attribute labels


def attribute_label(value: Any, where: str = "row", names: Sequence[str] = ATTRIBUTES) -> str:
    """A SteerLM attribute label, ``helpfulness:4,correctness:4,...``, from a row's ``"attributes"``:
    that string or a ``{name: level}`` mapping. Names must be among ``names``, levels integers 0-4;
    errors name the row and the field. The attributes keep the order they were given in."""
    pairs = parse_attribute_label(value, where, names)
    return ",".join(f"{k}:{v}" for k, v in pairs.items())


def parse_attribute_label(value: Any, where: str = "row", names: Sequence[str] = ATTRIBUTES) -> dict[str, int]:
    """``{name: level}`` of a label string or mapping, checked as :func:`attribute_label` says."""
    field = f"{where}, field 'attributes'"
    if isinstance(value, str):
        items = []
        for part in (p.strip() for p in value.split(",")):
            if part.count(":") != 1:
                raise ConversationError(f"{field}: {part!r} is not name:level (e.g. helpfulness:4)")
            k, v = (x.strip() for x in part.split(":"))
            items.append((k, v))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise ConversationError(
            f"{field}: expected a string like 'helpfulness:4,verbosity:1' or a "
            f"{{name: level}} mapping, got {type(value).__name__}"
        )
    if not items:
        raise ConversationError(f"{field}: empty")
    out: dict[str, int] = {}
    for k, v in items:
        if k not in names:
            raise ConversationError(f"{field}: unknown attribute {k!r} (known: {', '.join(names)})")
        if k in out:
            raise ConversationError(f"{field}: {k!r} given twice")
        level = v
        if isinstance(v, str):
            try:
                level = int(v)
            except ValueError:
                level = None
        if isinstance(level, bool) or not isinstance(level, int) or isinstance(v, float) or not 0 <= level <= 4:
            raise ConversationError(f"{field}: {k} level {v!r} is not an integer 0-4")
        out[k] = level
    return out


def with_label(messages: list[Message], label: str | None) -> list[Message]:
    """The conversation carrying ``label``: rendering places it where the template puts it (see render)."""
    if not label:
        return messages
    return [{"role": ATTRIBUTES_ROLE, "content": label}] + [m for m in messages if m["role"] != ATTRIBUTES_ROLE]


def split_label(messages: list[Message]) -> tuple[list[Message], str | None]:
    """(the messages without the label, the label or None)."""
    labels = [m["content"] for m in messages if m["role"] == ATTRIBUTES_ROLE]
    return [m for m in messages if m["role"] != ATTRIBUTES_ROLE], (labels[-1] if labels else None)


def _label_as_system(messages: list[Message], label: str) -> list[Message]:
    """Chat templates without a label turn get the label as the system message (on its own line after
    an existing system message)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n{label}"}] + messages[1:]
    return [{"role": "system", "content": label}] + messages


# ---------------------------------------------------------------- causal-LM views of a conversation


def _special_ids(tokenizer: Any) -> set[int]:
    ids = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
    for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(t, "special", False):
            ids.add(int(i))
    return ids


def _response_suffix(tokenizer: Any, template: str | None) -> str:
    """The text the template writes after a final assistant response."""
    probe = "\x00RESPONSE\x00"
    rendered = render(
        tokenizer, [[{"role": "user", "content": "u"}, {"role": "assistant", "content": probe}]], template
    )[0]
    return rendered[rendered.index(probe) + len(probe) :]


def turn_end(tokenizer: Any, template: str | None = None) -> tuple[int | None, str]:
    """(the end-of-turn token the template writes after a response, or None when it writes none; the text
    it writes between the response and that token, or after the response when there is none).

    The end-of-turn token is the first special token in what the template writes after a response:
    ChatML's ``<|im_end|>``, Phi's ``<|end|>``, Llama 3's ``<|eot_id|>``, a ``</s>``. The nemotron template
    writes only ``\n`` (NeMo's turn ends at the next turn's ``<extra_id_1>``), so it has none."""
    suffix = _response_suffix(tokenizer, template)
    special = _special_ids(tokenizer)
    for tid in tokenizer(suffix, add_special_tokens=False)["input_ids"]:
        if int(tid) in special:
            text = tokenizer.convert_ids_to_tokens(int(tid))
            return int(tid), suffix[: suffix.index(text)] if text in suffix else ""
    return None, suffix


def end_of_turn_ids(tokenizer: Any, template: str | None = None) -> list[int]:
    """What a policy emits to end its turn, and generation stops at: the end-of-turn token the chat template
    writes after a response (:func:`turn_end`), and the tokenizer's EOS."""
    written, _ = turn_end(tokenizer, template)
    eos = getattr(tokenizer, "eos_token_id", None)
    ids = ([written] if written is not None else []) + ([int(eos)] if eos is not None and eos != written else [])
    if not ids:
        raise ConversationError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token and its chat template writes no "
            f"end-of-turn token: a policy needs one to end its turn"
        )
    return ids


def encode_prompts(
    tokenizer: Any, conversations: Sequence[list[Message]], template: str | None = None
) -> list[np.ndarray]:
    """Token ids of conversations that end before the response, with the generation prompt (and the
    label turn of a labelled conversation): what a policy continues."""
    texts = render(tokenizer, conversations, template, add_generation_prompt=True)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [np.asarray(x, dtype=np.int32) for x in ids]


def encode_responses(
    tokenizer: Any,
    conversations: Sequence[list[Message]],
    template: str | None = None,
    locations: Sequence[str] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """(ids, response_start) of whole conversations for a causal LM. The response tokens are those after
    the template's generation prompt through the first end-of-turn token the template writes (what
    ``rm-jax lm generate`` emits when it stops); whatever the template writes after that token (ChatML's
    ``\n``) is not part of it. A template that writes no end-of-turn token (nemotron) gets the EOS appended
    after what it writes. Log-probabilities and the SFT loss cover exactly ``ids[response_start:]``.
    ``locations`` name the conversations in errors."""
    eot = end_of_turn_ids(tokenizer, template)
    written, _ = turn_end(tokenizer, template)
    stops = set(eot)
    # end-of-turn tokens the template itself writes after a response (a response holding more ends early)
    suffix_ids = tokenizer(_response_suffix(tokenizer, template), add_special_tokens=False)["input_ids"]
    own = sum(int(t) in stops for t in suffix_ids)
    ids, plen = encode_with_prompt_lengths(tokenizer, conversations, template)
    out = []
    for x, p in zip(ids, plen):
        name = locations[len(out)] if locations is not None else f"conversation {len(out) + 1}"
        if len(x) <= p:
            raise ConversationError(f"{name}: the response renders to no tokens")
        hits = [k for k in range(int(p), len(x)) if int(x[k]) in stops]
        if len(hits) > own:
            raise ConversationError(
                f"{name}: the response contains the end-of-turn token "
                f"{tokenizer.convert_ids_to_tokens(int(x[hits[0]]))!r}; a policy's turn ends there"
            )
        if written is not None:
            if not hits:
                raise ConversationError(
                    f"{name}: the chat template wrote no end-of-turn token "
                    f"{tokenizer.convert_ids_to_tokens(written)!r} after this response"
                )
            out.append(x[: hits[0] + 1])
        else:
            out.append(np.concatenate([x, np.asarray(eot[:1], np.int32)]))
    return out, plen


def response_text(tokenizer: Any, text: str, template: str | None = None) -> str:
    """A generated response (decoded through its end-of-turn token) as message content: the end-of-turn
    token and what the template writes before it (the nemotron template's newline) are removed, so
    re-rendering the conversation gives back the tokens the policy produced."""
    for tid in end_of_turn_ids(tokenizer, template):
        end = tokenizer.convert_ids_to_tokens(tid)
        if end and text.endswith(end):
            text = text[: -len(end)]
            break
    _, before = turn_end(tokenizer, template)
    return text[: -len(before)] if before and text.endswith(before) else text
