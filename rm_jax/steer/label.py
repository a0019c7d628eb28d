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

Where a row has ``"response_ids"`` (the token ids drawn), log Q' (and log P(y|x) when the unconditional model
reads the policy's vocabulary) is that of those ids, and the groups carry them for training: a response's
text need not re-encode to the tokens drawn (a byte-level policy that stops inside a multi-byte character).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, get_args

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.config import OnBadRow
from rm_jax.core.errors import InputError
from rm_jax.core.files import iter_jsonl, write_jsonl
from rm_jax.data.conversation import Message, parse_attribute_label, with_label
from rm_jax.data.drawn_tokens import FIELD as IDS
from rm_jax.data.drawn_tokens import ids_problem, parse_ids
from rm_jax.data.steer_groups import ALTERNATION, equalise, group_record, unequal_sizes
from rm_jax.engine.scoring import score_rows
from rm_jax.steer.attribute_model import log_p_attributes, log_p_levels, resolve_sigma
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
    response_ids: Optional[list[Optional[list[int]]]] = None  # per response, the token ids drawn (when known)
    scores: Optional[dict[str, np.ndarray]] = None  # per response: log_pa, log_q, tokens (once scored)

    def ids(self) -> list[Optional[list[int]]]:
        return self.response_ids if self.response_ids is not None else [None] * len(self.responses)


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
    path: str,
    skip_empty: bool = False,
    skipped: Optional[dict] = None,
    skip_unfinished: bool = False,
    bad: Optional[list[str]] = None,
) -> list[Sample]:
    """One :class:`Sample` per row; errors name file, line and field. ``skip_empty``: an empty
    response (a policy that ended its turn at once) is left out instead; ``skip_unfinished``: so is one the
    row's ``"finished"`` marks as cut off; a group left with fewer than 2 responses goes too; all counted in
    ``skipped``. ``bad`` (``--on-bad-row skip``): a row that cannot be read, or a response whose
    ``"response_ids"`` are not token ids, is left out and its error appended there (counted in ``skipped`` as
    ``bad_rows`` / ``bad_responses``) instead of raised."""
    out = []
    skipped = skipped if skipped is not None else {}
    recorded: dict[bool, str] = {}  # rows with and without sampling settings: the first of each
    for lineno, row in iter_jsonl(path):
        where = f"{path}: line {lineno}"
        settings = _sampling(row, where)
        recorded.setdefault(settings is not None, where)
        if len(recorded) == 2:  # a file-wide rule, not one row's fault: never skipped
            raise InputError(
                f"{recorded[False]}, field 'sampling': missing, while {recorded[True]} records the settings its "
                f"responses were drawn with: log Q' needs each response's sampling distribution"
            )
        try:
            smp = _read_row(row, where, settings, skip_empty, skip_unfinished, skipped, bad)
        except InputError as e:
            if bad is None:
                raise
            bad.append(str(e))
            _count(skipped, "bad_rows", 1)
            continue
        if smp is not None:
            out.append(smp)
    if not out:
        raise InputError(f"{path}: no samples" + (f" ({len(bad)} bad rows or responses left out)" if bad else ""))
    return out


def _count(skipped: dict, key: str, k: int) -> None:
    if k:
        skipped[key] = skipped.get(key, 0) + k


def _read_row(
    row: dict,
    where: str,
    settings: Optional[tuple[float, float]],
    skip_empty: bool,
    skip_unfinished: bool,
    skipped: dict,
    bad: Optional[list[str]],
) -> Optional[Sample]:
    """One row as a :class:`Sample` (None when fewer than 2 responses are left), or an InputError naming it."""
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
    ids = row.get(IDS)
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(ys)):
        raise InputError(f"{where}, field '{IDS}': expected one list of token ids (or null) per response")
    ids = ids if ids is not None else [None] * len(ys)
    unusable = set()
    for j, x in enumerate(ids):
        problem = parse_ids(x) if x is not None else None
        if problem:
            msg = f"{where}, field '{IDS}[{j}]': {problem}"
            if bad is None:
                raise InputError(msg)
            bad.append(msg)
            unusable.add(j)
    _count(skipped, "bad_responses", len(unusable))
    ok = [j for j in range(len(ys)) if j not in unusable]
    keep = [j for j in ok if ys[j].strip() and (done[j] or not skip_unfinished)]
    _count(skipped, "empty_responses", sum(not ys[j].strip() for j in ok))
    if skip_unfinished:
        _count(skipped, "unfinished_responses", sum(bool(ys[j].strip()) and not done[j] for j in ok))
    if len(keep) < 2:
        _count(skipped, "groups", 1)
        return None
    return Sample(
        p.messages,
        p.label,
        [ys[j] for j in keep],
        p.row,
        [f"{where}, field 'responses[{j}]'" for j in keep],
        sum(not done[j] for j in keep),
        [done[j] for j in keep],
        settings or (1.0, 1.0),
        settings is not None,
        [ids[j] for j in keep] if any(x is not None for x in ids) else None,
    )


def _pick(smp: Sample, pick: Sequence[int]) -> Sample:
    """The sample with responses ``pick`` (indices into its responses, in order; repeats allowed)."""
    return dataclasses.replace(
        smp,
        responses=[smp.responses[j] for j in pick],
        locations=[smp.locations[j] for j in pick],
        finished=[smp.finished[j] for j in pick],
        unfinished=sum(not smp.finished[j] for j in pick),
        response_ids=[smp.response_ids[j] for j in pick] if smp.response_ids is not None else None,
        scores={k: v[list(pick)] for k, v in smp.scores.items()} if smp.scores is not None else None,
    )


def _filled(smp: Sample, n: int) -> Sample:
    """The sample with its responses repeated in turn up to n (see :func:`rm_jax.data.steer_groups.equalise`)."""
    return _pick(smp, [j % len(smp.responses) for j in range(n)])


def _same_vocabulary(a: Any, b: Any) -> bool:
    """Whether two policies read token ids alike (the drawn ids mean the same text to both)."""
    if a is b:
        return True
    return a.cfg.vocab_size == b.cfg.vocab_size and a.tokenizer.get_vocab() == b.tokenizer.get_vocab()


def _unscorable(log_q: float, finished: bool, t: float, p: float) -> Optional[str]:
    """Why a response's log Q' cannot enter the weights (None when it can)."""
    if not np.isneginf(log_q):
        return None if np.isfinite(log_q) else f"log Q' came out {log_q} (not finite)"
    why = (
        "it was cut off at max_new_tokens, so its end of turn was never sampled (--skip-unfinished leaves "
        "such responses out)"
        if not finished
        else "it cannot have been sampled from this policy with these settings (a response without "
        "'response_ids' is re-encoded from its text, which need not give back the tokens drawn)"
    )
    return f"a token of the response lies outside the top-p {p} nucleus (temperature {t}) of --policy: {why}"


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
    on_bad_row: str = "error",
    share_prompts: Any = "auto",
) -> dict:
    """Write ``output`` (NeMo-format groups); returns a report. ``policy``/``sft``: folders or loaded
    :class:`rm_jax.policy.Policy`; ``rm``: an RM folder (HF or run); ``sigma``: see
    :func:`rm_jax.steer.attribute_model.resolve_sigma` (default: the RM's validation RMSE).
    ``equal_groups``: ``drop`` or ``fill`` makes every group hold the same number of responses, as NeMo-Aligner
    needs (:func:`rm_jax.data.steer_groups.equalise`); without it, uneven groups are written and the report's
    ``nemo`` says which group breaks the rule. A response with ``"response_ids"`` is scored on those ids (the
    tokens drawn), and the groups carry them for training. ``on_bad_row``: ``error`` stops at the first row
    or response that cannot be scored (bad ids, log Q' outside the nucleus), naming file, line and field, and
    writes nothing; ``skip`` leaves it out, counted in the report's ``skipped`` (``bad_rows``,
    ``bad_responses``) with the reasons in ``bad``."""
    from rm_jax.policy import response_logprobs
    from rm_jax.steer.placement import policy as load
    from rm_jax.steer.placement import reward_model

    if on_bad_row not in get_args(OnBadRow):
        raise InputError(f"--on-bad-row: {on_bad_row!r} is not one of {', '.join(get_args(OnBadRow))}")
    if equal_groups is not None and equal_groups not in ("drop", "fill"):
        raise InputError(f"--equal-groups: {equal_groups!r} is not drop or fill")
    skipped: dict = {}
    bad: Optional[list[str]] = [] if on_bad_row == "skip" else None
    samples = read_samples(input, skip_empty, skipped, skip_unfinished, bad)
    sig = resolve_sigma(rm, sigma)
    rm_model = reward_model(rm, devices, dtype)
    if list(rm_model.attributes) != list(ATTRIBUTES):
        raise InputError(f"--rm {rm}: predicts {rm_model.attributes}, not the five HelpSteer2 attributes")
    pol = load(policy, devices, dtype)
    uncond = load(sft, devices, dtype) if sft is not None else pol

    def flat(smps: Sequence[Sample]) -> tuple[list, list, list, list, list]:
        prompts, labels, ys, where, ids = [], [], [], [], []
        for smp in smps:
            prompts += [smp.messages] * len(smp.responses)
            labels += [smp.label] * len(smp.responses)
            ys += smp.responses
            where += smp.locations
            ids += smp.ids()
        return prompts, labels, ys, where, ids

    flat_prompt, flat_label, flat_y, flat_where, flat_ids = flat(samples)
    rows = [{"messages": m + [{"role": "assistant", "content": y}]} for m, y in zip(flat_prompt, flat_y)]
    levels = rm_model.cfg.attribute_head != "regression"
    scored = score_rows(
        rm_model,
        rows,
        "helpfulness-only",
        batch_rows=batch_size,
        progress=progress,
        where=flat_where,
        probs=levels,
        share_prompts=share_prompts,  # a prompt's samples share its tokens (docs/sharing.md)
    )
    pred = scored[0]

    def log_pa_row(i: int, lab: Any) -> np.ndarray:
        if levels:
            return log_p_levels(scored[2][i : i + 1], parse_attribute_label(lab))
        return log_p_attributes(pred[i : i + 1], parse_attribute_label(lab), sig)

    log_pa = np.concatenate([log_pa_row(i, lab) for i, lab in enumerate(flat_label)]) if rows else np.zeros(0)
    cond = [
        with_label(m + [{"role": "assistant", "content": y}], lab) for m, y, lab in zip(flat_prompt, flat_y, flat_label)
    ]
    problems: dict[int, str] = {}  # flat index -> why it cannot be scored

    def refuse(i: int, why: str) -> None:
        if bad is None:
            raise InputError(f"{flat_where[i]}: {why}; nothing written (--on-bad-row skip leaves it out, counted)")
        problems[i] = f"{flat_where[i]}: {why}"

    for i, (y, x) in enumerate(zip(flat_y, flat_ids)):
        if x is not None:
            problem = ids_problem(pol.tokenizer, y, x, pol.template, pol.cfg.vocab_size)
            if problem:
                refuse(i, f"{IDS}: {problem}")
    # log Q' under the distribution each response was drawn from, one pass per setting, on the tokens drawn
    flat_sampling = [smp.sampling for smp in samples for _ in smp.responses]
    flat_finished = [f for smp in samples for f in smp.finished]
    log_q, n_tokens = np.full(len(cond), -np.inf), np.zeros(len(cond), np.int64)
    for t, p in sorted(set(flat_sampling)):
        idx = [i for i, st in enumerate(flat_sampling) if st == (t, p) and i not in problems]
        lq, nt = response_logprobs(
            pol,
            [cond[i] for i in idx],
            locations=[flat_where[i] for i in idx],
            temperature=t,
            top_p=p,
            response_ids=[flat_ids[i] for i in idx],
            share_prompts=share_prompts is True,  # forced only (docs/sharing.md, policy log-probabilities)
        )
        log_q[idx], n_tokens[idx] = lq, nt
        for i in idx:
            why = _unscorable(float(log_q[i]), flat_finished[i], t, p)
            if why:
                refuse(i, why)

    # the scored samples, less what could not be scored (skip): groups left with one response go too
    kept, k = [], 0
    for smp in samples:
        n = len(smp.responses)
        scored = dataclasses.replace(
            smp, scores={"log_pa": log_pa[k : k + n], "log_q": log_q[k : k + n], "tokens": n_tokens[k : k + n]}
        )
        ok = [j for j in range(n) if k + j not in problems]
        k += n
        if len(ok) < 2:
            _count(skipped, "groups", 1)
            continue
        kept.append(_pick(scored, ok) if len(ok) < n else scored)
    _count(skipped, "bad_responses", len(problems))
    if bad is not None:
        bad.extend(problems[i] for i in sorted(problems))
    if not kept:
        first = f"; first: {bad[0]}" if bad else ""
        raise InputError(f"{input}: no group has 2 responses that could be scored; nothing written{first}")
    samples = kept
    equalised = 0
    if equal_groups is not None:
        samples, equalised = equalise(samples, equal_groups, lambda smp: len(smp.responses), _filled)
    uneven = unequal_sizes([len(smp.responses) for smp in samples], lambda i: samples[i].locations[0].split(",")[0])

    flat_prompt, _, flat_y, flat_where, flat_ids = flat(samples)
    plain = [m + [{"role": "assistant", "content": y}] for m, y in zip(flat_prompt, flat_y)]
    # log P(y|x) of the same tokens when the unconditional model reads ids as the policy does
    same = _same_vocabulary(pol, uncond)
    ids, forced = flat_ids if same else None, share_prompts is True
    log_py, _ = response_logprobs(uncond, plain, locations=flat_where, response_ids=ids, share_prompts=forced)

    records, k = [], 0
    for smp in samples:
        sl = slice(k, k + len(smp.responses))
        msgs = smp.messages
        has_system = bool(msgs) and msgs[0]["role"] == "system"
        system, turns = (msgs[0]["content"], msgs[1:]) if has_system else ("", msgs)
        sc = smp.scores
        records.append(
            group_record(
                system, turns, smp.label, smp.responses, sc["log_pa"], log_py[sl], sc["log_q"], smp.response_ids
            )
        )
        k += len(smp.responses)
    all_pa = np.concatenate([smp.scores["log_pa"] for smp in samples])
    all_q = np.concatenate([smp.scores["log_q"] for smp in samples])
    if not np.all(np.isfinite(all_pa)) or not np.all(np.isfinite(all_q)) or not np.all(np.isfinite(log_py)):
        raise InputError(f"{input}: a log-probability came out non-finite; nothing written")
    write_jsonl(output, records)
    tokens = np.concatenate([smp.scores["tokens"] for smp in samples])
    return {
        "groups": len(records),
        "responses": len(flat_y),
        "sigma": sig,
        "skipped": skipped,
        # what --on-bad-row skip left out, and why (file, line, field); None under the default (error)
        "bad": bad,
        "on_bad_row": on_bad_row,
        "unfinished": sum(smp.unfinished for smp in samples),
        "log_p_y_given_x": os.path.abspath(sft)
        if isinstance(sft, str)
        else ("the given sft model" if sft is not None else "the sampling policy without the label"),
        "mean_response_tokens": float(np.mean(tokens)) if len(tokens) else 0.0,
        # NeMo-Aligner needs equal group sizes: None when they are, else which group breaks the rule
        "nemo": uneven,
        "equal_groups": {"policy": equal_groups, "groups": equalised} if equal_groups else None,
        # the distributions log Q' was scored under; None: the samples recorded none (temperature 1, top-p 1)
        "sampling": [{"temperature": t, "top_p": p} for t, p in sorted({smp.sampling for smp in samples})]
        if samples[0].recorded
        else None,
        # how many responses were scored on the token ids drawn (the rest on their re-encoded text)
        "scored_on_ids": sum(x is not None for x in flat_ids),
    }
