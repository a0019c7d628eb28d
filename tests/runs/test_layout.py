"""The run- and sweep-folder layout: each file name is spelled in rm_jax.runs.layout only, and DONE is
written atomically."""

from __future__ import annotations

import ast
import json
import os

import pytest

from rm_jax.runs import layout
from tests.helpers import rm_jax_sources

NAMES = {
    v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and k != "RESERVED_IN_SWEEP"
} | set(layout.RESERVED_IN_SWEEP)
# Names read below runs/ (the engine's restore of a LoRA run reads lora_base.json) are spelled in their lowest
# reader and re-exported by layout.
BELOW_LAYOUT: dict[str, set[str]] = {os.path.join("models", "lora.py"): {"lora_base.json"}}


# module path (relative to rm_jax/) -> the string constants it holds (docstrings included: a docstring is never
# exactly a file name)
CONSTANTS = {
    path: {n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for path, src in rm_jax_sources().items()
}


@pytest.mark.parametrize("name", ["DONE", "eval.json", "metrics.jsonl"])
def test_the_acceptance_names_are_spelled_in_one_module(name):
    assert [m for m, consts in CONSTANTS.items() if name in consts] == [os.path.join("runs", "layout.py")]


def test_no_module_but_layout_spells_a_layout_name():
    found = {
        m: sorted(consts & NAMES - BELOW_LAYOUT.get(m, set()))
        for m, consts in CONSTANTS.items()
        if m != os.path.join("runs", "layout.py")
    }
    assert {m: names for m, names in found.items() if names} == {}


def test_done_is_one_json_line_and_marks_the_run(tmp_path):
    run = str(tmp_path / "run")
    assert not layout.is_done(run)
    layout.mark_done(run, {"steps": 3, "best_step": 2})
    assert layout.is_done(run)
    assert open(os.path.join(run, "DONE"), encoding="utf-8").read() == json.dumps({"steps": 3, "best_step": 2}) + "\n"


def test_a_crash_while_writing_done_leaves_no_done(tmp_path, monkeypatch):
    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        layout.mark_done(str(tmp_path), {"step": "sample"})
    assert os.listdir(tmp_path) == []  # neither DONE nor its temporary file


def test_paths_are_the_documented_ones(tmp_path):
    r = str(tmp_path)
    assert layout.predictions_path(r, "validation") == os.path.join(r, "predictions", "validation.jsonl")
    assert layout.plot_path(r, "pearson") == os.path.join(r, "plots", "pearson.png")
    for fn, name in [(layout.eval_path, "eval.json"), (layout.metrics_path, "metrics.jsonl")]:
        assert fn(r) == os.path.join(r, name)
    assert layout.done_path(r) == os.path.join(r, "DONE")
    for name in NAMES:  # the module docstring draws every name it spells
        assert name in layout.__doc__
