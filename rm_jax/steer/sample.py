"""Sampling n responses per (prompt, label): the samples ``rm-jax steer label`` turns into SteerLM 2.0 groups.

Output rows are ``rm-jax lm generate``'s: the prompt (or messages), ``"attributes"`` (the label the policy
was given), ``"responses"`` (n texts), ``"response_ids"`` (per response, the token ids drawn: what log Q' and
training score, since a text need not re-encode to them), ``"finished"`` (false for a response cut off at
``max_new_tokens``) and ``"sampling"`` (temperature, top_p, seed, max_new_tokens: the distribution log Q' is
scored under)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from rm_jax.core.files import write_jsonl
from rm_jax.steer.prompts import labelled, read_prompts, targets_as_labels


def sample_prompts(
    policy: Any,
    input: str,
    output: str,
    *,
    n: int = 4,
    targets: Optional[Sequence[Any]] = None,
    prompts: Optional[int] = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    seed: int = 0,
    batch_size: int = 8,
    split: str = "train",
    devices: str = "one",
    dtype: str = "float32",
    progress: bool = True,
) -> dict:
    """``policy``: a loaded :class:`rm_jax.policy.Policy` or its folder; ``input``: prompts (see
    :func:`rm_jax.steer.prompts.read_prompts`; HelpSteer2 data reads its ``split``, the training prompts by
    default). Each distinct (prompt, label) is sampled under its own label (its ``"attributes"``, else its
    HelpSteer2 values; ``prompts`` counts those pairs), or each distinct prompt under each of ``targets``."""
    from rm_jax.core.errors import InputError
    from rm_jax.policy import generate
    from rm_jax.policy.generate import sampling_record
    from rm_jax.steer.placement import policy as load

    if n < 2:
        raise InputError(f"n: SteerLM 2.0 groups need at least 2 responses per (prompt, label), got {n}")
    pol = load(policy, devices, dtype)
    labels = targets_as_labels(targets)
    items = read_prompts(input, prompts, split=split, by_label=labels is None)
    jobs = [(p, lab) for p in items for lab in (labels or [p.label])]
    missing = [i for i, (p, lab) in enumerate(jobs) if lab is None]
    if missing:
        raise InputError(
            f"{input}: prompt {missing[0] + 1} has no attributes to condition on: give its row "
            f'"attributes" (or HelpSteer2 labels), or targets'
        )
    gen = generate(
        pol,
        [labelled(p, lab) for p, lab in jobs],
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        return_tokens=True,
    )
    settings = sampling_record(temperature, top_p, seed, max_new_tokens)
    write_jsonl(
        output,
        (
            {
                **p.row,
                "attributes": lab,
                "responses": list(ys),
                "response_ids": [x.tolist() for x in ids],
                "finished": list(fs),
                "sampling": settings,
            }
            for (p, lab), ys, ids, fs in zip(jobs, gen.texts, gen.tokens, gen.finished)
        ),
    )
    return {
        "sampling": settings,
        "prompts": len(items),
        "groups": len(jobs),
        "responses": sum(len(t) for t in gen.texts),
        "unfinished": sum(not f for fs in gen.finished for f in fs),
    }
