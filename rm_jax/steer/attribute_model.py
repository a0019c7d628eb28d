"""P(a|x,y) from a regression RM: how likely the requested attribute levels are given the RM's prediction.

The HelpSteer2 paper does not pin this down for a regression RM. rm_jax's model (configurable, documented
in docs/steerlm2.md): per attribute k with requested level l_k, the RM's prediction mu_k is read as the mean
of a normal with sigma_k = that attribute's validation RMSE, and

    P(a_k = l | x, y) = Phi((hi_l - mu_k) / sigma_k) - Phi((lo_l - mu_k) / sigma_k),

with the level's bin [l - 0.5, l + 0.5] and the end bins open (level 0: (-inf, 0.5], level 4: [3.5, inf)),
so the five levels' probabilities sum to one. log P(a|x,y) is the sum over the label's attributes
(independent given the prediction).

A categorical or ordinal RM (``model.head``, docs/heads.md) has its own level distribution: there
P(a_k = l | x, y) is the head's probability of level l (:func:`log_p_levels`), and no sigma is used.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy.special import log_ndtr

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.errors import InputError
from rm_jax.runs import layout

LEVELS = (0, 1, 2, 3, 4)


def log_level_probability(mu: np.ndarray, sigma: np.ndarray, level: np.ndarray) -> np.ndarray:
    """log P(level | mu, sigma) under the binned normal, elementwise, accurate in the far tails."""
    mu, sigma, level = np.broadcast_arrays(
        np.asarray(mu, np.float64), np.asarray(sigma, np.float64), np.asarray(level, np.float64)
    )
    lo = np.where(level <= LEVELS[0], -np.inf, level - 0.5)
    hi = np.where(level >= LEVELS[-1], np.inf, level + 0.5)
    a, b = (lo - mu) / sigma, (hi - mu) / sigma
    # Phi(b) - Phi(a) = Phi(-a) - Phi(-b): take the side where both lie in the lower tail, so the
    # subtraction happens between small numbers in log space instead of between two values near 1.
    upper = a > 0
    la = np.where(upper, log_ndtr(-b), log_ndtr(a))  # the smaller CDF
    lb = np.where(upper, log_ndtr(-a), log_ndtr(b))  # the larger CDF
    with np.errstate(divide="ignore"):
        return lb + np.log1p(-np.exp(la - lb))


def log_p_attributes(
    pred: np.ndarray, label: Mapping[str, int], sigma: Mapping[str, float], attributes: Sequence[str] = ATTRIBUTES
) -> np.ndarray:
    """log P(a|x,y) [N] for RM predictions ``pred`` [N, len(attributes)] and one label {name: level}."""
    total = np.zeros(pred.shape[0], np.float64)
    for name, level in label.items():
        j = list(attributes).index(name)
        total += log_level_probability(pred[:, j], sigma[name], level)
    return total


def log_p_levels(probs: np.ndarray, label: Mapping[str, int], attributes: Sequence[str] = ATTRIBUTES) -> np.ndarray:
    """log P(a|x,y) [N] from a distributional head's level probabilities ``probs`` [N, A, K] and one label
    {name: level}: the sum of log p(level) over the label's attributes, each floored at 1e-12 (as eval's nll)."""
    probs = np.asarray(probs, np.float64)
    total = np.zeros(probs.shape[0], np.float64)
    for name, level in label.items():
        j = list(attributes).index(name)
        total += np.log(np.maximum(probs[:, j, int(level)], 1e-12))
    return total


def validation_rmse(rm_path: str, attributes: Sequence[str] = ATTRIBUTES) -> Optional[dict]:
    """The RM's per-attribute validation RMSE: from a run folder's eval.json, or from the ``rm_jax``
    block an exported HF folder's config.json carries; None when neither has it."""
    for path, pick in (
        (layout.eval_path(rm_path), lambda d: {a: d["per_attribute"][a]["rmse"] for a in attributes}),
        (os.path.join(rm_path, "config.json"), lambda d: dict(d["rm_jax"]["validation_rmse"])),
    ):
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    out = pick(json.load(f))
                if all(out.get(a) for a in attributes):
                    return {a: float(out[a]) for a in attributes}
            except (KeyError, TypeError, ValueError):
                continue
    return None


def resolve_sigma(rm_path: str, sigma: Optional[object] = None, attributes: Sequence[str] = ATTRIBUTES) -> dict:
    """sigma per attribute: given (one number, a comma list / sequence of one per attribute, or a mapping),
    else the RM's validation RMSE; an error says how to give it when neither is there."""
    if sigma is None:
        found = validation_rmse(rm_path, attributes)
        if found is None:
            raise InputError(
                f"--sigma: {rm_path} records no per-attribute validation RMSE (an rm_jax run folder's "
                f"eval.json or an exported folder's config.json has it); give --sigma S or "
                f"--sigma s1,...,s{len(attributes)}"
            )
        return found
    if isinstance(sigma, Mapping):
        values = [sigma.get(a) for a in attributes]
    elif isinstance(sigma, str):
        values = [float(x) for x in sigma.split(",")] if sigma.strip() else []
    elif isinstance(sigma, (int, float)):
        values = [float(sigma)]
    else:
        values = list(sigma)
    if len(values) == 1:
        values = values * len(attributes)
    if len(values) != len(attributes) or any(v is None or not float(v) > 0 for v in values):
        raise InputError(
            f"--sigma: expected one positive number or {len(attributes)} ({', '.join(attributes)}), got {sigma!r}"
        )
    return {a: float(v) for a, v in zip(attributes, values)}
