"""The five HelpSteer2 attributes and the reward-weight presets that turn them into one reward.

Preset values are from the HelpSteer2 paper and model card (see docs/evaluation.md).
"""

from __future__ import annotations

import json
import os
from typing import Sequence, Union

import numpy as np

ATTRIBUTES: tuple[str, ...] = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")

REWARD_PRESETS: dict[str, tuple[float, ...]] = {
    "340b-rewardbench": (0.3, 0.74, 0.46, 0.47, -0.33),
    "70b-rewardbench": (0.65, 0.8, 0.45, 0.55, -0.4),
    "70b-card": (0.65, 0.8, 0.45, 0.0, 0.0),
    "goodness": (0.65, 0.8, 0.45, 0.0, 0.0),
    "helpfulness-only": (1.0, 0.0, 0.0, 0.0, 0.0),
}

WeightSpec = Union[str, Sequence[float]]


def resolve_reward_weights(
    spec: WeightSpec, n_attributes: int = len(ATTRIBUTES), allow_file: bool = True
) -> np.ndarray:
    """A preset name, a comma-separated string of floats, a sequence of floats, or (``allow_file``) the path
    of a W.json written by ``rm-jax weights fit`` -> float64 [n].

    Raises ValueError naming the bad preset, the bad file or the wrong length.
    """
    if isinstance(spec, str):
        key = spec.strip()
        if key in REWARD_PRESETS:
            values: Sequence[float] = REWARD_PRESETS[key]
        elif allow_file and key.endswith(".json"):
            values = fitted_weights(key)
        elif "," in key or _is_float(key):
            try:
                values = [float(x) for x in key.split(",")]
            except ValueError:
                raise ValueError(
                    f"reward weights {spec!r}: not a preset name and not a comma-separated list of numbers"
                ) from None
        else:
            raise ValueError(
                f"unknown reward-weight preset {spec!r}; known presets: {', '.join(sorted(REWARD_PRESETS))} "
                f"(or give {n_attributes} comma-separated numbers)"
            )
    else:
        values = list(spec)
    w = np.asarray(values, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n_attributes:
        raise ValueError(f"reward weights {spec!r} have {w.size} values; expected {n_attributes} (one per attribute)")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"reward weights {spec!r} contain a non-finite value")
    return w


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def fitted_weights(path: str) -> list[float]:
    """The weight vector of a W.json (``{"weights": {attribute: value}}``), in HelpSteer2's attribute order
    when it names those five attributes, else in the file's order."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except OSError as e:
        raise ValueError(f"reward weights file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"reward weights file {path}: not JSON ({e})") from None
    w = obj.get("weights") if isinstance(obj, dict) else None
    if not isinstance(w, dict) or not w:
        raise ValueError(f'reward weights file {path}: needs a "weights" object {{attribute: value}}')
    bad = [k for k, v in w.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise ValueError(f"reward weights file {path}: weights.{bad[0]} is not a number")
    names = list(ATTRIBUTES) if set(w) == set(ATTRIBUTES) else list(w)
    return [float(w[a]) for a in names]


def weights_source(spec: WeightSpec) -> str:
    """Where a weight spec's values come from, for reports: ``preset``, ``file <abs path>`` or ``values``."""
    if isinstance(spec, str) and spec.strip() in REWARD_PRESETS:
        return "preset"
    if isinstance(spec, str) and spec.strip().endswith(".json"):
        return f"file {os.path.abspath(spec.strip())}"
    return "values"
