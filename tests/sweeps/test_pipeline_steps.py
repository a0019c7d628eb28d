"""Step members in experiment files (sample / label / steer_eval instead of a training): parsing and
its errors, dependencies through {run:...}, skipping finished steps, refusing edited ones, and the
results rows of policy evaluations. Step functions are replaced by fakes here; the real ones are
tested with the SteerLM 2.0 code."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import yaml

from rm_jax.core.errors import ConfigError
from rm_jax.sweeps.experiment_file import expand, load_experiment
from rm_jax.sweeps.report import build_report
from rm_jax.sweeps.runner import sweep
from tests.helpers import fake_train, tiny_base


def _exp(tmp_path, data_files, members):
    path = tmp_path / "steer.yaml"
    path.write_text(yaml.safe_dump({"base": tiny_base(data_files), "members": members}, sort_keys=False))
    return str(path)


MEMBERS = {
    "rm": {},
    "sft": {"task": "sft", "data.attributes_as_label": True},
    "eval0": {
        "step": "steer_eval",
        "args": {"policy": "{run:sft}", "rm": "{run:rm}", "input": "prompts.jsonl", "iteration": 0, "k": 2},
    },
    "sample1": {"step": "sample", "args": {"policy": "{run:sft}", "input": "prompts.jsonl", "n": 4}},
    "label1": {
        "step": "label",
        "args": {"policy": "{run:sft}", "rm": "{run:rm}", "input": "{run:sample1}/samples.jsonl"},
    },
    "steer1": {
        "task": "steerlm2",
        "model.init_from": "{run:sft}",
        "data.train": "{run:label1}/groups.jsonl",
        "data.validation": None,
    },
    "eval1": {
        "step": "steer_eval",
        "args": {"policy": "{run:steer1}", "rm": "{run:rm}", "input": "prompts.jsonl", "iteration": 1, "k": 2},
    },
}


def test_steps_parse_resolve_and_order(tmp_path, data_files):
    plan = expand(load_experiment(_exp(tmp_path, data_files, MEMBERS), [f"sweep_dir={tmp_path / 's'}"]))
    by = {r.name: r for r in plan.runs}
    assert [r.name for r in plan.runs].index("label1") > [r.name for r in plan.runs].index("sample1")
    assert by["label1"].step == "label" and by["label1"].after == ["rm", "sample1", "sft"]
    assert by["label1"].args["input"] == os.path.join(str(tmp_path / "s"), "sample1", "samples.jsonl")
    assert by["steer1"].step is None and by["steer1"].config["task"] == "steerlm2"
    assert by["steer1"].config["data"]["train"] == os.path.join(str(tmp_path / "s"), "label1", "groups.jsonl")


@pytest.mark.parametrize(
    "member, needle",
    [
        ({"step": "smaple", "args": {}}, "step 'smaple' is not one of sample, label, steer_eval"),
        ({"step": "label", "args": {"policy": "p", "input": "i"}}, "step label needs args: rm"),
        ({"step": "sample", "args": {"policy": "p", "input": "i", "temprature": 1}}, "did you mean 'temperature'"),
        ({"step": "sample", "train.lr": 0.1, "args": {"policy": "p", "input": "i"}}, "takes args:, not config keys"),
        ({"args": {"policy": "p"}}, "args: belongs to a step member"),
        ({"step": "sample", "args": {"policy": "{run:nope}", "input": "i"}}, "depends on 'nope'"),
    ],
)
def test_step_errors_before_anything_runs(tmp_path, data_files, member, needle):
    with pytest.raises(ConfigError) as e:
        load_experiment(_exp(tmp_path, data_files, {"rm": {}, "bad": member}))
    assert needle in str(e.value)


def test_steps_run_once_and_feed_the_results_table(tmp_path, data_files, monkeypatch):
    import rm_jax.sweeps.pipeline_steps as steps

    calls = []

    def fake(kind):
        def run(args, out):
            calls.append((kind, args))
            if kind == "steer_eval":
                mae = {
                    "helpfulness": 1.0,
                    "correctness": 1.0,
                    "coherence": 0.5,
                    "complexity": 0.8,
                    "verbosity": 1.5 - 0.4 * args.get("k", 0),
                }
                mae["mean"] = sum(mae.values()) / 5
                with open(os.path.join(out, "steer_eval.json"), "w") as f:
                    json.dump({"policy": args["policy"], "mean_abs_error": mae, "reward": {"70b-card": 1.25}}, f)

        return run

    for kind in steps.STEPS:
        monkeypatch.setitem(steps.STEPS, kind, fake(kind))
    members = {
        "rm": {},
        "pol": {},
        "eval0": {
            "step": "steer_eval",
            "args": {"policy": "{run:pol}", "rm": "{run:rm}", "input": "p", "iteration": 0, "k": 1},
        },
        "eval1": {
            "step": "steer_eval",
            "args": {"policy": "{run:pol}", "rm": "{run:rm}", "input": "p", "iteration": 1, "k": 2},
        },
    }
    path, sd = _exp(tmp_path, data_files, members), tmp_path / "s"
    assert sweep(path, [f"sweep_dir={sd}"], trainer=fake_train, out=io.StringIO()) == 0
    assert [c[0] for c in calls] == ["steer_eval", "steer_eval"]
    assert (sd / "eval1" / "DONE").exists() and json.loads((sd / "eval1" / "step.json").read_text())[
        "step"
    ] == "steer_eval"
    assert sweep(path, [f"sweep_dir={sd}"], trainer=fake_train, out=io.StringIO()) == 0
    assert len(calls) == 2  # finished steps are skipped
    rep = build_report(str(sd))
    steer = [r for r in rep.rows if r.get("iteration") is not None]
    assert [(r["run"], r["iteration"]) for r in steer] == [("eval0", 0), ("eval1", 1)]
    assert steer[1]["steer_mae_mean"] < steer[0]["steer_mae_mean"] and steer[0]["steer_reward_70b-card"] == 1.25
    assert any(p.endswith("steer_mae.png") for p in rep.plots)
    assert len([r for r in rep.rows if r["run"] in ("rm", "pol")]) == 2 * 2  # two presets each (default eval)
    # An edited step is refused, not silently reused.
    members["eval1"]["args"]["k"] = 3
    with pytest.raises(ConfigError, match="holds step steer_eval with args"):
        sweep(_exp(tmp_path, data_files, members), [f"sweep_dir={sd}"], trainer=fake_train, out=io.StringIO())


@pytest.mark.slow
def test_real_step_functions_on_tiny_models(tmp_path, data_files):
    """sample -> label -> steer_eval as sweep members with the real step functions (tiny random models):
    each writes what the library function writes when called directly, and a re-run recomputes nothing."""
    from rm_jax.data.steer_groups import load_groups
    from rm_jax.steer.sample import sample_prompts
    from tests.helpers import make_hf_causal_lm_with_tokenizer, make_hf_rm_with_tokenizer

    policy, rm = str(tmp_path / "policy"), str(tmp_path / "rm")
    make_hf_causal_lm_with_tokenizer("llama", policy, seed=1)
    make_hf_rm_with_tokenizer("llama", rm)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("What is 2 plus 2?", "Name a colour.")))
    targets = ["helpfulness:4,verbosity:0", "helpfulness:2,verbosity:4"]
    gen = {"max_new_tokens": 6, "seed": 3}
    members = {
        "sample1": {
            "step": "sample",
            "args": {"policy": policy, "input": str(prompts), "n": 2, "targets": targets, **gen},
        },
        "label1": {
            "step": "label",
            "args": {
                "policy": policy,
                "rm": rm,
                "input": "{run:sample1}/samples.jsonl",
                "sigma": 0.8,
            },
        },
        "eval1": {
            "step": "steer_eval",
            "args": {"policy": policy, "rm": rm, "input": str(prompts), "iteration": 0, "k": 2, "targets": targets}
            | gen,
        },
    }
    path, sd = _exp(tmp_path, data_files, members), tmp_path / "s"
    assert sweep(path, [f"sweep_dir={sd}"], trainer=fake_train, out=io.StringIO()) == 0

    # sample: the same file as the function called directly with the member's args
    direct = tmp_path / "direct_samples.jsonl"
    rep = sample_prompts(policy, str(prompts), str(direct), n=2, targets=targets, progress=False, **gen)
    assert (sd / "sample1" / "samples.jsonl").read_text() == direct.read_text()
    assert json.loads((sd / "sample1" / "report.json").read_text()) == rep
    assert rep["prompts"] == 2 and rep["groups"] == 4 and rep["responses"] == 8
    # label: NeMo-format groups, one per (prompt, target), n responses each
    groups = load_groups(str(sd / "label1" / "groups.jsonl"))
    assert len(groups) == 4 and all(len(g.responses) == 2 and np.isfinite(g.log_pa).all() for g in groups)
    assert json.loads((sd / "label1" / "report.json").read_text())["groups"] == 4
    # steer_eval: per-attribute errors of the requested targets, and a results-table row
    ev = json.loads((sd / "eval1" / "steer_eval.json").read_text())
    assert set(ev["mean_abs_error"]) >= {"helpfulness", "verbosity"} and ev["policy"] == policy
    rep_rows = [r for r in build_report(str(sd)).rows if r.get("iteration") == 0]
    assert len(rep_rows) == 1 and rep_rows[0]["steer_mae_mean"] == pytest.approx(ev["mean_abs_error"]["mean"])
    for m in members:
        assert (sd / m / "DONE").exists()

    mtimes = {m: (sd / m / "DONE").stat().st_mtime_ns for m in members}
    assert sweep(path, [f"sweep_dir={sd}"], trainer=fake_train, out=io.StringIO()) == 0
    assert {m: (sd / m / "DONE").stat().st_mtime_ns for m in members} == mtimes  # nothing re-ran
