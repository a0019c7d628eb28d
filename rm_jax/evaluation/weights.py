"""Which reward weightings an evaluation reports, matched to the model's attributes by name."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from rm_jax.core.attributes import (
    ATTRIBUTES,
    REWARD_HEAD,
    REWARD_PRESETS,
    WeightSpec,
    applicable_presets,
    is_gate_spec,
    resolve_reward_weights,
    unnamed_attributes,
)
from rm_jax.core.errors import InputError

DEFAULT_WEIGHTS = "70b-rewardbench"


def default_weights(attributes: Sequence[str]) -> str:
    """``70b-rewardbench`` for the five HelpSteer2 attributes (in any order), ``1`` for a one-attribute model
    (a separate ``reward_head`` output aside)."""
    attributes = [a for a in attributes if a != REWARD_HEAD]
    if sorted(attributes) == sorted(ATTRIBUTES):
        return DEFAULT_WEIGHTS
    if len(attributes) == 1:
        return "1"
    raise InputError(
        f"--weights: the model predicts {len(attributes)} attributes ({', '.join(attributes)}), "
        f"not the five HelpSteer2 ones; give a W.json or {len(attributes)} comma-separated weights"
    )


def check_weights(spec: WeightSpec, attributes: Sequence[str]) -> np.ndarray:
    """The weight vector for ``attributes`` (matched by name), or an :class:`InputError` naming ``--weights``."""
    try:
        return resolve_reward_weights(spec, attributes)
    except ValueError as e:
        raise InputError(f"--weights: {e}") from None


def weight_sets(spec: WeightSpec, attributes: Sequence[str]) -> dict[str, np.ndarray]:
    """Every preset (when the attributes are HelpSteer2's five, in any order: matched by name) plus the user's
    weights, keyed by name (a preset's name, or ``w<v1>_<v2>...``)."""
    out: dict[str, np.ndarray] = (
        dict(applicable_presets(attributes))
        if sorted(a for a in attributes if a != REWARD_HEAD) == sorted(ATTRIBUTES)
        else {}
    )
    out[_label(spec, attributes)] = check_weights(spec, attributes)
    return out


def _label(spec: WeightSpec, attributes: Sequence[str]) -> str:
    if isinstance(spec, str) and spec.strip() in REWARD_PRESETS:
        return spec.strip()
    if isinstance(spec, str) and spec.strip().endswith(".json"):  # a fitted W.json: named by its file
        return os.path.basename(spec.strip())[: -len(".json")]
    return "w" + "_".join(f"{x:g}" for x in check_weights(spec, attributes))


def weights_record(spec: WeightSpec, attributes: Sequence[str]) -> dict[str, Any]:
    """The weights an evaluation used, by attribute name; ``zero_unnamed``: the model attributes a W.json
    (or mapping) left out, which weigh 0. A prompt gate (weights per prompt) is recorded by its folder and
    its held-out accuracy."""
    if is_gate_spec(spec):
        from rm_jax.evaluation.gate import open_gate

        gate = open_gate(spec, attributes)
        return {
            "spec": str(spec),
            "label": gate.label,
            "kind": "gate",
            "source": f"gate {os.path.abspath(str(spec).strip())}",
            "values": None,
            "note": "weights per prompt: the gate on the RM's prompt embedding (weights fit --gate)",
            "heldout_accuracy": gate.meta.get("heldout_accuracy"),
        }
    w = check_weights(spec, attributes)
    if isinstance(spec, str):
        shown: Any = spec
    elif hasattr(spec, "items"):
        shown = {str(k): float(v) for k, v in spec.items()}  # type: ignore[union-attr]
    else:
        shown = [float(x) for x in spec]
    rec = {"spec": shown, "label": _label(spec, attributes), "values": {a: float(x) for a, x in zip(attributes, w)}}
    unnamed = unnamed_attributes(spec, attributes)
    if unnamed:
        rec["zero_unnamed"] = unnamed
    return rec
