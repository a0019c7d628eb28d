"""Experiment files, ``rm-jax sweep`` and ``rm-jax report``.

Real trainings use a 1-layer, 32-wide model on a slice of the bundled sample for a few steps,
with a persistent XLA compilation cache shared by every training in this module (in-process
and in subprocesses), so most runs skip compilation. Tests that only need run folders use a
fake trainer that writes what train() writes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from rm_jax.cli import main as cli_main
from rm_jax.core.config import ConfigError, load_config
from rm_jax.data.pipeline import resolve_source
from rm_jax.data.sources import load_helpsteer
from rm_jax.sweeps.experiment_file import expand, load_experiment, looks_like_experiment
from rm_jax.sweeps.report import build_report
from rm_jax.sweeps.runner import sweep
from tests.helpers import compile_cache_env, fake_train, tiny_base

pytestmark = pytest.mark.slow  # end to end: trains or spawns processes

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
PRESETS = ["340b-rewardbench", "70b-rewardbench", "helpfulness-only"]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A persistent compilation cache for this module's trainings (restored afterwards)."""
    from jax._src import compilation_cache as cc

    d = str(tmp_path_factory.mktemp("xla_cache"))
    keys = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    old = {k: getattr(jax.config, k) for k in keys}
    jax.config.update("jax_compilation_cache_dir", d)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.reset_cache()
    yield d
    for k, v in old.items():
        jax.config.update(k, v)
    cc.reset_cache()


def write_exp(path, base, sweep_axes=None, **extra):
    doc = {"base": base}
    if sweep_axes is not None:
        doc["sweep"] = sweep_axes
    doc.update(extra)
    Path(path).write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


GRID = {
    "data.fraction": [0.5, 1.0],
    "loss.attribute_weights": {"all": [1, 1, 1, 1, 1], "helpfulness_only": [1, 0, 0, 0, 0]},
    "eval.reward_weights": PRESETS,
}


@pytest.fixture(scope="module")
def grid_exp(tmp_path_factory, data_files):
    d = tmp_path_factory.mktemp("exp")
    return write_exp(d / "grid.yaml", tiny_base(data_files, steps=12, every=3), GRID)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, grid_exp, cache_dir):
    """The 2 fractions x 2 loss weightings x 3 presets sweep, uninterrupted, in this process."""
    from rm_jax.training.run import train

    sd = str(tmp_path_factory.mktemp("ref") / "sweep")
    calls = []

    def counting(cfg):
        calls.append(cfg.run_dir)
        return train(cfg)

    out = io.StringIO()
    assert sweep(grid_exp, [f"sweep_dir={sd}"], trainer=counting, out=out) == 0
    return {"dir": sd, "calls": calls, "stdout": out.getvalue(), "md": Path(sd, "results.md").read_text()}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def subprocess_env(cache_dir):
    # XLA_FLAGS stays: the sweeps see the same 8 CPU devices as the in-process reference.
    return {
        **os.environ,
        **compile_cache_env(cache_dir),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def cli(*args):
    return [sys.executable, "-m", "rm_jax.cli", *args]


# ---------------------------------------------------------------- real trainings


@pytest.mark.slow
def test_grid_trains_f_times_l_models_and_tables_f_l_r_rows(reference):
    sd = reference["dir"]
    assert len(reference["calls"]) == 2 * 2  # the 3 presets never start a training
    runs = sorted(p.name for p in Path(sd).iterdir() if (p / "DONE").exists())
    assert runs == ["frac0.5-all", "frac0.5-helpfulness_only", "frac1-all", "frac1-helpfulness_only"]
    rows = read_csv(Path(sd, "results.csv"))
    assert len(rows) == 2 * 2 * 3
    cols = list(rows[0])
    for c in [
        "run",
        "data_fraction",
        "attribute_loss_weights",
        "reward_weights",
        "train_rows",
        "val_loss",
        "pair_accuracy",
    ] + [
        f"{m}_{a}"
        for m in ("pearson", "mse")
        for a in ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
    ]:
        assert c in cols
    assert not {"seed", "lr", "loss"} & set(cols)  # they do not vary here
    assert {r["reward_weights"] for r in rows} == set(PRESETS)
    assert {r["train_rows"] for r in rows} == {"80", "160"}  # whole prompts: half of 80 pairs
    for r in rows:
        assert float(r["val_loss"]) > 0 and 0 <= float(r["pair_accuracy"]) <= 1
    # per run, the reward weighting changes pair accuracy only
    by_run = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    for rs in by_run.values():
        assert len({r["pearson_verbosity"] for r in rs}) == 1 and len({r["val_loss"] for r in rs}) == 1
    # printed: the markdown table and the plot paths
    assert "| run | data_fraction |" in reference["stdout"]
    assert f"plot: {os.path.join(sd, 'results.png')}" in reference["stdout"]
    for p in [
        "results.png",
        "plots/val_loss.png",
        "plots/pearson_helpfulness.png",
        "plots/pair_accuracy-70b-rewardbench.png",
    ]:
        assert Path(sd, p).stat().st_size > 1000
    plan = json.loads(Path(sd, "plan.json").read_text())
    assert [r["name"] for r in plan["runs"]] == [
        "frac0.5-all",
        "frac0.5-helpfulness_only",
        "frac1-all",
        "frac1-helpfulness_only",
    ]


@pytest.mark.slow
def test_rerun_skips_finished_members(reference, grid_exp):
    out = io.StringIO()
    assert (
        sweep(grid_exp, [f"sweep_dir={reference['dir']}"], trainer=lambda cfg: pytest.fail("retrained"), out=out) == 0
    )
    assert Path(reference["dir"], "results.md").read_text() == reference["md"]


@pytest.mark.slow
def test_killed_mid_member_then_rerun_gives_the_same_table(reference, grid_exp, cache_dir, tmp_path):
    from rm_jax.training.run import train

    sd = tmp_path / "killed"
    first, second = sd / "frac0.5-all", sd / "frac0.5-helpfulness_only"
    with open(tmp_path / "log.txt", "wb") as log:
        p = subprocess.Popen(
            cli("sweep", grid_exp, f"sweep_dir={sd}"),
            env=subprocess_env(cache_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(tmp_path),
        )
        deadline = time.time() + 240
        try:
            while p.poll() is None and time.time() < deadline:
                ck = second / "checkpoints"
                if (first / "DONE").exists() and ck.is_dir() and any(x.isdigit() for x in os.listdir(ck)):
                    p.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.02)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-3000:]
    assert (first / "DONE").exists() and not (second / "DONE").exists()  # killed mid-member
    calls = []
    assert (
        sweep(
            grid_exp,
            [f"sweep_dir={sd}"],
            trainer=lambda cfg: calls.append(cfg.run_dir) or train(cfg),
            out=io.StringIO(),
        )
        == 0
    )
    assert len(calls) == 3  # the finished member is skipped, the killed one resumes
    assert (sd / "results.md").read_text() == reference["md"]


@pytest.mark.slow
def test_task_index_processes_then_report_give_the_same_table(reference, grid_exp, cache_dir, tmp_path):
    sd = tmp_path / "array"
    # tasks 0 and 1 at the same time in two processes (as array tasks run), 2 and 3 in this one
    procs = [
        subprocess.Popen(
            cli("sweep", grid_exp, "--task-index", str(i), f"sweep_dir={sd}"),
            env=subprocess_env(cache_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(tmp_path),
        )
        for i in (0, 1)
    ]
    for i in (2, 3):
        assert sweep(grid_exp, [f"sweep_dir={sd}"], task_index=i, out=io.StringIO()) == 0
    for p in procs:
        out = p.communicate(timeout=300)[0].decode()
        assert p.returncode == 0, out[-3000:]
    assert {p.name for p in sd.iterdir() if (p / "DONE").exists()} == {
        "frac0.5-all",
        "frac0.5-helpfulness_only",
        "frac1-all",
        "frac1-helpfulness_only",
    }
    assert cli_main(["report", str(sd)]) == 0
    assert (sd / "results.md").read_text() == reference["md"]


# ---------------------------------------------------------------- experiment files and bad input


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_every_experiment_file_validates(path, tmp_path):
    data = yaml.safe_load(path.read_text())
    if not looks_like_experiment(data):  # a plain run config: rm-jax train takes it (and sweep, as one run)
        load_config(str(path))
    out = io.StringIO()
    assert sweep(str(path), [f"sweep_dir={tmp_path / 'never'}"], dry_run=True, out=out) == 0
    assert "validated" in out.getvalue()
    assert not (tmp_path / "never").exists()  # a dry run writes nothing
    assert path.read_text().startswith("#")  # a header comment: hardware and expected time


def test_base_config_and_plain_run_config(data_files, tmp_path):
    base = tiny_base(data_files)
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "recipe.yaml").write_text(yaml.safe_dump({**base, "run_dir": "elsewhere"}))
    path = tmp_path / "cfgs" / "abl.yaml"  # base_config is found next to the experiment file
    path.write_text(
        yaml.safe_dump(
            {"base_config": "recipe.yaml", "base": {"train": {"lr": 0.01}}, "sweep": {"data.fraction": [0.5, 1.0]}}
        )
    )
    plan = expand(load_experiment(str(path), [f"sweep_dir={tmp_path / 's'}"]))
    assert [r.config["train"]["lr"] for r in plan.runs] == [0.01, 0.01]
    assert plan.runs[0].config["train"]["max_steps"] == 4 and plan.runs[0].run_dir == str(tmp_path / "s" / "frac0.5")
    plan = expand(load_experiment(str(tmp_path / "cfgs" / "recipe.yaml")))  # a plain run config: one run
    assert [r.name for r in plan.runs] == ["recipe"] and plan.experiment.sweep_dir == os.path.join("runs", "recipe")
    path.write_text(yaml.safe_dump({"base_config": "nope.yaml"}))
    with pytest.raises(ConfigError, match="base_config 'nope.yaml' not found"):
        load_experiment(str(path))
    path.write_text(yaml.safe_dump({"base_config": "abl.yaml"}))
    with pytest.raises(ConfigError, match="is an experiment file"):
        load_experiment(str(path))


def test_demo_plan():
    plan = expand(load_experiment(str(ROOT / "experiments" / "demo.yaml")))
    assert len(plan.runs) == 6
    assert {r.name for r in plan.runs} == {
        f"frac{f}-{w}" for f in ("0.1", "0.3", "1") for w in ("all", "helpfulness_only")
    }
    assert all([lab for lab, _ in r.evals] == PRESETS for r in plan.runs)
    assert plan.experiment.sweep_dir == os.path.join("runs", "demo")


BAD = {
    "unknown axis": ({"data.fractoin": [0.1, 1.0]}, {}, "did you mean 'data.fraction'"),
    "empty axis": ({"data.fraction": []}, {}, "'data.fraction' has no values"),
    "scalar axis": ({"data.fraction": 0.5}, {}, "expected a list of values"),
    "unknown preset": (
        {"eval.reward_weights": ["70b-rewardbench", "70b-rewardbnech"]},
        {},
        "unknown reward-weight preset '70b-rewardbnech'",
    ),
    "same folder (labels)": ({"train.lr": [0.001, 1.0e-3]}, {}, "same folder"),
    "same folder (members)": ({"train.seed": {"b": 0, "b-b": 1}}, {"members": {"a": {}, "a-b": {}}}, "same folder"),
    "bad value": ({"data.fraction": [0.5, 2.0]}, {}, "data.fraction must be in (0, 1]"),
    "bad arch key": ({"model.arch.hidden_sise": [32, 64]}, {}, "did you mean 'model.arch.hidden_size'"),
    "zip lengths": (None, {"zip": {"train.lr": [1e-3, 2e-3], "train.seed": [0, 1, 2]}}, "same number of values"),
    "zip eval": (None, {"zip": {"eval.reward_weights": ["goodness"]}}, "put it under sweep"),
    "unknown top key": (None, {"sweeps": {"data.fraction": [0.5]}}, "unknown experiment key 'sweeps'"),
    "unknown member key": (None, {"members": {"a": {"train.lrr": 1e-3}}}, "unknown config key 'train.lrr'"),
    "unknown dependency": (None, {"members": {"a": {"after": "b"}}}, "depends on 'b'"),
    "cycle": (None, {"members": {"a": {"after": "b"}, "b": {"after": "a"}}}, "dependency cycle"),
    "member sets an axis": (
        {"data.fraction": [0.5, 1.0]},
        {"members": {"a": {"data.fraction": 0.2}}},
        "also a sweep axis",
    ),
    "run_dir axis": ({"run_dir": ["a", "b"]}, {}, "run_dir cannot be an axis"),
    "reserved name": (None, {"members": {"plots": {}}}, "taken by the sweep's own files"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_fails_before_anything_trains(case, data_files, tmp_path):
    axes, extra, msg = BAD[case]
    path = write_exp(tmp_path / "bad.yaml", tiny_base(data_files), axes, **extra)
    sd = tmp_path / "sweep"
    with pytest.raises(ConfigError) as e:
        sweep(path, [f"sweep_dir={sd}"], trainer=lambda cfg: pytest.fail("trained"), out=io.StringIO())
    assert msg in str(e.value)
    assert not sd.exists()


@pytest.mark.parametrize(
    "overrides,msg",
    [
        (["data.fraction=0.5"], "sweep.data.fraction=[...]"),
        (["train.lrr=0.1"], "unknown config key 'train.lrr'"),
        (["--task-index", "9"], "--task-index 9: the experiment has 4 runs"),
    ],
)
def test_bad_command_line(overrides, msg, grid_exp, tmp_path, capsys):
    from rm_jax.cli import main

    assert main(["sweep", grid_exp, f"sweep_dir={tmp_path / 's'}", *overrides]) == 1
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- naming, columns, members (fake trainer)


def test_seed_suffix_columns_and_error_bars(data_files, tmp_path):
    base = tiny_base(data_files)
    base["data"]["validation"] = "bundled"
    path = write_exp(
        tmp_path / "seeds.yaml",
        base,
        {
            "train.seed": [0, 1, 2],
            "data.fraction": [0.1, 0.3, 1.0],
            "loss.attribute_weights": {"all": [1] * 5, "help": [1, 0, 0, 0, 0]},
        },
    )
    sd = tmp_path / "s"
    out = io.StringIO()
    assert (
        sweep(
            str(path),
            [f"sweep_dir={sd}", "sweep.eval.reward_weights=[goodness, helpfulness-only]"],
            trainer=fake_train,
            out=out,
        )
        == 0
    )
    plan = json.loads((sd / "plan.json").read_text())
    names = [r["name"] for r in plan["runs"]]
    assert len(names) == 18 and names[0] == "frac0.1-all-seed0"  # seeds last in the name
    rows = read_csv(sd / "results.csv")
    assert len(rows) == 36 and "seed" in rows[0] and "lr" not in rows[0]
    assert list(rows[0])[:5] == ["run", "data_fraction", "attribute_loss_weights", "reward_weights", "seed"]
    assert (sd / "plots" / "pearson_verbosity.png").exists()
    assert (sd / "plots" / "pair_accuracy-goodness.png").exists()


def test_zip_names_and_varying_columns(data_files, tmp_path):
    base = tiny_base(data_files)
    path = write_exp(tmp_path / "z.yaml", base, None, zip={"train.lr": [1.0e-3, 2.0e-3], "train.seed": [0, 1]})
    plan = expand(load_experiment(path, [f"sweep_dir={tmp_path / 's'}"]))
    assert [r.name for r in plan.runs] == ["lr0.001-seed0", "lr0.002-seed1"]
    rw = "sweep.eval.reward_weights={mine: [1, 1, 0, 0, 0], goodness: goodness}"  # named weightings
    assert sweep(path, [f"sweep_dir={tmp_path / 's'}", rw], trainer=fake_train, out=io.StringIO()) == 0
    rows = read_csv(tmp_path / "s" / "results.csv")
    assert {(r["lr"], r["seed"], r["reward_weights"]) for r in rows} == {
        (lr, seed, w) for lr, seed in (("0.001", "0"), ("0.002", "1")) for w in ("mine", "goodness")
    }


def test_members_dependencies_and_task_index_order(data_files, tmp_path):
    base = tiny_base(data_files)
    path = write_exp(
        tmp_path / "m.yaml",
        base,
        None,
        members={
            "scaled_bt": {
                "after": "regression",
                "loss.type": "scaled_bt",
                "data.kind": "pairs",
                "model.init_from": "{run:regression}",
            },
            "regression": {"loss.attribute_weights": [1, 0, 0, 0, 0]},
        },
    )
    sd = tmp_path / "s"
    plan = expand(load_experiment(path, [f"sweep_dir={sd}"]))
    assert [r.name for r in plan.runs] == ["regression", "scaled_bt"]  # dependencies first
    assert plan.runs[1].config["model"]["init_from"] == os.path.join(str(sd), "regression")
    with pytest.raises(ConfigError, match="needs regression .task index 0. finished first"):
        sweep(path, [f"sweep_dir={sd}"], task_index=1, trainer=fake_train, out=io.StringIO())
    out = io.StringIO()
    sweep(path, [f"sweep_dir={sd}"], dry_run=True, out=out)
    assert "[after regression]" in out.getvalue()


def test_changed_experiment_does_not_reuse_a_different_run(data_files, tmp_path):
    path = write_exp(tmp_path / "c.yaml", tiny_base(data_files), {"data.fraction": [0.5, 1.0]})
    sd = tmp_path / "s"
    assert sweep(path, [f"sweep_dir={sd}"], trainer=fake_train, out=io.StringIO()) == 0
    with pytest.raises(ConfigError, match="finished run with a different training config .*data.seq_len"):
        sweep(path, [f"sweep_dir={sd}", "data.seq_len=64"], trainer=fake_train, out=io.StringIO())
    # changes that do not touch training are fine
    assert (
        sweep(
            path,
            [f"sweep_dir={sd}", "train.log_every=3", "logging.progress=true"],
            trainer=fake_train,
            out=io.StringIO(),
        )
        == 0
    )
    (sd / "frac1" / "DONE").unlink()  # an unfinished run, then the file is edited
    with pytest.raises(ConfigError, match="different training config .*train.lr"):
        sweep(path, [f"sweep_dir={sd}", "train.lr=0.1"], trainer=fake_train, out=io.StringIO())


def test_report_lists_unfinished_runs(data_files, tmp_path):
    path = write_exp(tmp_path / "u.yaml", tiny_base(data_files), {"data.fraction": [0.5, 1.0]})
    sd = tmp_path / "s"
    assert sweep(path, [f"sweep_dir={sd}"], task_index=0, trainer=fake_train, out=io.StringIO()) == 0
    rep = build_report(str(sd))
    assert rep.missing == ["frac1"] and len(rep.rows) == 2  # default eval.reward_weights: 2 presets
    assert "1 of 2 runs not finished" in (sd / "results.md").read_text()
    with pytest.raises(ConfigError, match="not a sweep folder"):
        build_report(str(tmp_path))


# ---------------------------------------------------------------- pairs, init_from and RewardBench (real)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    """HelpSteer2-Preference-style pairs and RewardBench-format pairs from the bundled sample."""
    d = tmp_path_factory.mktemp("pairs")
    rows = load_helpsteer(resolve_source("bundled"), "validation").rows
    pref, rb = [], []
    subsets = ["alpacaeval-easy", "mt-bench-hard", "refusals-dangerous", "math-prm"]
    for k in range(0, len(rows) - 1, 2):
        a, b = rows[k], rows[k + 1]
        diff = b["helpfulness"] - a["helpfulness"]
        pref.append(
            {
                "prompt": a["prompt"],
                "response_1": a["response"],
                "response_2": b["response"],
                "preference_strength": int(np.clip(diff, -3, 3)),
            }
        )
        if diff:
            ch, rj = (b, a) if diff > 0 else (a, b)
            rb.append(
                {
                    "prompt": a["prompt"],
                    "chosen": ch["response"],
                    "rejected": rj["response"],
                    "subset": subsets[len(rb) % 4],
                    "id": len(rb),
                }
            )
    out = {}
    for name, recs in (("pref_train", pref[:120]), ("pref_val", pref[120:160]), ("rewardbench", rb[:60])):
        p = d / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in recs))
        out[name] = str(p)
    return out


@pytest.mark.slow
def test_regression_then_scaled_bt_with_rewardbench(data_files, pair_files, cache_dir, tmp_path):
    base = tiny_base(data_files, steps=3, every=3)
    base["eval"] = {"rewardbench": pair_files["rewardbench"]}
    path = write_exp(
        tmp_path / "rb.yaml",
        base,
        {"eval.reward_weights": ["helpfulness-only", "70b-rewardbench"]},
        members={
            "regression": {"loss.attribute_weights": [1, 0, 0, 0, 0]},
            "scaled_bt": {
                "after": "regression",
                "data.kind": "pairs",
                "loss.type": "scaled_bt",
                "data.train": pair_files["pref_train"],
                "data.validation": pair_files["pref_val"],
                "model.init_from": "{run:regression}",
            },
        },
    )
    sd = tmp_path / "s"
    assert sweep(path, [f"sweep_dir={sd}"], out=io.StringIO()) == 0
    rows = read_csv(sd / "results.csv")
    assert [(r["run"], r["reward_weights"]) for r in rows] == [
        ("regression", "helpfulness-only"),
        ("regression", "70b-rewardbench"),
        ("scaled_bt", "helpfulness-only"),
        ("scaled_bt", "70b-rewardbench"),
    ]
    assert rows[0]["member"] == "regression" and rows[2]["loss"] == "scaled_bt"
    # RewardBench columns recomputed from each run's saved predictions by the plain definition: a pair is
    # right when the chosen reward is strictly higher; one subset per section here, so a section is its
    # subset's accuracy and overall the mean of the four sections.
    weights = {"helpfulness-only": [1, 0, 0, 0, 0], "70b-rewardbench": [0.65, 0.8, 0.45, 0.55, -0.4]}
    section_of = {"alpacaeval-easy": "chat", "mt-bench-hard": "chat_hard", "refusals-dangerous": "safety"}
    section_of["math-prm"] = "reasoning"
    for r in rows:
        w = np.asarray(weights[r["reward_weights"]])
        recs = [json.loads(x) for x in (sd / r["run"] / "predictions" / "rewardbench.jsonl").read_text().splitlines()]
        assert len(recs) == 60
        right: dict = {}
        for rec in recs:
            c, j = np.asarray(list(rec["chosen"].values())) @ w, np.asarray(list(rec["rejected"].values())) @ w
            right.setdefault(section_of[rec["subset"]], []).append(c > j)
        want = {sec: float(np.mean(v)) for sec, v in right.items()}
        for sec, v in want.items():
            assert float(r[f"rewardbench_{sec}"]) == pytest.approx(v, abs=1e-9), (r["run"], r["reward_weights"], sec)
        assert float(r["rewardbench_overall"]) == pytest.approx(np.mean(list(want.values())), abs=1e-9)
        assert r["pair_accuracy"] != ""
    assert rows[0]["pearson_helpfulness"] != "" and rows[2]["pearson_helpfulness"] == ""  # pairs: no labels
    cfg = yaml.safe_load((sd / "scaled_bt" / "config.yaml").read_text())
    assert cfg["model"]["init_from"] == os.path.join(str(sd), "regression")
    assert (sd / "regression" / "predictions" / "rewardbench.jsonl").exists()


def test_helpsteer3_recipe_plans_on_an_h100_node():
    """experiments/helpsteer3_llama3_8b.yaml, sized by rm-jax plan's own function on abstract shapes (the 8B
    config from rm_jax's table of known models, no weights): HelpSteer3 pairs with scaled BT fit 8 x 80 GiB."""
    from rm_jax.core.config import load_config
    from rm_jax.training.plan import plan

    cfg = load_config(str(ROOT / "experiments" / "helpsteer3_llama3_8b.yaml"))
    assert cfg.data.kind == "helpsteer3" and cfg.loss.type == "scaled_bt"
    rep = plan(cfg, 8, 80 * 2**30, search=False)
    assert rep.fits and 7e9 < rep.dcfg.num_params() < 8e9
