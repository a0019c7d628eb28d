"""Losses as (sum, count) pairs, so gradient accumulation over micro-batches is exact.

* ``mse``: masked, per-attribute-weighted squared error (weight 0 = attribute not trained).
* distributional heads (``model.head`` categorical | ordinal, :func:`level_sums`): the same pointwise loss
  slot becomes the masked, per-attribute-weighted cross-entropy of the head's level distribution against
  the label's target distribution (a one-hot level, a split between neighbours, smoothed or LDL-Gaussian).
* ``token_nll`` (causal LMs, ``task: sft``): negative log-likelihood of the response tokens, normalised
  by their count.
* ``steerlm2`` (``task: steerlm2``): SteerLM 2.0's importance-weighted policy loss on groups of sampled
  responses (:func:`steerlm2_sums`).
* ``bt``: -log sigmoid(r_c - r_r); ``margin_bt``: -log sigmoid(r_c - r_r - m);
  ``scaled_bt``: -m log sigmoid(r_c - r_r), with m the preference strength. r is the reward,
  a weighted combination of the attribute outputs. Optional centering adds c (r_c + r_r)^2.
"""

from __future__ import annotations

from typing import get_args

import jax
import jax.numpy as jnp

from rm_jax.core.config import Steerlm2Normalisation
from rm_jax.models.heads import expected_level, log_level_probs, target_distribution


def mse_sums(scores: jax.Array, labels: jax.Array, mask: jax.Array, attr_weights: jax.Array) -> dict:
    """scores, labels, mask: [B, S, A]. Returns weighted sum and weight total, plus per-attribute sums."""
    err = (scores - labels) ** 2 * mask
    return {
        "num": jnp.sum(err * attr_weights),
        "den": jnp.sum(mask * attr_weights),
        "attr_sq": jnp.sum(err, axis=(0, 1)),
        "attr_n": jnp.sum(mask, axis=(0, 1)),
    }


def level_sums(
    raw: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    attr_weights: jax.Array,
    kind: str,
    smoothing: float = 0.0,
    soft: str = "none",
    sigma: float = 1.0,
) -> dict:
    """Cross-entropy -sum_k q_k log p_k of a categorical (logits [B, S, A, K]) or ordinal (z [B, S, A, K-1])
    head; labels, mask [B, S, A]. An ordinal head's p is the cumulative-link likelihood of the level (not
    CORAL's K-1 independent binary losses): the loss is then the NLL of the very distribution that E[y],
    ``--probs``, eval's nll/ece and SteerLM's log P(a|x,y) read. ``attr_sq`` / ``attr_n`` hold E[y]'s squared
    error, so training logs per-attribute MSE for every head."""
    logp = log_level_probs(raw, kind)
    q = target_distribution(labels, logp.shape[-1], smoothing, soft, sigma)
    ce = -jnp.sum(q * logp, axis=-1) * mask
    err = (expected_level(raw, kind) - labels) ** 2 * mask
    return {
        "num": jnp.sum(ce * attr_weights),
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


STEERLM2_NORMALISATIONS = get_args(Steerlm2Normalisation)


def steerlm2_sums(
    seq_logp: jax.Array,
    resp_tokens: jax.Array,
    w: jax.Array,
    logq_prime: jax.Array,
    group: jax.Array,
    normalisation: str = "group_mean_length",
) -> dict:
    """SteerLM 2.0 on the response slots of a micro-batch (every array [B, S], flattened here).

    ``seq_logp``: log Q_theta(y_i|a,x), the sum of response-token log-probs under the current parameters;
    ``w``: the group's importance weights softmax(log P(a|x,y) + log P(y|x) - log Q'(y|a,x)) (from the data);
    ``logq_prime``: log Q'(y|a,x) of the sampling policy; ``group``: the slot's group in this micro-batch
    (-1 = empty slot). Per group g the baseline is b = softmax(log Q_theta - log Q'), with no gradient
    through it, its loss is l_g = -sum_i (w_i - b_i) log Q_theta(y_i|a,x), and L_g = mean_i |y_i| its mean
    response length in tokens. The step's loss (``num`` / ``den``, summed over micro-batches) is

    * ``group_mean_length`` (NeMo-Aligner's, the default): mean_g l_g / L_g, each group divided by its own
      mean length, then averaged over the step's groups (``num`` = sum_g l_g / L_g, ``den`` = group count);
    * ``batch_mean_length`` (rm_jax before): sum_g l_g / sum_g L_g, one divisor for the step, so a group of
      long responses weighs more (mean lengths 10 and 100: both groups scaled by 1/110, not 1/10 and 1/100).

    Also returns, for logging, the sums over groups of KL(w || b) and of the effective sample size of w,
    ESS = 1 / sum_i w_i^2 (n for uniform weights, 1 when one response holds all the weight), the smallest
    ESS, and the group count.
    """
    if normalisation not in STEERLM2_NORMALISATIONS:
        raise ValueError(f"steerlm2 normalisation {normalisation!r}: not one of {', '.join(STEERLM2_NORMALISATIONS)}")
    seq_logp, w = seq_logp.reshape(-1), w.reshape(-1)
    logq_prime, tokens = logq_prime.reshape(-1), resp_tokens.reshape(-1).astype(jnp.float32)
    n = seq_logp.shape[0]
    valid = group.reshape(-1) >= 0
    g = jnp.where(valid, group.reshape(-1), n)  # empty slots go to a segment of their own
    logits = jnp.where(valid, jax.lax.stop_gradient(seq_logp) - logq_prime, 0.0)
    top = jax.ops.segment_max(logits, g, num_segments=n + 1)
    e = jnp.where(valid, jnp.exp(logits - top[g]), 0.0)
    b = e / jnp.maximum(jax.ops.segment_sum(e, g, num_segments=n + 1)[g], 1e-30)
    count = jax.ops.segment_sum(valid.astype(jnp.float32), g, num_segments=n + 1)
    mean_tokens = jax.ops.segment_sum(jnp.where(valid, tokens, 0.0), g, num_segments=n + 1) / jnp.maximum(count, 1.0)
    term = jnp.where(valid, (w - b) * seq_logp, 0.0)
    present = count[:n] > 0
    if normalisation == "group_mean_length":
        num = -jnp.sum(jnp.where(valid, term / jnp.maximum(mean_tokens[g], 1.0), 0.0))
        den = jnp.sum(present).astype(jnp.float32)
    else:
        num, den = -jnp.sum(term), jnp.sum(mean_tokens[:n])
    kl = jnp.sum(jnp.where(valid & (w > 0), w * (jnp.log(jnp.maximum(w, 1e-30)) - jnp.log(jnp.maximum(b, 1e-30))), 0.0))
    ess = 1.0 / jnp.maximum(jax.ops.segment_sum(jnp.where(valid, w * w, 0.0), g, num_segments=n + 1)[:n], 1e-30)
    return {
        "num": num,
        "den": den,
        "kl_sum": kl,
        "groups": jnp.sum(present),
        "ess_sum": jnp.sum(jnp.where(present, ess, 0.0)),
        "ess_min": jnp.min(jnp.where(present, ess, jnp.inf)),
    }
