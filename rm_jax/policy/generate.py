"""Sampling from a policy with a KV cache, in one jitted program per batch shape.

A batch of prompts is left-padded to a common length (so every row writes the cache at the same slot),
prefilled in one forward pass, then decoded a token at a time inside a ``lax.while_loop`` that stops
when every row has emitted EOS or ``max_new_tokens`` are out; the whole loop is one XLA program, so no
Python runs per token. Shapes are bucketed (prompt length to a multiple of 32, the cache to prompt +
max_new_tokens, the batch to ``batch_size``), so a stream of prompts compiles a handful of programs.
Under a mesh the cache and activations are sharded by the model's rules (batch over data x fsdp, kv
heads over tensor).

Randomness is per sequence: sequence k of a call (prompt i, sample j: k = i * n + j) draws from
``fold_in(fold_in(key(seed), k), step)``, so results do not depend on how sequences are batched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rm_jax.core.errors import InputError
from rm_jax.data.conversation import Message, encode_prompts, end_of_turn_ids, response_text
from rm_jax.models import CausalLM, init_cache
from rm_jax.models.sharding import activate
from rm_jax.policy.load import program

PROMPT_BUCKET = 32


@dataclass
class Generation:
    """What :func:`generate` returns with ``return_tokens=True``; each field is [conversation][sample]."""

    texts: list[list[str]]  # response texts (the template's end-of-turn removed)
    tokens: list[list[np.ndarray]]  # the generated ids, through the end-of-turn token when it was emitted
    finished: list[list[bool]]  # EOS emitted within max_new_tokens

    @property
    def lengths(self) -> list[list[int]]:
        return [[len(t) for t in per] for per in self.tokens]


def check_sampling(n: int, temperature: float, top_p: float, max_new_tokens: int, greedy: bool) -> None:
    """Refuse settings that cannot sample (named by their command-line flags)."""
    if n < 1:
        raise InputError(f"--n: must be at least 1, got {n}")
    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens: must be at least 1, got {max_new_tokens}")
    if not temperature >= 0:  # also NaN
        raise InputError(f"--temperature: must be >= 0 (0 = greedy), got {temperature}")
    if not greedy and temperature > 0 and not 0 < top_p <= 1:
        raise InputError(f"--top-p: must be in (0, 1], got {top_p}")


def sample_token(logits: jax.Array, key: jax.Array, temperature: float, top_p: float, greedy: bool) -> jax.Array:
    """One token per row from logits [B, V] with keys [B]: argmax (greedy), else a draw at ``temperature``
    from the nucleus: the smallest set of most likely tokens whose probability reaches ``top_p`` (the most
    likely token always stays in; a token tied with the least likely kept one stays in too), renormalised."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:
        logits = jnp.where(_in_nucleus(jax.nn.softmax(logits, axis=-1), top_p), logits, -jnp.inf)
    return jax.vmap(jax.random.categorical)(key, logits).astype(jnp.int32)


def sampling_logprob(logits: jax.Array, targets: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """[N] log-probabilities of ``targets`` [N] under the distribution :func:`sample_token` draws from with
    logits [N, V] (not greedy): softmax(logits / temperature), restricted to the ``top_p`` nucleus exactly as
    the sampler defines it, renormalised. A target outside the nucleus gets -inf (the sampler never draws it)."""
    z = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:
        z = jnp.where(_in_nucleus(jax.nn.softmax(z, axis=-1), top_p), z, -jnp.inf)
    return jnp.take_along_axis(z, targets[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(z, axis=-1)


SAMPLING_KEYS = ("temperature", "top_p", "seed", "max_new_tokens")


def sampling_record(temperature: float, top_p: float, seed: int, max_new_tokens: int, greedy: bool = False) -> dict:
    """The settings a sample was drawn with, as rows and reports record them (temperature 0 = greedy), so that
    ``rm-jax steer label`` can score log Q' under the same distribution."""
    greedy = greedy or temperature == 0
    return {
        "temperature": 0.0 if greedy else float(temperature),
        "top_p": 1.0 if greedy else float(top_p),
        "seed": int(seed),
        "max_new_tokens": int(max_new_tokens),
    }


def _in_nucleus(probs: jax.Array, top_p: float) -> jax.Array:
    """[B, V] bool: ``probs >= c`` per row, c the largest value with ``sum(probs[probs >= c]) >= top_p``;
    that set is the nucleus (the k most likely tokens, k the fewest that reach ``top_p``, plus ties with the k-th).

    Found by bisection over the float32 bit patterns (monotone for non-negative floats; 31 halvings are exact)
    rather than by sorting the vocabulary: XLA:CPU's sort of [8, 32000] took ~60 ms per decode step, more than
    the model; 31 masked sums over the row take a few."""
    bits = jax.lax.bitcast_convert_type(probs, jnp.int32)
    lo = jnp.zeros(probs.shape[:-1], jnp.int32)  # threshold 0: everything, always enough mass
    hi = jnp.max(bits, axis=-1) + 1  # above the top token: no mass

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(jnp.where(bits >= mid[:, None], probs, 0.0), axis=-1) >= top_p
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, halve, (lo, hi))
    return bits >= lo[:, None]


def _program(
    policy: Any, rows: int, prompt_len: int, max_new: int, temperature: float, top_p: float, greedy: bool
) -> Any:
    """The jitted prefill + decode loop for one batch shape."""
    stops = tuple(end_of_turn_ids(policy.tokenizer, policy.template))  # the template decides where a turn ends
    key = ("generate", rows, prompt_len, max_new, temperature, top_p, greedy, stops)
    return program(
        policy, key, lambda: jax.jit(_decode_loop(policy, rows, prompt_len, max_new, temperature, top_p, greedy))
    )


def _decode_loop(
    policy: Any, rows: int, prompt_len: int, max_new: int, temperature: float, top_p: float, greedy: bool
) -> Any:
    cfg, mesh = policy.cfg, policy.mesh
    model = CausalLM(cfg)
    eos = jnp.asarray(end_of_turn_ids(policy.tokenizer, policy.template), jnp.int32)
    pad = policy.pad_id

    def run(params: Any, ids: jax.Array, seg: jax.Array, pos: jax.Array, keys: jax.Array) -> tuple:
        if cfg.compute_dtype != jnp.float32:
            # Decoding reads every weight for every token: cast the float32 parameters once per call, not per
            # token (the model casts each weight to the compute dtype on use, so the numbers are the same).
            params = jax.tree.map(lambda p: p.astype(cfg.compute_dtype), params)
        with activate(mesh):
            cache = init_cache(cfg, rows, prompt_len + max_new)
            logits, cache = model.apply({"params": params}, ids, seg, pos, cache=cache)
            cache = cache.advanced(prompt_len)
            out = jnp.full((rows, max_new), pad, jnp.int32)
            done = jnp.zeros((rows,), bool)
            nxt = pos[:, -1] + 1

            def cond(c: tuple) -> jax.Array:
                t, _, _, _, done, _ = c
                return (t < max_new) & ~jnp.all(done)

            def body(c: tuple) -> tuple:
                t, out, cache, logits, done, nxt = c
                step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
                tok = sample_token(logits, step_keys, temperature, top_p, greedy)
                tok = jnp.where(done, pad, tok)
                out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], t, axis=1)
                done = done | jnp.isin(tok, eos)
                logits, cache = model.apply(
                    {"params": params}, tok[:, None], jnp.ones((rows, 1), jnp.int32), nxt[:, None], cache=cache
                )
                return t + 1, out, cache.advanced(1), logits, done, nxt + 1

            state = (jnp.asarray(0, jnp.int32), out, cache, logits, done, nxt)
            _, out, _, _, done, _ = jax.lax.while_loop(cond, body, state)
            return out, done

    return run


def generate_tokens(
    policy: Any,
    prompts: Sequence[np.ndarray],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    greedy: bool = False,
    batch_size: int = 8,
    progress: bool = False,
    locations: Optional[Sequence[str]] = None,
) -> list[list[tuple[np.ndarray, bool]]]:
    """n continuations of each prompt's token ids: per prompt, n (ids through EOS, finished) pairs.
    ``temperature`` 0 is greedy decoding. ``locations`` name the prompts in errors (file and row)."""
    check_sampling(n, temperature, top_p, max_new_tokens, greedy)
    if batch_size < 1:
        raise InputError(f"--batch-size: must be at least 1, got {batch_size}")
    greedy = greedy or temperature == 0
    temperature, top_p = (1.0, 1.0) if greedy else (float(temperature), float(top_p))  # one program for greedy
    seqs = [(i, j) for i in range(len(prompts)) for j in range(n)]
    out: list[list[Any]] = [[None] * n for _ in prompts]
    if not seqs:
        return out
    limit = policy.cfg.max_position_embeddings
    for i, p in enumerate(prompts):  # before any decoding, naming the prompt
        name = locations[i] if locations is not None else f"prompt {i + 1}"
        if len(p) == 0:
            raise InputError(f"{name}: the prompt encodes to no tokens")
        if len(p) + max_new_tokens > limit:
            raise InputError(
                f"{name}: the prompt's {len(p)} tokens plus --max-new-tokens {max_new_tokens} exceed "
                f"the model's {limit} positions"
            )
    base = jax.random.key(seed)
    eos = set(end_of_turn_ids(policy.tokenizer, policy.template))
    rows = min(batch_size, len(seqs))  # one batch shape per call: the last batch is filled with repeats
    with tqdm(total=len(seqs), desc="generate", unit="seq", disable=not progress, leave=False) as bar:
        for start in range(0, len(seqs), rows):
            chunk = seqs[start : start + rows]
            longest = max(len(prompts[i]) for i, _ in chunk)
            plen = -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET
            fill = [min(r, len(chunk) - 1) for r in range(rows)]
            ids = np.full((rows, plen), policy.pad_id, np.int32)
            seg = np.zeros((rows, plen), np.int32)
            for r, c in enumerate(fill):
                p = np.asarray(prompts[chunk[c][0]], np.int32)
                ids[r, plen - len(p) :], seg[r, plen - len(p) :] = p, 1
            pos = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
            keys = jax.vmap(lambda k: jax.random.fold_in(base, k))(jnp.asarray([start + c for c in fill], jnp.int32))
            fn = _program(policy, rows, plen, max_new_tokens, temperature, top_p, greedy)
            toks, _ = jax.device_get(fn(policy.params, ids, seg, pos, keys))
            for r, (i, j) in enumerate(chunk):
                row = toks[r]
                stop = next((k for k, t in enumerate(row) if int(t) in eos), None)
                out[i][j] = (row[: stop + 1] if stop is not None else row, stop is not None)
            bar.update(len(chunk))
    return out


def generate(
    policy: Any,
    conversations: Sequence[list[Message]],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
    greedy: bool = False,
    batch_size: int = 8,
    progress: bool = False,
    return_tokens: bool = False,
    locations: Optional[Sequence[str]] = None,
) -> Any:
    """n responses to each conversation (ending with the user's turn, optionally carrying a SteerLM label
    placed where the template puts it): texts [len(conversations)][n], or a :class:`Generation` (texts,
    token ids, finished) with ``return_tokens``. Deterministic for a seed, whatever ``batch_size``."""
    check_sampling(n, temperature, top_p, max_new_tokens, greedy)
    prompts = encode_prompts(policy.tokenizer, conversations, policy.template)
    res = generate_tokens(
        policy,
        prompts,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        greedy=greedy,
        batch_size=batch_size,
        progress=progress,
        locations=locations,
    )
    tok = policy.tokenizer
    texts = [
        [response_text(tok, tok.decode(ids, skip_special_tokens=False), policy.template) for ids, _ in per]
        for per in res
    ]
    if not return_tokens:
        return texts
    return Generation(texts, [[ids for ids, _ in per] for per in res], [[f for _, f in per] for per in res])
