"""Attribute heads: what the numbers after the final norm mean, in one place (docs/heads.md).

* ``regression``: one number per attribute, the attribute score itself.
* ``categorical``: ``K = label_levels`` logits per attribute; p = softmax.
* ``ordinal``: a cumulative-link head: one score f_a(h) per attribute and ordered thresholds
  theta_{a,0} < ... < theta_{a,K-2}; z_{a,k} = f_a(h) - theta_{a,k} = logit P(y > k). The thresholds are
  theta_0 + cumsum(softplus(.)) of free parameters, so P(y > k) never increases with k, for every input.

Every consumer of attributes reads the expected level E[y] (:func:`expected_level`): sum_k k p_k for a
categorical head, sum_k sigmoid(z_k) for an ordinal one (E[y] = sum_{k>=0} P(y > k) for y in 0..K-1), and
the score for a regression head. Pure jax.numpy: the model, the loss and the scorer all call these.
"""

from __future__ import annotations

from typing import get_args

import jax
import jax.numpy as jnp
import numpy as np

from rm_jax.core.config import AttributeHead

ATTRIBUTE_HEADS = get_args(AttributeHead)
# Free threshold parameters start at these gaps (softplus(x) = 1): thresholds -1.5, -0.5, 0.5, ... around 0.
_SOFTPLUS_INV_1 = float(np.log(np.expm1(1.0)))


def head_width(kind: str, levels: int) -> int:
    """Outputs per attribute in the head's raw form (and in an exported HF folder's ``num_labels`` / A)."""
    return {"regression": 1, "categorical": levels, "ordinal": levels - 1}[kind]


def thresholds_init(key: jax.Array, shape: tuple[int, ...], dtype: object = jnp.float32) -> jax.Array:
    """Free threshold parameters [A, K-1]: the first is theta_0, the rest the softplus-inverse of the gaps;
    thresholds start at -(K-2)/2, ..., (K-2)/2 (unit gaps), centred on a fresh head's f = 0."""
    del key
    k = shape[-1]
    raw = jnp.full(shape, _SOFTPLUS_INV_1, dtype)
    return raw.at[..., 0].set(-(k - 1) / 2.0)


def ordinal_thresholds(raw: jax.Array) -> jax.Array:
    """Ordered thresholds [A, K-1] from the free parameters: theta_0 + cumsum of softplus gaps (> 0)."""
    gaps = jax.nn.softplus(raw[..., 1:])
    return jnp.concatenate([raw[..., :1], raw[..., :1] + jnp.cumsum(gaps, axis=-1)], axis=-1)


def thresholds_to_raw(theta: np.ndarray) -> np.ndarray:
    """The inverse of :func:`ordinal_thresholds` (numpy, float64 inside): thresholds must strictly increase."""
    theta = np.asarray(theta, np.float64)
    gaps = np.diff(theta, axis=-1)
    if np.any(gaps <= 0):
        raise ValueError("ordinal thresholds must strictly increase along each attribute")
    inv = gaps + np.log(-np.expm1(-gaps))  # log(expm1(g)), stable for large g
    return np.concatenate([theta[..., :1], inv], axis=-1).astype(np.float32)


def log_level_probs(raw: jax.Array, kind: str) -> jax.Array:
    """log p over the K levels [..., A, K] from raw head outputs (categorical logits [..., A, K] or ordinal
    z [..., A, K-1])."""
    if kind == "categorical":
        return jax.nn.log_softmax(raw.astype(jnp.float32), axis=-1)
    z = raw.astype(jnp.float32)
    # p_0 = 1 - s(z_0), p_{K-1} = s(z_{K-2}), between: s(a) - s(b) = s(a) s(-b) (1 - e^{-(a - b)}) with a >= b
    first = jax.nn.log_sigmoid(-z[..., :1])
    last = jax.nn.log_sigmoid(z[..., -1:])
    a, b = z[..., :-1], z[..., 1:]
    gap = jnp.maximum(a - b, 1e-30)
    mid = jax.nn.log_sigmoid(a) + jax.nn.log_sigmoid(-b) + jnp.log(-jnp.expm1(-gap))
    return jnp.concatenate([first, mid, last], axis=-1)


def level_probs(raw: jax.Array, kind: str) -> jax.Array:
    """Level probabilities [..., A, K] (rows sum to 1)."""
    if kind == "categorical":
        return jax.nn.softmax(raw.astype(jnp.float32), axis=-1)
    s = jax.nn.sigmoid(raw.astype(jnp.float32))  # P(y > k), non-increasing in k
    one, zero = jnp.ones_like(s[..., :1]), jnp.zeros_like(s[..., :1])
    return jnp.concatenate([one, s], axis=-1) - jnp.concatenate([s, zero], axis=-1)


def expected_level(raw: jax.Array, kind: str) -> jax.Array:
    """E[y] [..., A]: the attribute score every consumer reads."""
    if kind == "regression":
        return raw
    if kind == "categorical":
        p = jax.nn.softmax(raw.astype(jnp.float32), axis=-1)
        return jnp.sum(p * jnp.arange(raw.shape[-1], dtype=jnp.float32), axis=-1)
    return jnp.sum(jax.nn.sigmoid(raw.astype(jnp.float32)), axis=-1)


def target_distribution(
    labels: jax.Array, levels: int, smoothing: float = 0.0, soft: str = "none", sigma: float = 1.0
) -> jax.Array:
    """Target distribution [..., K] for labels [...] (clipped to 0..K-1).

    ``soft="none"``: an integer label is one-hot; a non-integer label y splits between its two neighbouring
    levels, (1 - frac(y)) on floor(y) and frac(y) on floor(y) + 1 (so the target's mean is y).
    ``soft="gaussian"``: LDL-style, the N(y, sigma^2) mass of each level's unit bin, the end bins taking the
    tails. ``smoothing`` then mixes in the uniform distribution: (1 - eps) q + eps / K."""
    y = jnp.clip(labels.astype(jnp.float32), 0.0, levels - 1.0)
    k = jnp.arange(levels, dtype=jnp.float32)
    if soft == "gaussian":
        edges = jnp.arange(levels + 1, dtype=jnp.float32) - 0.5
        cdf = jax.scipy.stats.norm.cdf((edges - y[..., None]) / sigma)
        cdf = cdf.at[..., 0].set(0.0).at[..., -1].set(1.0)
        q = cdf[..., 1:] - cdf[..., :-1]
    else:
        q = jnp.maximum(0.0, 1.0 - jnp.abs(k - y[..., None]))  # linear split between neighbours
    if smoothing:
        q = (1.0 - smoothing) * q + smoothing / levels
    return q
