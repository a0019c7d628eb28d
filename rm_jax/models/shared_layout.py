"""Per-token facts of the shared-prompt layout (``rm_jax.data.prefix_sharing``) that every attention kernel's
mask reads: which prompt a token may read, its index in the unshared layout, where its keys begin. Its own
module so the kernels (``attention``, ``pallas_shared``, ``pallas_shared_tpu``) import it without importing
each other."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["shared_spans", "shared_token_info"]


def shared_spans(segment_ids: jax.Array) -> tuple[jax.Array, ...]:
    """(prompt id, virtual index, own segment's first token, prompt's first token, prompt's end) per token;
    the last two are only meaningful where the prompt id is > 0. See :func:`shared_token_info`."""
    b, t = segment_ids.shape
    idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    is_prompt = (segment_ids < 0) & (segment_ids >= -t)
    group = jax.lax.cummax(jnp.where(is_prompt, -segment_ids, 0), axis=1)
    group = jnp.where(segment_ids > 0, group, 0)  # only responses read another segment's tokens
    # prompt -g -> t - g, pads and responses -> t + id, ids below -t -> 2t + 1 (segment ids are <= t)
    code = jnp.where(segment_ids < -t, 2 * t + 1, jnp.clip(segment_ids + t, 0, 2 * t))
    n = 2 * t + 2
    seg_min = jax.vmap(lambda i, c: jax.ops.segment_min(i, c, num_segments=n))(idx, code)
    seg_max = jax.vmap(lambda i, c: jax.ops.segment_max(i, c, num_segments=n))(idx, code)
    own_first = jnp.take_along_axis(seg_min, code, axis=1)
    prompt = t - group  # the prompt's code (only read where group > 0)
    prompt_first = jnp.take_along_axis(seg_min, prompt, axis=1)
    prompt_end = jnp.take_along_axis(seg_max, prompt, axis=1) + 1
    shared = group > 0
    vidx = jnp.where(shared, idx - (own_first - prompt_end), idx)
    return group, vidx, own_first, prompt_first, prompt_end


def shared_token_info(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per token of a shared-prompt row (``rm_jax.data.prefix_sharing``): (the prompt id it may read, its
    virtual index, the first key it can see).

    In a shared row a prompt's tokens carry the negative id ``-g`` (g = the slot of its group's first
    response) and its responses the positive slot ids that follow it; plain conversations come first in
    the row. A response token reads the latest prompt before it (a running max), and its virtual index is
    its index minus the tokens of earlier siblings between its prompt and it: its index in the unshared
    layout, so a sliding window measures the same distances. Its first visible key is its prompt's first
    token; every other token's is the first token of its segment. Rows without negative ids get
    (0, index, segment start): the unshared layout. Ids below -T (the kernel's block padding) are no prompt
    and share one code, as pads of their own."""
    group, vidx, own_first, prompt_first, _ = shared_spans(segment_ids)
    return group, vidx, jnp.where(group > 0, prompt_first, own_first)
