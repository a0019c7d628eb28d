"""The five HelpSteer2 attributes and the reward-weight presets that turn them into one reward.

Preset values are from the HelpSteer2 paper and model card (see docs/evaluation.md).

Reward weights are matched to a model's attributes by name (a model may list its attributes in any order):

* a preset weighs HelpSteer2's attributes by name: every model attribute must be one of the five, and every
  attribute the preset weighs non-zero must be one the model predicts;
* a W.json (``{"weights": {attribute: value}}``, as ``rm-jax weights fit`` writes it) or a mapping
  ``{attribute: value}`` gives weights by name: a name the model lacks is an error; a model attribute the file
  does not name gets weight 0 (:func:`unnamed_attributes` says which, for reports);
* a list of numbers (or the string ``w1,...,wn``) is positional, in the model's own attribute order, and must
  have one value per attribute.

A model trained with ``loss.pair_target: separate`` has one more output beside its attributes, named
``reward_head`` (:data:`REWARD_HEAD`): ``--weights reward_head`` scores with it alone; every other spec is
matched to the attributes as above and gives it weight 0.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np

ATTRIBUTES: tuple[str, ...] = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")

# Values in ATTRIBUTES order; apply them by name with preset_weights / resolve_reward_weights.
REWARD_PRESETS: dict[str, tuple[float, ...]] = {
    "340b-rewardbench": (0.3, 0.74, 0.46, 0.47, -0.33),
    "70b-rewardbench": (0.65, 0.8, 0.45, 0.55, -0.4),
    "70b-card": (0.65, 0.8, 0.45, 0.0, 0.0),
    "goodness": (0.65, 0.8, 0.45, 0.0, 0.0),
    "helpfulness-only": (1.0, 0.0, 0.0, 0.0, 0.0),
}

WeightSpec = Union[str, Sequence[float], Mapping[str, float]]
# The output name of a separate scalar reward (loss.pair_target: separate), and the weight spec that picks it.
REWARD_HEAD = "reward_head"


def preset_weights(name: str) -> dict[str, float]:
    """A preset as ``{HelpSteer2 attribute: weight}``."""
    return dict(zip(ATTRIBUTES, REWARD_PRESETS[name]))


def resolve_reward_weights(spec: WeightSpec, attributes: Sequence[str], allow_file: bool = True) -> np.ndarray:
    """The weight vector [len(attributes)] (float64, in ``attributes``' order) of a preset name, a W.json path
    (``allow_file``), a mapping ``{attribute: value}``, a comma-separated string or a sequence of numbers
    (positional). See the module docstring for how each is matched to ``attributes``.

    Raises ValueError (one line) naming the bad preset, file, value or attribute names.
    """
    return _resolve(spec, attributes, allow_file)[0]


def unnamed_attributes(spec: WeightSpec, attributes: Sequence[str], allow_file: bool = True) -> list[str]:
    """The model attributes a by-name spec (W.json or mapping) does not name and so weighs 0; [] otherwise."""
    return _resolve(spec, attributes, allow_file)[1]


def weights_note(spec: WeightSpec, attributes: Sequence[str]) -> Optional[str]:
    """One line for the console / reports when a by-name spec leaves model attributes at weight 0."""
    unnamed = unnamed_attributes(spec, attributes)
    if not unnamed:
        return None
    return f"reward weights {_show(spec)} do not name {', '.join(unnamed)}: weight 0"


def check_weight_spec(spec: WeightSpec, allow_file: bool = True) -> None:
    """What can be checked before the model's attributes are known: a known preset, numbers that parse, a
    readable W.json. Raises ValueError like :func:`resolve_reward_weights`."""
    _values(spec, allow_file)


def _resolve(spec: WeightSpec, attributes: Sequence[str], allow_file: bool) -> tuple[np.ndarray, list[str]]:
    if isinstance(attributes, (int, np.integer)) or isinstance(attributes, str):
        raise TypeError("resolve_reward_weights: pass the model's attribute names, not a count")
    attributes = list(attributes)
    if isinstance(spec, str) and spec.strip() == REWARD_HEAD:
        if REWARD_HEAD not in attributes:
            raise ValueError(
                f"reward weights {REWARD_HEAD!r}: the model has no separate reward output (it is trained with "
                f"loss.pair_target: separate); model outputs: {', '.join(attributes)}"
            )
        return np.asarray([float(a == REWARD_HEAD) for a in attributes]), []
    if REWARD_HEAD in attributes:  # every other spec weighs the attributes only
        rest = [a for a in attributes if a != REWARD_HEAD]
        w, unnamed = _resolve(spec, rest, allow_file)
        return np.insert(w, attributes.index(REWARD_HEAD), 0.0), unnamed
    kind, values = _values(spec, allow_file)
    unnamed: list[str] = []
    if kind == "positional":
        w = np.asarray(values, dtype=np.float64)
        if w.ndim != 1 or w.shape[0] != len(attributes):
            raise ValueError(
                f"reward weights {_show(spec)} have {w.size} values; expected {len(attributes)}, one per attribute "
                f"in the model's order ({', '.join(attributes)})"
            )
    else:
        assert isinstance(values, dict)
        if kind == "preset":
            missing = [a for a, x in values.items() if x != 0 and a not in attributes]
            extra = [a for a in attributes if a not in values]
            if missing or extra:
                raise ValueError(
                    f"reward-weight preset {_show(spec)} weighs HelpSteer2's attributes by name: "
                    + "; ".join(
                        ([f"the model lacks {', '.join(missing)}"] if missing else [])
                        + ([f"the preset does not weigh the model's {', '.join(extra)}"] if extra else [])
                    )
                    + f" (model attributes: {', '.join(attributes)})"
                )
        else:
            missing = [a for a in values if a not in attributes]
            if missing:
                raise ValueError(
                    f"reward weights {_show(spec)} name {', '.join(missing)}, which the model does not predict "
                    f"(model attributes: {', '.join(attributes)})"
                )
            unnamed = [a for a in attributes if a not in values]
        w = np.asarray([values.get(a, 0.0) for a in attributes], dtype=np.float64)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"reward weights {_show(spec)} contain a non-finite value")
    return w, unnamed


GATE_FILE = "gate.json"


def is_gate_spec(spec: object) -> bool:
    """Whether a weight spec names a prompt-gate folder (``rm-jax weights fit --gate``: one weight vector per
    prompt, not a constant). Consumers that can apply one check this first (rm_jax.evaluation.gate)."""
    return isinstance(spec, str) and os.path.isfile(os.path.join(spec.strip(), GATE_FILE))


def _values(spec: WeightSpec, allow_file: bool) -> tuple[str, Union[list[float], dict[str, float]]]:
    """("preset" | "named" | "positional", the values) of a spec, before any model is involved."""
    if isinstance(spec, str):
        key = spec.strip()
        if is_gate_spec(key):  # never read as a constant: a consumer that cannot apply a gate stops here
            raise ValueError(
                f"reward weights {spec!r} are a prompt gate (weights fit --gate: weights per prompt, computed from "
                "the RM's prompt embedding); this consumer needs one constant weight vector"
            )
        if key in REWARD_PRESETS:
            return "preset", preset_weights(key)
        if key == REWARD_HEAD:
            return "named", {REWARD_HEAD: 1.0}
        if allow_file and key.endswith(".json"):
            return "named", fitted_weights(key)
        if "," in key or _is_float(key):
            try:
                return "positional", [float(x) for x in key.split(",")]
            except ValueError:
                raise ValueError(
                    f"reward weights {spec!r}: not a preset name and not a comma-separated list of numbers"
                ) from None
        raise ValueError(
            f"unknown reward-weight preset {spec!r}; known presets: {', '.join(sorted(REWARD_PRESETS))} "
            f"(or give one comma-separated number per attribute, in the model's order)"
        )
    if isinstance(spec, Mapping):
        return "named", _named_numbers(dict(spec), f"reward weights {_show(spec)}")
    try:
        return "positional", [float(x) for x in spec]
    except (TypeError, ValueError):
        raise ValueError(f"reward weights {_show(spec)}: not a list of numbers") from None


def _named_numbers(w: dict, where: str) -> dict[str, float]:
    if not w:
        raise ValueError(f"{where}: names no attribute")
    bad = [k for k, v in w.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise ValueError(f"{where}: weights.{bad[0]} is not a number")
    return {str(k): float(v) for k, v in w.items()}


def _show(spec: WeightSpec) -> str:
    if isinstance(spec, str):
        return repr(spec.strip())
    if isinstance(spec, Mapping):
        return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"
    try:
        return "[" + ", ".join(f"{float(x):g}" for x in spec) + "]"
    except (TypeError, ValueError):
        return repr(spec)


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def fitted_weights(path: str) -> dict[str, float]:
    """The weights of a W.json (``{"weights": {attribute: value}}``) by attribute name, as the file gives them."""
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
    return _named_numbers(w, f"reward weights file {path}")


def applicable_presets(attributes: Sequence[str]) -> dict[str, np.ndarray]:
    """Every preset that applies to ``attributes`` by name, as a vector in their order."""
    out = {}
    for name in REWARD_PRESETS:
        try:
            out[name] = resolve_reward_weights(name, attributes)
        except ValueError:
            continue
    return out


def eval_weightings(specs: Sequence[WeightSpec], attributes: Sequence[str]) -> list[WeightSpec]:
    """The ``eval.reward_weights`` a run scores: all of them for a model with HelpSteer2's five attributes
    (in any order); for other attributes, presets are left out (they weigh HelpSteer2's five) and the rest kept.
    Checking each against the attributes is the caller's (config checking raises on a bad one)."""
    if sorted(attributes) == sorted(ATTRIBUTES):
        return list(specs)
    return [s for s in specs if not (isinstance(s, str) and s.strip() in REWARD_PRESETS)]


def weights_source(spec: WeightSpec) -> str:
    """Where a weight spec's values come from, for reports: ``preset``, ``file <abs path>`` or ``values``."""
    if isinstance(spec, str) and spec.strip() in REWARD_PRESETS:
        return "preset"
    if isinstance(spec, str) and spec.strip().endswith(".json"):
        return f"file {os.path.abspath(spec.strip())}"
    return "values"
