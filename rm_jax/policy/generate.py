"""Sampling from a policy with a KV cache, in one jitted program per batch shape.

A batch of prompts is left-padded to a common length (so every row writes the cache at the same slot),
prefilled in one forward pass, then decoded a token at a time inside a ``lax.while_loop`` that stops
when every row has emitted EOS or ``max_new_tokens`` are out. Shapes are bucketed (prompt length to a
multiple of 32, the cache to prompt + max_new_tokens), so a stream of prompts compiles a handful of
programs. Randomness is per sequence: sequence i of a call uses ``fold_in(key(seed), i)`` and its step
number, so results do not depend on how sequences are batched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from rm_jax.conversation import Message, encode_prompts, end_of_turn_ids, response_text
from rm_jax.errors import InputError
from rm_jax.models import CausalLM, init_cache
from rm_jax.sharding import activate

PROMPT_BUCKET = 32


@dataclass
class Generation:
    texts: list[list[str]]  # per conversation, n response texts
    tokens: list[list[np.ndarray]]  # their token ids (through EOS when it was emitted)
    finished: list[list[bool]]  # EOS emitted before max_new_tokens


def sample_token(logits: jax.Array, key: jax.Array, temperature: float, top_p: float, greedy: bool) -> jax.Array:
    """One token per row from logits [B, V]: argmax (greedy), else nucleus sampling at ``temperature``:
    the smallest set of most likely tokens whose probability reaches ``top_p`` (the most likely token
    always stays in), renormalised."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        keep_sorted = before < top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return jax.vmap(lambda k, lg: jax.random.categorical(k, lg))(key, logits).astype(jnp.int32)


def _program(policy: Any, rows: int, prompt_len: int, max_new: int, temperature: float, top_p: float,
             greedy: bool) -> Any:
    key_ = ("generate", rows, prompt_len, max_new, temperature, top_p, greedy)
    if key_ in policy.compiled:
        return policy.compiled[key_]
    cfg, mesh = policy.cfg, policy.mesh
    model = CausalLM(cfg)
    eos = jnp.asarray(end_of_turn_ids(policy.tokenizer), jnp.int32)
    pad = policy.pad_id

    def run(params: Any, ids: jax.Array, seg: jax.Array, pos: jax.Array, keys: jax.Array) -> tuple:
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
                logits, cache = model.apply({"params": params}, tok[:, None], jnp.ones((rows, 1), jnp.int32),
                                            nxt[:, None], cache=cache)
                return t + 1, out, cache.advanced(1), logits, done, nxt + 1

            t, out, _, _, done, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), out, cache, logits, done, nxt))
            return out, done

    policy.compiled[key_] = jax.jit(run)
    return policy.compiled[key_]


def generate_tokens(policy: Any, prompts: Sequence[np.ndarray], *, n: int = 1, temperature: float = 1.0,
                    top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0, greedy: bool = False,
                    batch_size: int = 8, progress: bool = False) -> list[list[tuple[np.ndarray, bool]]]:
    """n continuations of each prompt's token ids: per prompt, n (ids through EOS, finished) pairs."""
    if n < 1:
        raise InputError(f"--n: must be at least 1, got {n}")
    if max_new_tokens < 1:
        raise InputError(f"--max-new-tokens: must be at least 1, got {max_new_tokens}")
    greedy = greedy or temperature == 0
    if not greedy and not (temperature > 0 and 0 < top_p <= 1):
        raise InputError(f"sampling needs temperature > 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")
    seqs = [(i, j) for i in range(len(prompts)) for j in range(n)]
    base = jax.random.key(seed)
    limit = policy.cfg.max_position_embeddings
    out: list[list[Any]] = [[None] * n for _ in prompts]
    with tqdm(total=len(seqs), desc="generate", unit="seq", disable=not progress, leave=False) as bar:
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start:start + batch_size]
            longest = max(len(prompts[i]) for i, _ in chunk)
            plen = -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET
            if plen + max_new_tokens > limit:
                raise InputError(f"a prompt of {longest} tokens plus --max-new-tokens {max_new_tokens} exceeds the "
                                 f"model's {limit} positions")
            rows = batch_size  # one shape for every batch, the last one padded with repeats
            ids = np.full((rows, plen), policy.pad_id, np.int32)
            seg = np.zeros((rows, plen), np.int32)
            for r in range(rows):
                i, _ = chunk[min(r, len(chunk) - 1)]
                p = np.asarray(prompts[i], np.int32)
                ids[r, plen - len(p):], seg[r, plen - len(p):] = p, 1
            pos = np.maximum(np.cumsum(seg, axis=1) - 1, 0).astype(np.int32)
            keys = jax.vmap(lambda k: jax.random.fold_in(base, k))(
                jnp.asarray([start + min(r, len(chunk) - 1) for r in range(rows)], jnp.int32))
            fn = _program(policy, rows, plen, max_new_tokens, float(temperature), float(top_p), bool(greedy))
            toks, done = jax.device_get(fn(policy.params, ids, seg, pos, keys))
            eos = set(end_of_turn_ids(policy.tokenizer))
            for r, (i, j) in enumerate(chunk):
                row = toks[r]
                stop = next((k for k, t in enumerate(row) if int(t) in eos), None)
                out[i][j] = (row[: stop + 1] if stop is not None else row, stop is not None)
            bar.update(len(chunk))
    return out


def generate(policy: Any, conversations: Sequence[list[Message]], *, n: int = 1, temperature: float = 1.0,
             top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0, greedy: bool = False, batch_size: int = 8,
             progress: bool = False, return_tokens: bool = False) -> Any:
    """n responses to each conversation (ending with the user's turn, optionally carrying a SteerLM
    label): texts [len(conversations)][n], or a :class:`Generation` with ``return_tokens``."""
    prompts = encode_prompts(policy.tokenizer, conversations, policy.template)
    res = generate_tokens(policy, prompts, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                          seed=seed, greedy=greedy, batch_size=batch_size, progress=progress)
    tok = policy.tokenizer
    texts = [[response_text(tok, tok.decode(ids, skip_special_tokens=False), policy.template) for ids, _ in per]
             for per in res]
    if not return_tokens:
        return texts
    return Generation(texts, [[ids for ids, _ in per] for per in res], [[f for _, f in per] for per in res])
