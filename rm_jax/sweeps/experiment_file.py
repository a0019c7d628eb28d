"""Experiment files: parse and validate one, and expand it into named runs (``rm-jax sweep`` runs them:
:mod:`rm_jax.sweeps.runner`).

An experiment file is YAML (full format in docs/experiments.md)::

    name: demo                       # optional; default: the file stem
    sweep_dir: runs/demo             # optional; default: runs/<file stem>
    base_config: recipe.yaml         # optional: a plain run config (relative to this file) as the base
    base: {...}                      # a run config, exactly as for ``rm-jax train`` (over base_config)
    sweep:                           # grid axes (their product); dotted config keys
      data.fraction: [0.1, 0.3, 1.0]                    # a list: values named automatically
      loss.attribute_weights:                           # a mapping: named values
        all: [1, 1, 1, 1, 1]
        helpfulness_only: [1, 0, 0, 0, 0]
      eval.reward_weights: [340b-rewardbench, 70b-rewardbench, helpfulness-only]   # evaluation only
    zip:                             # axes stepped together (one group, or a list of groups)
      train.lr: [1.0e-3, 3.0e-3]
      train.seed: [0, 1]
    members:                         # named variants (each crossed with the grid)
      regression: {loss.attribute_weights: [1, 0, 0, 0, 0]}
      scaled_bt:
        after: regression            # trained after it; ``{run:regression}`` = its run folder
        data.kind: pairs
        model.init_from: "{run:regression}"

A plain run config (no base/sweep/zip/members) is a sweep of one run. ``eval.reward_weights`` never
starts a training: every trained run is scored under each of its
values from the saved ``predictions/validation.jsonl``. The sweep folder holds ``plan.json`` (what
``rm-jax report`` rebuilds the table from), one run folder per training, ``results.csv``,
``results.md`` and PNG plots (:mod:`rm_jax.sweeps.report`).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import os
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional, Sequence

from rm_jax.core.attributes import resolve_reward_weights
from rm_jax.core.config import (
    ConfigError,
    RunConfig,
    _yaml_floats,
    build_config,
    load_yaml,
    parse_override,
    refuse_gate,
    to_dict,
)
from rm_jax.runs.layout import RESERVED_IN_SWEEP

EXPERIMENT_KEYS = ("name", "description", "sweep_dir", "base_config", "base", "sweep", "zip", "members")
EVAL_AXES = ("eval.reward_weights",)  # axes scored from saved predictions: never another training
PLAN_VERSION = 1
# Config sections whose change makes an existing run folder hold a different training.
TRAINING_SECTIONS = ("model", "data", "train", "loss")
# ... except these, which change speed or logging but not what is trained.
NOT_TRAINING = {
    "model.attention",
    "model.attention_block",
    "model.matmul_precision",
    "model.remat",
    "model.scan_layers",
    "train.log_every",
    "train.eval_rows",
    "data.on_bad_row",
}
_PREFIX = {
    "data.fraction": "frac",
    "train.lr": "lr",
    "train.seed": "seed",
    "model.seed": "mseed",
    "data.subset_seed": "sseed",
    "data.max_prompts": "prompts",
    "train.max_steps": "steps",
    "train.epochs": "ep",
    "train.batch_rows": "bs",
    "data.seq_len": "len",
    "train.warmup_steps": "warmup",
    "train.weight_decay": "wd",
    "loss.centering": "center",
}
_PLACEHOLDER = re.compile(r"\{(sweep_dir|run:([A-Za-z0-9_.+=-]+))\}")
_NAME_OK = re.compile(r"^[A-Za-z0-9_.+=-]+$")


# ---------------------------------------------------------------- file format


@dataclass
class Axis:
    key: str
    values: list
    labels: list  # readable names of the values (mapping keys, or made from the values)
    named: bool  # the file gave a mapping name -> value


@dataclass
class Member:
    name: Optional[str]
    overrides: dict  # dotted key -> value
    after: list
    step: Optional[str] = None  # a pipeline step instead of a training run (STEP_ARGS)
    args: dict = field(default_factory=dict)


# Pipeline steps a member may run instead of a training (SteerLM 2.0 iterations): step -> (required
# args, optional args). They run through rm_jax.sweeps.pipeline_steps; ``{run:NAME}`` in args is that member's folder.
STEP_ARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # rm-jax lm generate: prompts (+ attributes) -> samples.jsonl
    "sample": (
        ("policy", "input"),
        (
            "n",
            "temperature",
            "top_p",
            "max_new_tokens",
            "seed",
            "targets",
            "prompts",
            "batch_size",
            "split",
            "devices",
            "dtype",
        ),
    ),
    # rm-jax steer label: samples -> groups.jsonl (NeMo-Aligner's SteerLM 2.0 format)
    "label": (
        ("policy", "rm", "input"),
        (
            "sft",
            "sigma",
            "batch_size",
            "skip_empty",
            "skip_unfinished",
            "devices",
            "dtype",
            "equal_groups",
            "on_bad_row",
        ),
    ),
    # rm-jax steer eval: a policy's attribute-following error, one results row per evaluated policy
    "steer_eval": (
        ("policy", "rm", "input"),
        (
            "iteration",
            "targets",
            "k",
            "prompts",
            "temperature",
            "top_p",
            "max_new_tokens",
            "seed",
            "split",
            "batch_size",
            "devices",
            "dtype",
        ),
    ),
}


@dataclass
class Experiment:
    path: str
    name: str
    sweep_dir: str
    base: dict
    grid: list  # [Axis] crossed with each other
    zips: list  # [[Axis, ...]] stepped together, crossed with the grid
    evals: Optional[Axis]  # eval.reward_weights
    members: list  # [Member]
    overrides: list = field(default_factory=list)


def known_key(key: str) -> Optional[str]:
    """None if ``key`` (dotted) names a RunConfig field, else an error message with a suggestion."""
    parts = key.split(".")
    cls: Any = RunConfig
    for i, p in enumerate(parts):
        if cls is dict:
            return None  # free-form mapping (model.arch): checked when the member config is built
        if not is_dataclass(cls):
            return f"{'.'.join(parts[:i])!r} is not a section"
        names = {f.name: f for f in fields(cls)}
        if p not in names:
            prefix = ".".join(parts[:i])
            cands = [f"{prefix}.{n}" if prefix else n for n in names]
            close = difflib.get_close_matches(key, _all_keys(), n=1) or difflib.get_close_matches(
                ".".join(parts[: i + 1]), cands, n=1
            )
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"unknown config key {key!r}{hint}"
        hints = typing.get_type_hints(cls)
        tp = hints[p]
        cls = tp if is_dataclass(tp) or tp is dict else None
    return None


def _all_keys(cls: Any = RunConfig, prefix: str = "") -> list:
    out = []
    for f in fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        k = f"{prefix}{f.name}"
        out += _all_keys(tp, k + ".") if is_dataclass(tp) else [k]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "_".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return hashlib.sha1(json.dumps(v, sort_keys=True).encode()).hexdigest()[:6]
    return str(v)


def sanitize(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.+=-]+", "_", s).strip("._")
    return s or "x"


def attribute_weights_label(w: Sequence[float], attributes: Sequence[str]) -> str:
    """``all`` (all ones), ``<attribute>_only`` (one-hot), else ``aw<w1>_<w2>...``."""
    try:
        w = [float(x) for x in w]
    except (TypeError, ValueError):
        return sanitize(_fmt(w))
    if w and all(x == 1 for x in w):
        return "all"
    nz = [i for i, x in enumerate(w) if x != 0]
    if len(nz) == 1 and w[nz[0]] == 1 and nz[0] < len(attributes):
        return f"{attributes[nz[0]]}_only"
    return "aw" + "_".join(f"{x:g}" for x in w)


def reward_weights_label(spec: Any) -> str:
    if isinstance(spec, str):
        return sanitize(spec.strip())
    try:
        return "w" + "_".join(f"{float(x):g}" for x in spec)
    except (TypeError, ValueError):
        return sanitize(_fmt(spec))


def value_label(key: str, v: Any, attributes: Sequence[str]) -> str:
    last = key.split(".")[-1]
    if key == "loss.attribute_weights":
        return attribute_weights_label(v, attributes)
    if key in EVAL_AXES:
        return reward_weights_label(v)
    if key == "loss.type":
        return sanitize(str(v))
    if key in ("model.path", "model.init_from", "model.tokenizer", "data.train", "data.validation") and isinstance(
        v, str
    ):
        return sanitize(os.path.basename(v.rstrip("/")) or v)
    return sanitize(_PREFIX.get(key, last) + _fmt(v))


def _is_seed_axis(key: str) -> bool:
    return key.split(".")[-1].endswith("seed")


def _parse_axis(key: Any, spec: Any, where: str, attributes: Sequence[str]) -> Axis:
    if not isinstance(key, str):
        raise ConfigError(f"{where}: axis {key!r}: axis names are dotted config keys like data.fraction")
    err = known_key(key)
    if err:
        raise ConfigError(f"{where}: axis {key!r}: {err}")
    if key == "run_dir":
        raise ConfigError(f"{where}: run_dir cannot be an axis: the sweep names each run's folder")
    if isinstance(spec, dict):
        if not spec:
            raise ConfigError(f"{where}: axis {key!r} has no values")
        labels = [str(k) for k in spec]
        bad = [n for n in labels if not _NAME_OK.match(n)]
        if bad:
            raise ConfigError(
                f"{where}: axis {key!r}: value name {bad[0]!r} may hold only letters, digits and _ . + = -"
            )
        axis = Axis(key, list(spec.values()), labels, True)
    elif isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: axis {key!r} has no values")
        axis = Axis(key, list(spec), [value_label(key, v, attributes) for v in spec], False)
    else:
        raise ConfigError(f"{where}: axis {key!r}: expected a list of values or a mapping name: value, got {spec!r}")
    dup = [lab for lab in axis.labels if axis.labels.count(lab) > 1]
    if dup:
        raise ConfigError(
            f"{where}: axis {key!r}: two values share the name {dup[0]!r}, so two members would "
            f"write to the same folder (give the axis as a mapping name: value to name them)"
        )
    return axis


def _nest(flat: dict, where: str) -> dict:
    """{'a.b': 1, 'c': {'d': 2}} -> nested dict (dotted keys expanded)."""
    out: dict = {}
    for k, v in flat.items():
        if not isinstance(k, str):
            raise ConfigError(f"{where}: key {k!r} is not a string")
        _set(out, k, v, where)
    return out


def _set(data: dict, key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{where}: {key!r}: {p!r} is not a section")
        node = nxt
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = _merge(node[last], _nest(value, where))
    else:
        node[last] = copy.deepcopy(value)


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _flat_keys(d: dict, prefix: str = "") -> list:
    out = []
    for k, v in d.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict) and full != "model.arch" and not full.startswith("model.arch."):
            out += _flat_keys(v, full + ".")
        else:
            out.append(full)
    return out


def looks_like_experiment(data: dict) -> bool:
    """An experiment file (base/sweep/zip/members at the top) rather than a plain run config."""
    return isinstance(data, dict) and any(k in data for k in ("base", "base_config", "sweep", "zip", "members"))


def load_experiment(path: str, overrides: Sequence[str] = ()) -> Experiment:
    """Parse and check an experiment file. ``overrides``: ``key=value`` applied to ``base``;
    ``sweep_dir=DIR``; ``sweep.KEY=[v1, v2]`` replaces (or adds) a grid axis."""
    raw = load_yaml(path)
    where = path
    if not looks_like_experiment(raw):  # a plain run config: a sweep of one run, scored under its presets
        raw = {"base": raw}
    unknown = [k for k in raw if k not in EXPERIMENT_KEYS]
    if unknown:
        hint = ""
        if all(isinstance(k, str) for k in unknown) and any(k in {f.name for f in fields(RunConfig)} for k in unknown):
            hint = " (a run config's keys go under 'base:'; plain run configs are for rm-jax train)"
        raise ConfigError(f"{where}: unknown experiment key {unknown[0]!r}; known: {', '.join(EXPERIMENT_KEYS)}{hint}")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = str(raw.get("name") or stem)
    sweep_dir = raw.get("sweep_dir") or os.path.join("runs", stem)
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: base: expected a run config mapping")
    base = _nest(base, f"{where}: base")
    if raw.get("base_config"):
        base = _merge(_load_base_config(str(raw["base_config"]), path), base)
    sweep = raw.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise ConfigError(f"{where}: sweep: expected a mapping axis -> values")
    sweep = dict(sweep)

    base_overrides = []
    for item in overrides:
        path_parts, value = parse_override(item)
        key = ".".join(path_parts)
        if key == "sweep_dir":
            sweep_dir = str(value)
        elif path_parts[0] == "sweep" and len(path_parts) > 1:
            sweep[".".join(path_parts[1:])] = _yaml_floats(value)
        else:
            base_overrides.append((key, _yaml_floats(value), item))
    if not isinstance(sweep_dir, str) or not sweep_dir:
        raise ConfigError(f"{where}: sweep_dir: expected a folder path")

    attributes = list(base.get("model", {}).get("attributes") or RunConfig().model.attributes)
    for key, value, item in base_overrides:
        if key in ("model.attributes",):
            attributes = list(value)

    grid, evals = [], None
    for key, spec in sweep.items():
        axis = _parse_axis(key, spec, f"{where}: sweep", attributes)
        if key in EVAL_AXES:
            evals = axis
        else:
            grid.append(axis)

    zraw = raw.get("zip") or []
    groups = [zraw] if isinstance(zraw, dict) else zraw
    if not isinstance(groups, list):
        raise ConfigError(f"{where}: zip: expected a mapping of axes (or a list of such mappings)")
    zips = []
    for gi, group in enumerate(groups):
        if not isinstance(group, dict) or not group:
            raise ConfigError(f"{where}: zip group {gi}: expected a non-empty mapping of axes")
        axes = [_parse_axis(k, v, f"{where}: zip", attributes) for k, v in group.items()]
        lengths = {a.key: len(a.values) for a in axes}
        if len(set(lengths.values())) > 1:
            raise ConfigError(
                f"{where}: zip axes must have the same number of values; got "
                + ", ".join(f"{k}: {n}" for k, n in lengths.items())
            )
        for a in axes:
            if a.key in EVAL_AXES:
                raise ConfigError(f"{where}: zip: {a.key} only changes evaluation; put it under sweep:")
        zips.append(axes)

    axis_keys = [a.key for a in grid] + [a.key for g in zips for a in g] + ([evals.key] if evals else [])
    dup = [k for k in axis_keys if axis_keys.count(k) > 1]
    if dup:
        raise ConfigError(f"{where}: axis {dup[0]!r} appears twice (sweep and zip)")
    for key, value, item in base_overrides:
        err = known_key(key)
        if err:
            raise ConfigError(f"override {item!r}: {err}")
        if key in axis_keys:
            raise ConfigError(f"override {item!r}: {key} is a sweep axis; replace its values with sweep.{key}=[...]")
        _set(base, key, value, f"override {item!r}")
    if "run_dir" in base:
        base.pop("run_dir")  # the sweep names each run's folder

    members = _parse_members(raw.get("members"), where, axis_keys)
    return Experiment(
        path=path,
        name=name,
        sweep_dir=sweep_dir,
        base=base,
        grid=grid,
        zips=zips,
        evals=evals,
        members=members,
        overrides=list(overrides),
    )


def _load_base_config(ref: str, exp_path: str) -> dict:
    """A plain run config named by ``base_config`` (relative to the experiment file, else to the cwd)."""
    cands = [ref] if os.path.isabs(ref) else [os.path.join(os.path.dirname(os.path.abspath(exp_path)), ref), ref]
    found = next((c for c in cands if os.path.isfile(c)), None)
    if found is None:
        raise ConfigError(f"{exp_path}: base_config {ref!r} not found (looked in {', '.join(cands)})")
    data = load_yaml(found)
    if looks_like_experiment(data):
        raise ConfigError(f"{exp_path}: base_config {ref!r} is an experiment file; it must be a plain run config")
    return _nest(data, f"{exp_path}: base_config {ref}")


def _check_step(step: Any, args: Any, rest: dict, where: str) -> None:
    if step not in STEP_ARGS:
        raise ConfigError(f"{where}: step {step!r} is not one of {', '.join(STEP_ARGS)}")
    if rest:
        raise ConfigError(f"{where}: a step member takes args:, not config keys ({', '.join(map(str, rest))})")
    if not isinstance(args, dict):
        raise ConfigError(f"{where}: args: expected a mapping")
    required, optional = STEP_ARGS[step]
    for k in args:
        if k not in required + optional:
            close = difflib.get_close_matches(str(k), required + optional, n=1)
            raise ConfigError(
                f"{where}: step {step} has no argument {k!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; it takes {', '.join(required + optional)}"
            )
    missing = [k for k in required if k not in args]
    if missing:
        raise ConfigError(f"{where}: step {step} needs args: {', '.join(missing)}")


def _parse_members(raw: Any, where: str, axis_keys: list) -> list:
    if raw is None:
        return [Member(None, {}, [])]
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: members: expected a mapping name -> config overrides")
    out = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not _NAME_OK.match(name):
            raise ConfigError(f"{where}: member name {name!r} may hold only letters, digits and _ . + = -")
        spec = dict(spec or {})
        after = spec.pop("after", [])
        after = [after] if isinstance(after, str) else list(after or [])
        step, args = spec.pop("step", None), spec.pop("args", None) or {}
        if step is not None:
            _check_step(step, args, spec, f"{where}: members.{name}")
        elif args:
            raise ConfigError(
                f"{where}: members.{name}: args: belongs to a step member (step: {' | '.join(STEP_ARGS)})"
            )
        nested = _nest(spec, f"{where}: members.{name}")
        for key in _flat_keys(nested):
            err = known_key(key)
            if err:
                raise ConfigError(f"{where}: members.{name}: {err}")
            if key in axis_keys:
                raise ConfigError(f"{where}: members.{name} sets {key}, which is also a sweep axis")
            if key == "run_dir":
                raise ConfigError(f"{where}: members.{name}: run_dir is set by the sweep ({{sweep_dir}}/<run name>)")
        deps = set(after) | set(m.group(2) for m in _PLACEHOLDER.finditer(json.dumps([nested, args])) if m.group(2))
        for d in sorted(deps):
            if d not in raw:
                raise ConfigError(
                    f"{where}: members.{name}: depends on {d!r}, which is not a member "
                    f"(members: {', '.join(map(str, raw))})"
                )
            if d == name:
                raise ConfigError(f"{where}: members.{name} depends on itself")
        out.append(Member(name, nested, sorted(deps), step, dict(args)))
    # order: file order, each member after its dependencies
    ordered, done, by_name = [], set(), {m.name: m for m in out}

    def visit(m: Member, stack: tuple) -> None:
        if m.name in done:
            return
        if m.name in stack:
            raise ConfigError(f"{where}: members: dependency cycle {' -> '.join(stack + (m.name,))}")
        for d in m.after:
            visit(by_name[d], stack + (m.name,))
        done.add(m.name)
        ordered.append(m)

    for m in out:
        visit(m, ())
    return ordered


# ---------------------------------------------------------------- expansion into runs


@dataclass
class Run:
    index: int
    name: str
    run_dir: str
    member: Optional[str]
    config: dict  # the resolved RunConfig as a dict
    labels: dict  # axis key -> value label, for every axis with more than one value
    evals: list  # [(label, spec)]: the reward weightings it is scored under
    after: list  # names of runs that must finish first
    step: Optional[str] = None  # a pipeline step member (STEP_ARGS) instead of a training
    args: dict = field(default_factory=dict)


@dataclass
class Plan:
    experiment: Experiment
    runs: list
    attributes: list
    varying: list  # axis keys with more than one value, in name order


def _placeholders(obj: Any, sweep_dir: str, run_dirs: dict, where: str) -> Any:
    if isinstance(obj, dict):
        return {k: _placeholders(v, sweep_dir, run_dirs, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_placeholders(v, sweep_dir, run_dirs, where) for v in obj]
    if isinstance(obj, str):

        def sub(m: re.Match) -> str:
            if m.group(1) == "sweep_dir":
                return sweep_dir
            if m.group(2) not in run_dirs:
                raise ConfigError(
                    f"{where}: {m.group(0)} is allowed only in the members: section (the run of "
                    f"that member at the same grid point)"
                )
            return run_dirs[m.group(2)]

        return _PLACEHOLDER.sub(sub, obj)
    return obj


def expand(exp: Experiment) -> Plan:
    """Every run of the experiment, each config built and validated (nothing is trained)."""
    where = exp.path
    grid_dims = [[(a, i) for i in range(len(a.values))] for a in exp.grid]
    zip_dims = [[[(a, i) for a in g] for i in range(len(g[0].values))] for g in exp.zips]
    points = []
    for combo in itertools.product(*grid_dims, *zip_dims):
        point = []
        for c in combo:
            point += c if isinstance(c, list) else [c]
        points.append(point)
    axes = exp.grid + [a for g in exp.zips for a in g]
    varying = [a.key for a in axes if len(a.values) > 1]
    varying = [k for k in varying if not _is_seed_axis(k)] + [k for k in varying if _is_seed_axis(k)]
    attributes = list(exp.base.get("model", {}).get("attributes") or RunConfig().model.attributes)
    if exp.evals is not None:
        evals = list(zip(exp.evals.labels, exp.evals.values))
    else:
        specs = exp.base.get("eval", {}).get("reward_weights", RunConfig().eval.reward_weights)
        evals = [(reward_weights_label(s), s) for s in (specs if isinstance(specs, list) else [specs])]
    for label, spec in evals:
        refuse_gate(spec, f"{where}: eval.reward_weights {label!r}")  # a gate weighs only the RM it was fitted on
        try:
            resolve_reward_weights(spec, attributes)  # matched by attribute name
        except ValueError as e:
            raise ConfigError(f"{where}: eval.reward_weights {label!r}: {e}") from None

    named = len(exp.members) > 1 or exp.members[0].name is not None
    runs: list[Run] = []
    seen: dict[str, str] = {}
    for member in exp.members:
        for pi, point in enumerate(points):
            labels = {a.key: a.labels[i] for a, i in point if a.key in varying}
            parts = ([member.name] if named else []) + [labels[k] for k in varying if k in labels]
            name = "-".join(parts) if parts else sanitize(exp.name)
            desc = f"member {member.name!r}" if member.name else "run"
            desc += " " + " ".join(f"{a.key}={a.labels[i]}" for a, i in point) if point else ""
            if name in RESERVED_IN_SWEEP or name.startswith("results."):
                raise ConfigError(
                    f"{where}: run name {name!r} ({desc}) is taken by the sweep's own files; "
                    f"rename that member or axis value"
                )
            if name in seen:
                raise ConfigError(
                    f"{where}: two members would write to the same folder "
                    f"{os.path.join(exp.sweep_dir, name)}: {seen[name]} and {desc}"
                )
            seen[name] = desc
            data = _merge(exp.base, member.overrides)
            for a, i in point:
                _set(data, a.key, a.values[i], where)
            data.setdefault("eval", {})["reward_weights"] = [s for _, s in evals]
            run_dir = os.path.join(exp.sweep_dir, name)
            data["run_dir"] = run_dir
            runs.append(
                Run(
                    len(runs),
                    name,
                    run_dir,
                    member.name,
                    data,
                    labels,
                    evals,
                    after=list(member.after),
                    step=member.step,
                    args=dict(member.args),
                )
            )
    # resolve dependencies and {run:...} placeholders at the same grid point
    n_points = len(points)
    member_pos = {m.name: k for k, m in enumerate(exp.members)}
    for run in runs:
        k, pi = divmod(run.index, n_points)
        dep_runs = {d: runs[member_pos[d] * n_points + pi] for d in run.after}
        run.after = [r.name for r in dep_runs.values()]
        dirs = {d: r.run_dir for d, r in dep_runs.items()}
        run.config = _placeholders(run.config, exp.sweep_dir, dirs, where)
        run.args = _placeholders(run.args, exp.sweep_dir, dirs, where)
        cfg = build_config(run.config, where=f"{where}: {run.name}")
        check_arch(cfg, f"{where}: {run.name}")
        run.config = to_dict(cfg)
    return Plan(exp, runs, attributes, varying)


def check_arch(cfg: RunConfig, where: str) -> None:
    """model.arch keys of a from-scratch model (train checks them only when it starts)."""
    if cfg.model.path or cfg.model.init_from or not cfg.model.arch:
        return
    from rm_jax.models.llama import DecoderConfig

    known = {f.name for f in fields(DecoderConfig)} - {"dtype", "remat", "scan_layers", "attention", "num_labels"}
    for k in cfg.model.arch:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            hint = f" (did you mean 'model.arch.{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown config key 'model.arch.{k}'{hint}")


# ---------------------------------------------------------------- plan.json


def plan_record(plan: Plan) -> dict:
    exp = plan.experiment
    return {
        "version": PLAN_VERSION,
        "experiment": os.path.abspath(exp.path),
        "name": exp.name,
        "overrides": exp.overrides,
        "attributes": plan.attributes,
        "varying": plan.varying,
        "axes": [
            {"key": a.key, "labels": a.labels, "values": a.values, "kind": kind}
            for kind, group in (
                ("grid", exp.grid),
                ("zip", [a for g in exp.zips for a in g]),
                ("eval", [exp.evals] if exp.evals else []),
            )
            for a in group
        ],
        "named_members": [m.name for m in exp.members if m.name],
        "runs": [
            {
                "index": r.index,
                "name": r.name,
                "member": r.member,
                "run_dir": _rel(r.run_dir, exp.sweep_dir),
                "labels": r.labels,
                "evals": [[lab, spec] for lab, spec in r.evals],
                "after": r.after,
                "config": r.config,
                "step": r.step,
                "args": r.args,
            }
            for r in plan.runs
        ],
    }


def _rel(path: str, sweep_dir: str) -> str:
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(sweep_dir))
    return path if rel.startswith("..") else rel
