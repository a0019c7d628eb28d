"""SteerLM 2.0 groups in NeMo-Aligner's format: read, checked, written, and encoded for training.

One JSON line per (prompt, label) group, exactly NeMo-Aligner's SteerLM 2.0 dataset format, so files
move between the two codebases both ways::

    {"system": "...", "prompt_turns": [{"from": "User", "value": "..."}, ...], "label": "helpfulness:4,...",
     "responses": [{"from": "Assistant", "value": "y_1", "log(P(a|x,y))": v1, "log(P(y|x))": v2,
                    "log(Q(y|a,x))": v3}, ...]}

rm_jax adds ``"response_ids"`` to a response when it knows the token ids the policy drew (``rm-jax steer label``
copies them from the samples): log Q' was scored on them and training encodes them, since a response's text need
not re-encode to them. NeMo-Aligner reads the keys it knows and ignores this one.

Per group the importance weights are w = softmax(log P(a|x,y) + log P(y|x) - log Q'(y|a,x)), as NeMo's
dataset computes them at load time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from rm_jax.core.errors import ConversationError, DataError
from rm_jax.core.files import iter_jsonl, write_jsonl
from rm_jax.data.conversation import Message, attribute_label, render, with_label
from rm_jax.data.drawn_tokens import FIELD as IDS
from rm_jax.data.drawn_tokens import encode_with_response_ids, parse_ids
from rm_jax.data.pipeline import Encoded, LengthReport

LOG_PA, LOG_PY, LOG_Q = "log(P(a|x,y))", "log(P(y|x))", "log(Q(y|a,x))"
ALTERNATION = (
    "NeMo-Aligner's SteerLM 2.0 format needs the prompt turns to alternate User, Assistant, ..., starting and "
    "ending with User"
)
ROLES = {"User": "user", "Assistant": "assistant"}


@dataclass
class SteerGroup:
    system: str
    prompt: list[Message]  # user/assistant turns before the responses
    label: str
    responses: list[str]
    log_pa: np.ndarray  # [n] log P(a|x,y_i)
    log_py: np.ndarray  # [n] log P(y_i|x)
    log_q: np.ndarray  # [n] log Q'(y_i|a,x), the sampling policy
    row: int = 0
    response_ids: Optional[list[Optional[list[int]]]] = None  # [n] the ids drawn, where the file has them

    @property
    def weights(self) -> np.ndarray:
        logw = self.log_pa + self.log_py - self.log_q
        e = np.exp(logw - logw.max())
        return e / e.sum()

    def messages(self) -> list[Message]:
        """The prompt as chat messages (a system message when there is one), carrying the label."""
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + list(self.prompt)
        return with_label(msgs, self.label)


def _number(rec: Mapping[str, Any], key: str, file: str, row: int, field: str) -> float:
    v = rec.get(key)
    if v is None:
        raise DataError(file, row, field, f"missing {key!r}")
    try:
        x = float(v)  # NeMo's docs show them as strings ("v1"); numbers in practice
    except (TypeError, ValueError):
        raise DataError(file, row, field, f"{key!r} is not a number: {v!r}") from None
    if not math.isfinite(x):
        raise DataError(file, row, field, f"{key!r} is not finite: {v!r}")
    return x


def parse_group(rec: Any, file: str, row: int) -> SteerGroup:
    if not isinstance(rec, Mapping):
        raise DataError(file, row, None, "expected a JSON object")
    system = rec.get("system", "") or ""
    if not isinstance(system, str):
        raise DataError(file, row, "system", "expected a string")
    turns = rec.get("prompt_turns")
    if not isinstance(turns, list) or not turns:
        raise DataError(file, row, "prompt_turns", "expected a non-empty list of {from, value} turns")
    prompt = []
    for j, t in enumerate(turns):
        if not isinstance(t, Mapping) or t.get("from") not in ROLES or not isinstance(t.get("value"), str):
            raise DataError(file, row, f"prompt_turns[{j}]", 'expected {"from": "User"|"Assistant", "value": str}')
        prompt.append({"role": ROLES[t["from"]], "content": t["value"]})
    for j, m in enumerate(prompt):  # NeMo reads the turns by position: User, Assistant, ..., User
        if m["role"] != ("user" if j % 2 == 0 else "assistant"):
            raise DataError(file, row, f"prompt_turns[{j}]", ALTERNATION)
    if prompt[-1]["role"] != "user":
        raise DataError(file, row, f"prompt_turns[{len(prompt) - 1}]", "the prompt must end with a User turn")
    try:
        label = attribute_label(rec.get("label"), f"{file}: row {row}")
    except ConversationError as e:
        raise DataError(file, row, "label", str(e).split("field 'attributes': ", 1)[-1]) from None
    responses = rec.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(
            file,
            row,
            "responses",
            f"a group needs at least 2 responses (got "
            f"{len(responses) if isinstance(responses, list) else type(responses).__name__}): "
            f"the weights are a softmax within the group",
        )
    texts, pa, py, q, ids = [], [], [], [], []
    for j, r in enumerate(responses):
        where = f"responses[{j}]"
        if not isinstance(r, Mapping) or not isinstance(r.get("value"), str):
            raise DataError(file, row, where, 'expected {"from": "Assistant", "value": str, log-probs}')
        if not r["value"].strip():
            raise DataError(file, row, f"{where}.value", "empty response")
        texts.append(r["value"])
        pa.append(_number(r, LOG_PA, file, row, where))
        py.append(_number(r, LOG_PY, file, row, where))
        q.append(_number(r, LOG_Q, file, row, where))
        drawn = r.get(IDS)
        if drawn is not None and parse_ids(drawn):
            raise DataError(file, row, f"{where}.{IDS}", parse_ids(drawn))
        ids.append(drawn)
    drawn_ids = ids if any(x is not None for x in ids) else None
    return SteerGroup(system, prompt, label, texts, np.asarray(pa), np.asarray(py), np.asarray(q), row, drawn_ids)


def unequal_sizes(sizes: Sequence[int], name: Any = None) -> Optional[str]:
    """None when every group holds the same number of responses (NeMo-Aligner needs that within a batch), else a
    message naming the first group that differs from the largest size. ``name(i)`` names group i."""
    if not sizes or min(sizes) == max(sizes):
        return None
    n = max(sizes)
    i = next(k for k, m in enumerate(sizes) if m != n)
    where = name(i) if name is not None else f"group {i + 1}"
    short = sum(m != n for m in sizes)
    return (
        f"{where} holds {sizes[i]} responses, while the largest groups hold {n} ({short} of {len(sizes)} groups "
        f"hold fewer): NeMo-Aligner needs every group of a batch to hold the same number (rm_jax does not)"
    )


def equalise(
    groups: Sequence[Any], policy: str, size: Callable[[Any], int], fill: Callable[[Any, int], Any]
) -> tuple[list[Any], int]:
    """(groups, how many were dropped or filled) with every group holding the largest group's number of
    responses n: ``drop`` leaves out the smaller groups; ``fill`` repeats a smaller group's responses in turn
    up to n (``fill(group, n)``). A repeated response counts twice in its group's softmax (w and b), which
    biases that group's estimate; ``drop`` does not."""
    if policy not in ("drop", "fill"):
        raise ValueError(f"equal group sizes: {policy!r} is not drop or fill")
    if not groups:
        return list(groups), 0
    n = max(size(g) for g in groups)
    if policy == "drop":
        kept = [g for g in groups if size(g) == n]
        return kept, len(groups) - len(kept)
    return [g if size(g) == n else fill(g, n) for g in groups], sum(size(g) != n for g in groups)


def load_groups(path: str) -> list[SteerGroup]:
    """Every group of a NeMo-format SteerLM 2.0 JSONL file; errors name the file, row and field."""
    groups = [parse_group(rec, path, lineno) for lineno, rec in iter_jsonl(path)]
    if not groups:
        raise DataError(path, None, None, "no groups")
    return groups


def group_record(
    system: str,
    prompt: Sequence[Message],
    label: str,
    responses: Sequence[str],
    log_pa: Iterable[float],
    log_py: Iterable[float],
    log_q: Iterable[float],
    response_ids: Optional[Sequence[Optional[Sequence[int]]]] = None,
) -> dict:
    """One line of the NeMo format; a response with ``response_ids[i]`` carries them (rm_jax's addition)."""
    inverse = {v: k for k, v in ROLES.items()}
    ids = list(response_ids) if response_ids is not None else [None] * len(responses)
    out = []
    for y, a, b, c, x in zip(responses, log_pa, log_py, log_q, ids):
        rec = {"from": "Assistant", "value": y, LOG_PA: float(a), LOG_PY: float(b), LOG_Q: float(c)}
        if x is not None:
            rec[IDS] = [int(t) for t in x]
        out.append(rec)
    return {
        "system": system,
        "prompt_turns": [{"from": inverse[m["role"]], "value": m["content"]} for m in prompt],
        "label": label,
        "responses": out,
    }


def write_groups(path: str, groups: Sequence[SteerGroup]) -> None:
    write_jsonl(
        path,
        (
            group_record(g.system, g.prompt, g.label, g.responses, g.log_pa, g.log_py, g.log_q, g.response_ids)
            for g in groups
        ),
    )


def fit_group(
    ids: Sequence[np.ndarray],
    starts: Sequence[int],
    seq_len: int,
    overlength: str,
    bos_id: Optional[int],
    label_kept: Callable[[np.ndarray], bool],
) -> tuple[Optional[list[np.ndarray]], Optional[list[int]], bool]:
    """One group's conversations (they share a prompt) fitted to ``seq_len``: (ids, response starts, truncated),
    ids None when the group is dropped. A group is one context: under ``truncate`` its prompt is cut from the
    left once (after a leading BOS), by what its longest conversation needs, and every response follows that
    same prompt; the group is dropped instead when the cut would reach the label (``label_kept`` of the
    remaining prompt is false) or leave no prompt, and always under ``drop``."""
    longest = max(len(x) for x in ids)
    if longest <= seq_len:
        return list(ids), [int(s) for s in starts], False
    if overlength == "drop":
        return None, None, False
    cut = longest - seq_len
    out, out_starts = [], []
    for x, s in zip(ids, starts):  # the prompts are the same tokens (the same cut from each, should they differ)
        head = 1 if bos_id is not None and s and x[0] == bos_id else 0
        if head + cut >= s:
            return None, None, False
        kept = np.concatenate([x[:head], x[head + cut : s]]).astype(np.int32)
        if not label_kept(kept):
            return None, None, False
        out.append(np.concatenate([kept, x[s:]]).astype(np.int32))
        out_starts.append(len(kept))
    return out, out_starts, True


def _kept_text(tokenizer: Any, g: SteerGroup, template: Optional[str]) -> list[str]:
    """What a cut must leave whole: the text the template writes for the group's label (the nemotron label turn
    ``<extra_id_2>LABEL\n``, or the label in a system message) and the generation prompt (the assistant
    header the responses follow)."""
    plain = ([{"role": "system", "content": g.system}] if g.system else []) + list(g.prompt)
    with_, without = render(tokenizer, [g.messages(), plain], template, add_generation_prompt=True)
    a = 0
    while a < min(len(with_), len(without)) and with_[a] == without[a]:
        a += 1
    b = 0
    while b < min(len(with_), len(without)) - a and with_[-1 - b] == without[-1 - b]:
        b += 1
    turns = render(tokenizer, [plain], template, add_generation_prompt=False)[0]
    header = without[len(turns) :] if without.startswith(turns) else ""
    return [t for t in (with_[a : len(with_) - b], header) if t]


def encode_groups(
    groups: Sequence[SteerGroup],
    tokenizer: Any,
    seq_len: int,
    template: Optional[str] = None,
    overlength: str = "truncate",
) -> Encoded:
    """Causal-LM examples, one per response, with per-example ``w`` (importance weight) and
    ``logq_prime`` values; a group is one unit, so it stays whole in a micro-batch, and batches carry
    each slot's group (``steer_group``, -1 for empty slots). Over-long groups follow :func:`fit_group`: the
    prompt cut once for the whole group (never the label), or the group dropped whole (its weights would no
    longer be a softmax over what is trained); the report counts groups (truncated, dropped)."""
    report = LengthReport(rows=len(groups))
    convs, drawn, where = [], [], []
    for g in groups:
        base = g.messages()
        convs.extend(base + [{"role": "assistant", "content": y}] for y in g.responses)
        drawn.extend(g.response_ids or [None] * len(g.responses))
        where.extend(f"row {g.row}, field 'responses[{j}]'" for j in range(len(g.responses)))
    # the ids drawn where the group has them: the tokens log Q' was scored on (their text need not re-encode to them)
    ids, starts = encode_with_response_ids(tokenizer, convs, drawn, template, where)
    bos = getattr(tokenizer, "bos_token_id", None)
    kept_ids, kept_start, units, w, lq, grp, src = [], [], [], [], [], [], []
    k, first = 0, 0
    for g in groups:
        mine = list(range(first, first + len(g.responses)))  # convs were appended group by group
        first += len(g.responses)
        fitted, fstarts, truncated = fit_group(
            [ids[j] for j in mine],
            [int(starts[j]) for j in mine],
            seq_len,
            overlength,
            bos,
            lambda prompt, keep=_kept_text(tokenizer, g, template): all(
                t in tokenizer.decode(prompt, skip_special_tokens=False) for t in keep
            ),
        )
        if fitted is None:
            report.dropped += 1
            continue
        report.truncated += truncated
        units.append(tuple(range(len(kept_ids), len(kept_ids) + len(mine))))
        for x, st, weight, logq in zip(fitted, fstarts, g.weights, g.log_q):
            kept_ids.append(x)
            kept_start.append(st)
            w.append(weight)
            lq.append(logq)
            grp.append(k)
            src.append(g.row)
        k += 1
    n = len(kept_ids)
    return Encoded(
        ids=kept_ids,
        labels=np.zeros((n, 0), np.float32),
        label_mask=np.zeros((n, 0), np.float32),
        units=units,
        source_rows=np.asarray(src, np.int64),
        group=np.asarray(grp, np.int64),
        strength=np.ones(len(units), np.float32),
        report=report,
        response_start=np.asarray(kept_start, np.int64),
        example_values={"w": np.asarray(w, np.float32), "logq_prime": np.asarray(lq, np.float32)},
    )
