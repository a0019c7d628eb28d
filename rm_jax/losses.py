"""Reward-model losses as (sum, count) pairs, so gradient accumulation over micro-batches is exact.

* ``mse``: masked, per-attribute-weighted squared error (weight 0 = attribute not trained).
* ``token_nll`` (causal LMs, ``task: sft``): negative log-likelihood of the response tokens, normalised
  by their count.
* ``bt``: -log sigmoid(r_c - r_r); ``margin_bt``: -log sigmoid(r_c - r_r - m);
  ``scaled_bt``: -m log sigmoid(r_c - r_r), with m the preference strength. r is the reward,
  a weighted combination of the attribute outputs. Optional centering adds c (r_c + r_r)^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mse_sums(scores: jax.Array, labels: jax.Array, mask: jax.Array, attr_weights: jax.Array) -> dict:
    """scores, labels, mask: [B, S, A]. Returns weighted sum and weight total, plus per-attribute sums."""
    err = (scores - labels) ** 2 * mask
    return {
        "num": jnp.sum(err * attr_weights),
        "den": jnp.sum(mask * attr_weights),
        "attr_sq": jnp.sum(err, axis=(0, 1)),
        "attr_n": jnp.sum(mask, axis=(0, 1)),
    }


def pair_sums(scores: jax.Array, batch: dict, reward_weights: jax.Array, kind: str, centering: float) -> dict:
    reward = (scores @ reward_weights).reshape(-1)  # [B*S]
    rc, rr = reward[batch["pair_chosen"]], reward[batch["pair_rejected"]]
    m, valid = batch["pair_strength"], batch["pair_mask"]
    diff = rc - rr
    if kind == "bt":
        loss = -jax.nn.log_sigmoid(diff)
    elif kind == "margin_bt":
        loss = -jax.nn.log_sigmoid(diff - m)
    elif kind == "scaled_bt":
        loss = -m * jax.nn.log_sigmoid(diff)
    else:
        raise ValueError(f"unknown pair loss {kind!r}")
    if centering:
        loss = loss + centering * (rc + rr) ** 2
    return {
        "num": jnp.sum(loss * valid),
        "den": jnp.sum(valid),
        "correct": jnp.sum((diff > 0) * valid),
    }


def token_nll_sums(logp: jax.Array, mask: jax.Array) -> dict:
    """logp, mask: [B, T] log-probabilities of the next-token targets and where they count."""
    return {"num": -jnp.sum(logp * mask), "den": jnp.sum(mask)}
