"""Config choices and ranges: declared on the dataclass fields, checked by the one validator, reported as one
line naming the key through the real CLI."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import typing
from typing import Annotated, Literal, Union

import pytest

from rm_jax.cli import main
from rm_jax.core import config as config_module
from rm_jax.core.config import ConfigError, Range, RunConfig, build_config, load_config
from tests.helpers import TINY, rm_jax_sources


def _fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """(dotted key, annotation with extras) for every leaf field of the run config."""
    out = []
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        if dataclasses.is_dataclass(tp):
            out += _fields(tp, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", tp))
    return out


def _unwrap_optional(tp: typing.Any) -> typing.Any:
    if typing.get_origin(tp) is Union:
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:  # Optional[X]; other unions (data.share_prompts: bool or "auto") stay whole
            (tp,) = rest
    return tp


LITERAL_FIELDS = [
    (k, typing.get_args(_unwrap_optional(t))) for k, t in _fields() if typing.get_origin(_unwrap_optional(t)) is Literal
]
RANGE_FIELDS = [
    (k, typing.get_args(t)[0], typing.get_args(t)[1])
    for k, t in ((k, _unwrap_optional(t)) for k, t in _fields())
    if typing.get_origin(t) is Annotated
]


def _leaf(cfg: RunConfig, key: str) -> typing.Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_share_prompts_takes_auto_or_a_bool():
    from rm_jax.core.config import RunConfig, from_dict
    from rm_jax.core.errors import ConfigError

    for v in ("auto", True, False):
        assert from_dict(RunConfig, {"data": {"share_prompts": v}}).data.share_prompts == v
    with pytest.raises(ConfigError, match="share_prompts"):
        from_dict(RunConfig, {"data": {"share_prompts": "yes"}})


def test_the_tables_cover_the_fields_the_issue_names():
    keys = {k for k, _ in LITERAL_FIELDS}
    assert {"task", "model.dtype", "model.remat", "model.attention", "model.matmul_precision", "data.kind"} <= keys
    assert {"data.padding_side", "data.overlength", "data.on_bad_row", "train.schedule", "loss.type"} <= keys
    assert {"train.lr", "train.batch_rows", "train.grad_accum", "data.seq_len", "data.fraction"} <= {
        k for k, _, _ in RANGE_FIELDS
    }


@pytest.mark.parametrize("key,allowed", LITERAL_FIELDS, ids=[k for k, _ in LITERAL_FIELDS])
def test_every_choice_field_rejects_a_value_outside_its_annotation(key, allowed):
    with pytest.raises(ConfigError) as e:
        build_config({}, [f"{key}=not_a_choice"])
    assert f"{key}: 'not_a_choice' is not one of {', '.join(allowed)}" in str(e.value)
    for value in allowed:  # and accepts each value it declares (the field check alone: from_dict)
        assert _leaf(config_module.from_dict(RunConfig, _nest(key, value)), key) == value


def _nest(key: str, value: typing.Any) -> dict:
    out: dict = {}
    node = out
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def _outside(r: Range) -> typing.Any:
    return r.low if r.low_open else (r.low - 1 if r.low is not None else r.high + 1)


@pytest.mark.parametrize("key,base,r", RANGE_FIELDS, ids=[k for k, _, _ in RANGE_FIELDS])
def test_every_range_field_rejects_a_value_outside_and_keeps_its_bounds(key, base, r):
    bad = _outside(r)
    with pytest.raises(ConfigError) as e:
        config_module.from_dict(RunConfig, _nest(key, base(bad)))
    assert str(e.value) == f"{key} must be {r}, got {base(bad)!r}"
    edge = r.low if r.low is not None and not r.low_open else r.high if r.high is not None and not r.high_open else None
    if edge is not None:
        assert _leaf(config_module.from_dict(RunConfig, _nest(key, base(edge))), key) == edge


@pytest.mark.parametrize(
    "override,line",
    [
        ("train.lr=-1", "train.lr must be greater than 0, got -1.0"),
        ("train.batch_rows=0", "train.batch_rows must be at least 1, got 0"),
        ("train.grad_accum=0", "train.grad_accum must be at least 1, got 0"),
        ("data.fraction=1.5", "data.fraction must be in (0, 1], got 1.5"),
        ("data.seq_len=4", "data.seq_len must be at least 8, got 4"),
        ("train.b2=1", "train.b2 must be in [0, 1), got 1.0"),
        ("model.remat=everything", "model.remat: 'everything' is not one of none, full, dots, dots_no_batch"),
        ("model.matmul_precision=fast", "model.matmul_precision: 'fast' is not one of default, high, highest"),
        ("lora.dropout=1.0", "lora.dropout must be in [0, 1), got 1.0"),
        ("lora.dropout=-0.1", "lora.dropout must be in [0, 1), got -0.1"),
        ("lora.dropout=0.1", "lora.dropout applies to LoRA adapters: set lora.rank > 0 (or model.adapter)"),
        ("loss.pair_weight=-1", "loss.pair_weight must be at least 0, got -1.0"),
        ("loss.pair_target=separate", "loss.pair_target=separate needs loss.pair_weight > 0"),
        ("loss.pair_target=both", "loss.pair_target: 'both' is not one of attributes, separate"),
    ],
)
def test_a_bad_value_is_one_line_from_the_cli(override, line, capsys, tmp_path):
    assert main(["train", TINY, f"run_dir={tmp_path / 'run'}", override]) == 1
    err = capsys.readouterr().err
    assert err == f"rm-jax train: error: {TINY}: {line}\n"
    assert not (tmp_path / "run").exists()  # rejected before the run folder (or anything compiled)


def test_no_second_list_of_allowed_values_in_rm_jax():
    """A tuple/list/set literal spelling a choice annotation's values (all, or all but one: "auto" aside),
    anywhere but config.py, would be a second list that can drift from the annotation."""
    choices = [set(a) for _, a in LITERAL_FIELDS]
    found = []
    for path, src in rm_jax_sources().items():
        if path == os.path.join("core", "config.py"):
            continue
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                strs = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(strs) >= 2 and any(strs <= c and len(strs) >= len(c) - (len(c) > 2) for c in choices):
                    found.append(f"{path}:{node.lineno} {sorted(strs)}")
    assert found == []


def test_optimizer_state_memory_is_device_or_host():
    assert RunConfig().train.optimizer_state_memory == "device"
    got = config_module.from_dict(RunConfig, {"train": {"optimizer_state_memory": "host"}})
    assert got.train.optimizer_state_memory == "host"
    with pytest.raises(ConfigError, match="train.optimizer_state_memory: 'disk' is not one of device, host"):
        build_config({}, ["train.optimizer_state_memory=disk"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.kind=pairs", "loss.type=bt"], "task rm with data.kind=helpsteer (data.kind=pairs, task rm)"),
        (["task=sft"], "task rm with data.kind=helpsteer (data.kind=helpsteer, task sft)"),
        (
            ["model.attributes=[correctness]", "loss.attribute_weights=[1]", "eval.reward_weights=[1]"],
            "orders a prompt's responses by helpfulness: not in model.attributes",
        ),
    ],
)
def test_pair_weight_needs_helpsteer_rows_of_a_reward_model(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(TINY, ["loss.pair_weight=1", *overrides])
    load_config(TINY, ["loss.pair_weight=1", "loss.pair_target=separate"])  # the supported shape loads


@pytest.mark.parametrize("key", ["eval.reward_weights", "loss.reward_weights"])
def test_a_prompt_gate_in_a_run_config_is_refused_never_read_as_a_constant(tmp_path, key):
    """A gate is fitted on one trained RM; a run trains its own, so a config naming one stops with one line."""
    (tmp_path / "G").mkdir()
    (tmp_path / "G" / "gate.json").write_text("{}")
    value = f"[{tmp_path / 'G'}]" if key == "eval.reward_weights" else str(tmp_path / "G")
    with pytest.raises(ConfigError, match=f"{re.escape(key)}: .*G' is a prompt gate .*--weights GATE_DIR"):
        load_config(TINY, [f"{key}={value}"])
