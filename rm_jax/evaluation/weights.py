"""Which reward weightings an evaluation reports, checked against the model's attributes."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS, WeightSpec, resolve_reward_weights
from rm_jax.core.errors import InputError

DEFAULT_WEIGHTS = "70b-rewardbench"


def default_weights(attributes: Sequence[str]) -> str:
    """``70b-rewardbench`` for the five HelpSteer2 attributes, ``1`` for a one-attribute model."""
    if tuple(attributes) == ATTRIBUTES:
        return DEFAULT_WEIGHTS
    if len(attributes) == 1:
        return "1"
    raise InputError(
        f"--weights: the model predicts {len(attributes)} attributes ({', '.join(attributes)}), "
        f"not the five HelpSteer2 ones; give {len(attributes)} comma-separated weights"
    )


def check_weights(spec: WeightSpec, attributes: Sequence[str]) -> np.ndarray:
    """The weight vector for ``attributes``, or an :class:`InputError` naming ``--weights``."""
    try:
        return resolve_reward_weights(spec, n_attributes=len(attributes))
    except ValueError as e:
        raise InputError(f"--weights: {e} (attributes: {', '.join(attributes)})") from None


def weight_sets(spec: WeightSpec, attributes: Sequence[str]) -> dict[str, np.ndarray]:
    """Every preset (when the attributes are HelpSteer2's five, in order) plus the user's weights,
    keyed by name (a preset's name, or ``w<v1>_<v2>...``)."""
    out: dict[str, np.ndarray] = {}
    if tuple(attributes) == ATTRIBUTES:
        out.update({name: np.asarray(w, np.float64) for name, w in REWARD_PRESETS.items()})
    out[_label(spec, attributes)] = check_weights(spec, attributes)
    return out


def _label(spec: WeightSpec, attributes: Sequence[str]) -> str:
    if isinstance(spec, str) and spec.strip() in REWARD_PRESETS:
        return spec.strip()
    if isinstance(spec, str) and spec.strip().endswith(".json"):  # a fitted W.json: named by its file
        return os.path.basename(spec.strip())[: -len(".json")]
    return "w" + "_".join(f"{x:g}" for x in check_weights(spec, attributes))


def weights_record(spec: WeightSpec, attributes: Sequence[str]) -> dict[str, Any]:
    w = check_weights(spec, attributes)
    return {
        "spec": spec if isinstance(spec, str) else [float(x) for x in spec],
        "label": _label(spec, attributes),
        "values": {a: float(x) for a, x in zip(attributes, w)},
    }
