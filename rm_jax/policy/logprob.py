"""Response log-probabilities under a policy: sum over the response tokens (after the template's
generation prompt, through the end-of-turn EOS) of log p(token | everything before it).

Conversations are packed into fixed-shape rows exactly as training packs them, and the forward pass is
training's (``CausalLM`` with targets), so ``rm-jax lm logprob``, SteerLM 2.0 labelling and the SFT loss
read the same numbers. With ``share_prompts``, conversations with the same prompt tokens (a prompt's samples)
are laid out with that prompt once (``rm_jax.data.prefix_sharing``; each response keeps the prompt's last
token, which predicts its first): the same log-probabilities up to float rounding."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rm_jax.core.config import SharePrompts
from rm_jax.core.errors import ConversationError, InputError
from rm_jax.data.conversation import Message
from rm_jax.data.drawn_tokens import encode_with_response_ids
from rm_jax.data.packing import build_batch, plan_packed, token_targets
from rm_jax.data.prefix_sharing import (
    ShareReport,
    build_shared_batch,
    plan_shared,
    plan_units,
    resolve_share,
    unit_length,
)
from rm_jax.models import CausalLM
from rm_jax.models.attention import SHARED_KERNELS, shared_layout_kernel
from rm_jax.models.sharding import activate
from rm_jax.policy.generate import sampling_logprob
from rm_jax.policy.load import program

# ``auto`` shares only where it saves this fraction of the tokens (as scoring: rm_jax.engine.scoring)
AUTO_MIN_SAVED = 0.1


def _program(policy: Any, max_segments: int, temperature: float = 1.0, top_p: float = 1.0, shared: bool = False) -> Any:
    cfg = policy.cfg
    if shared:  # a kernel whose mask reads prompt ids (rm_jax.models.attention.SHARED_KERNELS)
        cfg = cfg.replace(attention=shared_layout_kernel(cfg.attention, dtype=cfg.dtype), shared_prompts=True)
    model, mesh = CausalLM(cfg), policy.mesh
    if (temperature, top_p) != (1.0, 1.0):
        return program(
            policy,
            ("logprob", max_segments, temperature, top_p, shared),
            lambda: jax.jit(_sampled(model, mesh, max_segments, temperature, top_p)),
        )

    def run(params: Any, ids: jax.Array, seg: jax.Array, pos: jax.Array, tgt: jax.Array, mask: jax.Array) -> jax.Array:
        with activate(mesh):
            logp = model.apply({"params": params}, ids, seg, pos, targets=tgt, max_segments=max_segments)
        return logp * mask  # per token: summed on the host in float64 (a long response's float32 sum drifts)

    return program(policy, ("logprob", max_segments, shared), lambda: jax.jit(run))


def _sampled(model: Any, mesh: Any, max_segments: int, temperature: float, top_p: float) -> Any:
    """Per-token log-probabilities under the tempered, nucleus-renormalised distribution the sampler draws
    from. The nucleus needs every token's probability, so this materialises [rows, seq_len, vocab] logits
    (the plain path never does): lower the batch size if memory is short."""

    def run(params: Any, ids: jax.Array, seg: jax.Array, pos: jax.Array, tgt: jax.Array, mask: jax.Array) -> jax.Array:
        with activate(mesh):
            logits = model.apply({"params": params}, ids, seg, pos, max_segments=max_segments)
        logp = jax.lax.map(lambda a: sampling_logprob(a[0], a[1], temperature, top_p), (logits, tgt))
        return jnp.where(mask > 0, logp, 0.0)  # -inf outside the nucleus stays where it counts, not 0 * -inf

    return run


def response_logprobs(
    policy: Any,
    conversations: Sequence[list[Message]],
    *,
    batch_rows: int = 8,
    max_segments: int = 8,
    progress: bool = False,
    locations: Optional[Sequence[str]] = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    response_ids: Optional[Sequence[Optional[Sequence[int]]]] = None,
    share_prompts: SharePrompts = False,
    share_report: Optional[list] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of response-token log-probabilities [N] float64, response token counts [N]) of whole
    conversations (ending with the assistant's response; a SteerLM label, if carried, conditions it).
    ``locations`` name the conversations in errors (file, row, field). ``temperature`` / ``top_p``: the
    log-probabilities under the distribution :func:`rm_jax.policy.generate.sample_token` samples from with
    those settings (:func:`rm_jax.policy.generate.sampling_logprob`); -inf for a response holding a token
    outside the nucleus. The defaults are the model's own distribution. ``response_ids``: per conversation, the
    token ids the policy drew for its response (or None: the text is encoded): the log-probability is that of
    those tokens, after the prompt as the sampler encoded it
    (:func:`rm_jax.data.drawn_tokens.encode_with_response_ids`; ids outside the vocabulary, or that do not
    decode to the response text, are refused by location). ``share_prompts`` (True / ``auto`` / False):
    conversations with the same prompt tokens are laid out with the prompt once; ``auto`` where the policy's
    attention kernel reads that layout and it saves at least 10% of the tokens. ``share_report``: a list the
    :class:`rm_jax.data.prefix_sharing.ShareReport` is appended to when prompts were shared."""
    if batch_rows < 1:
        raise InputError(f"--batch-size: must be at least 1, got {batch_rows}")
    if not temperature > 0:
        raise InputError(f"temperature: log-probabilities need a temperature > 0 (0 is greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p: must be in (0, 1], got {top_p}")
    temperature, top_p = float(temperature), float(top_p)
    try:
        ids, starts = encode_with_response_ids(
            policy.tokenizer, conversations, response_ids, policy.template, locations, policy.cfg.vocab_size
        )
    except ConversationError as e:
        raise InputError(str(e)) from None
    n = len(ids)
    total, count = np.zeros(n, np.float64), np.zeros(n, np.int64)
    if not n:
        return total, count
    limit = policy.cfg.max_position_embeddings
    longest = max(len(x) for x in ids)
    if longest > limit:
        i = int(np.argmax([len(x) for x in ids]))
        name = locations[i] if locations is not None else f"conversation {i + 1}"
        raise InputError(f"{name}: {longest} tokens, more than the model's {limit} positions")
    seq_len = min(limit, -(-longest // 64) * 64)
    lengths = [len(x) for x in ids]
    units = _shared_units(policy, ids, starts, limit, max_segments, share_prompts)
    if units is not None:
        # A row wide enough for the largest group (up to the model's positions), with fewer rows a pass so a
        # pass holds about the tokens it would unshared.
        wide = min(limit, -(-max(unit_length(u, lengths) for u in units[0]) // 64) * 64)
        batch_rows = max(1, batch_rows * seq_len // max(wide, seq_len))
        seq_len = max(wide, seq_len)
        bins = plan_shared(units[0], lengths, seq_len, max_segments)
        if share_report is not None:
            share_report.append(units[1])
    else:
        bins = plan_packed(lengths, seq_len, max_segments)
    fn = _program(policy, max_segments, temperature, top_p, shared=units is not None)
    batch_rows = min(batch_rows, len(bins))  # one batch shape per call; a small input pays for no empty rows
    empty = np.zeros((n, 0), np.float32)
    with tqdm(total=n, desc="logprob", unit="seq", disable=not progress, leave=False) as bar:
        for s in range(0, len(bins), batch_rows):
            part, pad = bins[s : s + batch_rows], policy.pad_id
            if units is not None:
                b = build_shared_batch(ids, empty, empty, units[0], part, seq_len, max_segments, pad, batch_rows)
            else:
                b = build_batch(ids, empty, empty, part, seq_len, max_segments, pad, rows=batch_rows)
            tgt, mask = token_targets(b, starts)
            logp = np.asarray(
                jax.device_get(fn(policy.params, b["input_ids"], b["segment_ids"], b["positions"], tgt, mask)),
                np.float64,
            )
            seg = b["segment_ids"]
            ex = np.take_along_axis(b["example_index"], np.clip(seg - 1, 0, None).astype(np.int64), axis=1)
            real = (seg > 0) & (mask > 0)  # a shared prompt's tokens (negative ids) predict no response token
            np.add.at(total, ex[real], logp[real])
            np.add.at(count, ex[real], 1)
            bar.update(int((b["example_index"] >= 0).sum()))
    return total, count


def _shared_units(
    policy: Any, ids: list, starts: np.ndarray, seq_len: int, max_segments: int, share: SharePrompts
) -> Optional[tuple[list, ShareReport]]:
    """(units, report) of the shared layout for conversations grouped by their prompt tokens, or None where
    ``share`` leaves them unshared (False; ``auto`` where no two share a prompt, the policy's kernel does not
    read the layout, or it saves under ``AUTO_MIN_SAVED`` of the tokens)."""
    keys = [x[: int(s)].tobytes() for x, s in zip(ids, starts)]
    if not resolve_share(share, keys):
        return None
    if share == "auto" and policy.cfg.attention_kernel() not in SHARED_KERNELS:
        return None
    units, rep = plan_units(ids, keys, seq_len, max_segments, response_start=starts)
    if share == "auto" and rep.prompt_tokens_saved < AUTO_MIN_SAVED * rep.tokens_unshared:
        return None
    return units, rep
