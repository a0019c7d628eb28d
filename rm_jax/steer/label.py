"""``rm-jax steer label``: sampled responses -> SteerLM 2.0 groups in NeMo-Aligner's format.

For each (prompt x, label a) group of n responses y_i:

* log P(a|x,y_i): the RM's predicted attributes under the binned-normal model (:mod:`.attribute_model`);
* log P(y_i|x): the response's log-probability under the unconditional model ``sft`` given the prompt
  alone; without ``sft``, the sampling policy itself with the label left out stands in for it (an
  attribute-conditioned SFT model read without its label; say so in papers);
* log Q'(y_i|a,x): under the sampling policy, with the label, and under the distribution the responses were
  drawn from: the row's ``"sampling"`` settings (written by ``rm-jax lm generate`` and the sample step) give
  softmax(logits / temperature) restricted to the top-p nucleus and renormalised, token by token. Rows that
  record no settings are taken as drawn at temperature 1, top-p 1 (said in the report); settings that cannot
  be reproduced (greedy, an unknown key, some rows recording them and others not) are refused by name.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.errors import InputError
from rm_jax.core.files import iter_jsonl, write_jsonl
from rm_jax.data.conversation import Message, parse_attribute_label, with_label
from rm_jax.data.steer_groups import ALTERNATION, equalise, group_record, unequal_sizes
from rm_jax.engine.scoring import score_rows
from rm_jax.steer.attribute_model import log_p_attributes, resolve_sigma
from rm_jax.steer.prompts import prompt_from_row


@dataclass
class Sample:
    """One row of samples: a (prompt, label) group of responses."""

    messages: list[Message]  # the prompt, ending with the user's turn
    label: str  # the label the responses were sampled under
    responses: list[str]
    row: dict  # what the output keeps of the input row
    locations: list[str]  # each response's file, line and field, for errors
    unfinished: int  # how many of the responses were cut off at max_new_tokens
    finished: list[bool]  # per response: it ended its turn within max_new_tokens
    sampling: tuple[float, float] = (1.0, 1.0)  # (temperature, top_p) the responses were drawn with
    recorded: bool = False  # the row said so (else the default was assumed)


def _sampling(row: dict, where: str) -> Optional[tuple[float, float]]:
    """(temperature, top_p) of the row's ``"sampling"`` record, None when it has none; refuses what log Q'
    cannot reproduce."""
    from rm_jax.policy.generate import SAMPLING_KEYS

    rec = row.get("sampling")
    if rec is None:
        return None
    if not isinstance(rec, dict):
        raise InputError(f'{where}, field \'sampling\': expected a mapping like {{"temperature": 1.0, "top_p": 1.0}}')
    for k in rec:
        if k not in SAMPLING_KEYS:
            raise InputError(
                f"{where}, field 'sampling.{k}': unknown setting (known: {', '.join(SAMPLING_KEYS)}); log Q' "
                f"cannot reproduce a distribution it does not know"
            )
    for k in ("temperature", "top_p"):
        v = rec.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{where}, field 'sampling.{k}': expected a number, got {v!r}")
    t, p = float(rec["temperature"]), float(rec["top_p"])
    if t == 0:
        raise InputError(
            f"{where}, field 'sampling.temperature': 0 (greedy): greedy responses were not drawn from a "
            f"distribution, so they have no log Q'; sample with a temperature > 0"
        )
    if not (t > 0 and math.isfinite(t)) or not 0 < p <= 1:
        raise InputError(f"{where}, field 'sampling': temperature {t} / top_p {p} cannot be a sampling distribution")
    return t, p


def read_samples(
    path: str, skip_empty: bool = False, skipped: Optional[dict] = None, skip_unfinished: bool = False
) -> list[Sample]:
    """One :class:`Sample` per row; errors name file, line and field. ``skip_empty``: an empty
    response (a policy that ended its turn at once) is left out instead; ``skip_unfinished``: so is one the
    row's ``"finished"`` marks as cut off; a group left with fewer than 2 responses goes too; all counted in
    ``skipped``."""
    out = []
    skipped = skipped if skipped is not None else {}

    def count(key: str, k: int) -> None:
        if k:
            skipped[key] = skipped.get(key, 0) + k

    recorded: dict[bool, str] = {}  # rows with and without sampling settings: the first of each
    for lineno, row in iter_jsonl(path):
        where = f"{path}: line {lineno}"
        settings = _sampling(row, where)
        recorded.setdefault(settings is not None, where)
        if len(recorded) == 2:
            raise InputError(
                f"{recorded[False]}, field 'sampling': missing, while {recorded[True]} records the settings its "
                f"responses were drawn with: log Q' needs each response's sampling distribution"
            )
        if row.get("attributes") is None:
            # Not the row's HelpSteer2 columns: log Q'(y|a,x) must use the label the responses were sampled
            # under, which `rm-jax lm generate` and the sample step take from "attributes" only.
            raise InputError(
                f"{where}, field 'attributes': missing: the label the responses were sampled under "
                f"(a group is a (prompt, label) pair)"
            )
        p = prompt_from_row(row, where)
        field = "messages" if "messages" in p.row else "prompt"
        for i, m in enumerate(p.messages):
            if m["role"] not in ("user", "assistant") and not (i == 0 and m["role"] == "system"):
                raise InputError(
                    f"{where}, field '{field}': role {m['role']!r} in turn {i}: NeMo's SteerLM 2.0 "
                    f"format holds one leading system message, then user and assistant turns"
                )
        turns = [m for m in p.messages if m["role"] != "system"]
        for i, m in enumerate(turns):
            if m["role"] != ("user" if i % 2 == 0 else "assistant"):
                raise InputError(f"{where}, field '{field}': turn {i} is the {m['role']}'s: {ALTERNATION}")
        ys = row.get("responses")
        if not isinstance(ys, list) or len(ys) < 2:
            raise InputError(
                f"{where}, field 'responses': a group needs at least 2 responses, got "
                f"{len(ys) if isinstance(ys, list) else type(ys).__name__}"
            )
        for j, y in enumerate(ys):
            if not isinstance(y, str) or (not y.strip() and not skip_empty):
                raise InputError(f"{where}, field 'responses[{j}]': empty or not a string")
        done = row.get("finished", [True] * len(ys))  # rows written by other tools may not say
        if not isinstance(done, list) or len(done) != len(ys) or not all(isinstance(f, bool) for f in done):
            raise InputError(f"{where}, field 'finished': expected one true/false per response")
        keep = [j for j, y in enumerate(ys) if y.strip() and (done[j] or not skip_unfinished)]
        count("empty_responses", sum(not y.strip() for y in ys))
        count(
            "unfinished_responses",
            sum(bool(y.strip()) and not done[j] for j, y in enumerate(ys)) if skip_unfinished else 0,
        )
        if len(keep) < 2:
            count("groups", 1)
            continue
        out.append(
            Sample(
                p.messages,
                p.label,
                [ys[j] for j in keep],
                p.row,
                [f"{where}, field 'responses[{j}]'" for j in keep],
                sum(not done[j] for j in keep),
                [done[j] for j in keep],
                settings or (1.0, 1.0),
                settings is not None,
            )
        )
    if not out:
        raise InputError(f"{path}: no samples")
    return out


def _filled(smp: Sample, n: int) -> Sample:
    """The sample with its responses repeated in turn up to n (see :func:`rm_jax.data.steer_groups.equalise`)."""
    pick = [j % len(smp.responses) for j in range(n)]
    return dataclasses.replace(
        smp,
        responses=[smp.responses[j] for j in pick],
        locations=[smp.locations[j] for j in pick],
        finished=[smp.finished[j] for j in pick],
        unfinished=sum(not smp.finished[j] for j in pick),
    )


def label_samples(
    input: str,
    policy: Any,
    rm: str,
    output: str,
    *,
    sft: Optional[Any] = None,
    sigma: Optional[Any] = None,
    batch_size: int = 16,
    skip_empty: bool = False,
    skip_unfinished: bool = False,
    devices: str = "one",
    dtype: str = "float32",
    progress: bool = True,
    equal_groups: Optional[str] = None,
    share_prompts: Any = "auto",
) -> dict:
    """Write ``output`` (NeMo-format groups); returns a report. ``policy``/``sft``: folders or loaded
    :class:`rm_jax.policy.Policy`; ``rm``: an RM folder (HF or run); ``sigma``: see
    :func:`rm_jax.steer.attribute_model.resolve_sigma` (default: the RM's validation RMSE).
    ``equal_groups``: ``drop`` or ``fill`` makes every group hold the same number of responses, as NeMo-Aligner
    needs (:func:`rm_jax.data.steer_groups.equalise`); without it, uneven groups are written and the report's
    ``nemo`` says which group breaks the rule."""
    from rm_jax.policy import response_logprobs
    from rm_jax.steer.placement import policy as load
    from rm_jax.steer.placement import reward_model

    skipped: dict = {}
    samples = read_samples(input, skip_empty, skipped, skip_unfinished)
    equalised = 0
    if equal_groups is not None:
        if equal_groups not in ("drop", "fill"):
            raise InputError(f"--equal-groups: {equal_groups!r} is not drop or fill")
        samples, equalised = equalise(samples, equal_groups, lambda smp: len(smp.responses), _filled)
    uneven = unequal_sizes([len(smp.responses) for smp in samples], lambda i: samples[i].locations[0].split(",")[0])
    sig = resolve_sigma(rm, sigma)
    rm_model = reward_model(rm, devices, dtype)
    if list(rm_model.attributes) != list(ATTRIBUTES):
        raise InputError(f"--rm {rm}: predicts {rm_model.attributes}, not the five HelpSteer2 attributes")
    pol = load(policy, devices, dtype)
    uncond = load(sft, devices, dtype) if sft is not None else pol

    flat_prompt, flat_label, flat_y, flat_where = [], [], [], []
    for smp in samples:
        flat_prompt += [smp.messages] * len(smp.responses)
        flat_label += [smp.label] * len(smp.responses)
        flat_y += smp.responses
        flat_where += smp.locations
    rows = [{"messages": m + [{"role": "assistant", "content": y}]} for m, y in zip(flat_prompt, flat_y)]
    pred, _ = score_rows(
        rm_model,
        rows,
        "helpfulness-only",
        batch_rows=batch_size,
        progress=progress,
        where=flat_where,
        share_prompts=share_prompts,  # a prompt's samples share its tokens (docs/sharing.md)
    )
    log_pa = (
        np.concatenate(
            [log_p_attributes(pred[i : i + 1], parse_attribute_label(lab), sig) for i, lab in enumerate(flat_label)]
        )
        if rows
        else np.zeros(0)
    )
    cond = [
        with_label(m + [{"role": "assistant", "content": y}], lab) for m, y, lab in zip(flat_prompt, flat_y, flat_label)
    ]
    plain = [m + [{"role": "assistant", "content": y}] for m, y in zip(flat_prompt, flat_y)]
    # log Q' under the distribution each response was drawn from, one pass per setting
    flat_sampling = [smp.sampling for smp in samples for _ in smp.responses]
    log_q, n_tokens = np.zeros(len(cond)), np.zeros(len(cond), np.int64)
    for t, p in sorted(set(flat_sampling)):
        idx = [i for i, st in enumerate(flat_sampling) if st == (t, p)]
        lq, nt = response_logprobs(
            pol, [cond[i] for i in idx], locations=[flat_where[i] for i in idx], temperature=t, top_p=p
        )
        log_q[idx], n_tokens[idx] = lq, nt
    outside = np.flatnonzero(np.isneginf(log_q))
    if len(outside):
        i = outside[0]
        t, p = flat_sampling[i]
        finished = [f for smp in samples for f in smp.finished]
        why = (
            "it was cut off at max_new_tokens, so its end of turn was never sampled (--skip-unfinished leaves "
            "such responses out)"
            if not finished[i]
            else "it cannot have been sampled from this policy with these settings (or its text does not "
            "re-encode to the tokens sampled, e.g. a partial UTF-8 character)"
        )
        raise InputError(
            f"{flat_where[i]}: a token of the response lies outside the top-p {p} nucleus (temperature {t}) of "
            f"--policy: {why}; nothing written"
        )
    log_py, _ = response_logprobs(uncond, plain, locations=flat_where)

    records, k = [], 0
    for smp in samples:
        sl = slice(k, k + len(smp.responses))
        msgs = smp.messages
        has_system = bool(msgs) and msgs[0]["role"] == "system"
        system, turns = (msgs[0]["content"], msgs[1:]) if has_system else ("", msgs)
        records.append(
            group_record(
                system, turns, smp.label, smp.responses, log_pa[sl], np.asarray(log_py)[sl], np.asarray(log_q)[sl]
            )
        )
        k += len(smp.responses)
    if not np.all(np.isfinite(log_pa)) or not np.all(np.isfinite(log_q)) or not np.all(np.isfinite(log_py)):
        raise InputError(f"{input}: a log-probability came out non-finite; nothing written")
    write_jsonl(output, records)
    return {
        "groups": len(records),
        "responses": len(rows),
        "sigma": sig,
        "skipped": skipped,
        "unfinished": sum(smp.unfinished for smp in samples),
        "log_p_y_given_x": os.path.abspath(sft)
        if isinstance(sft, str)
        else ("the given sft model" if sft is not None else "the sampling policy without the label"),
        "mean_response_tokens": float(np.mean(n_tokens)) if len(rows) else 0.0,
        # NeMo-Aligner needs equal group sizes: None when they are, else which group breaks the rule
        "nemo": uneven,
        "equal_groups": {"policy": equal_groups, "groups": equalised} if equal_groups else None,
        # the distributions log Q' was scored under; None: the samples recorded none (temperature 1, top-p 1)
        "sampling": [{"temperature": t, "top_p": p} for t, p in sorted({smp.sampling for smp in samples})]
        if samples[0].recorded
        else None,
    }
