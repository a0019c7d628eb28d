"""Pipeline steps a sweep member can run instead of a training (``step:`` in experiment files): sampling
from a policy, labelling samples for SteerLM 2.0, and evaluating how well a policy follows requested
attributes. Each writes its output into the member's folder, then ``step.json`` (what ran), ``report.json``
(sample and label: what was read, skipped, cut off) and ``DONE``;
a finished step is skipped on re-runs, and an edited one is an error, as for trainings."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from rm_jax.core.errors import ConfigError
from rm_jax.core.files import write_json
from rm_jax.runs import layout
from rm_jax.runs.lock import hold_run_folder

OUTPUTS = {"sample": layout.SAMPLES, "label": layout.GROUPS, "steer_eval": layout.STEER_EVAL}


def _sample(args: dict, out: str) -> dict:
    from rm_jax.steer.sample import sample_prompts

    return sample_prompts(
        args["policy"],
        args["input"],
        os.path.join(out, OUTPUTS["sample"]),
        **{k: v for k, v in args.items() if k not in ("policy", "input")},
    )


def _label(args: dict, out: str) -> dict:
    from rm_jax.steer.label import label_samples

    return label_samples(
        args["input"],
        args["policy"],
        args["rm"],
        os.path.join(out, OUTPUTS["label"]),
        **{k: v for k, v in args.items() if k not in ("input", "policy", "rm")},
    )


def _steer_eval(args: dict, out: str) -> None:
    from rm_jax.steer.steer_eval import steer_eval

    steer_eval(
        args["policy"],
        args["rm"],
        args["input"],
        out,
        **{k: v for k, v in args.items() if k not in ("policy", "rm", "input", "iteration")},
    )


STEPS: dict[str, Callable[[dict, str], Any]] = {"sample": _sample, "label": _label, "steer_eval": _steer_eval}


def _record(run: Any) -> dict:
    return {"step": run.step, "args": run.args}


def check_existing_step(run: Any) -> None:
    """A step folder holding the output of different arguments (an edited experiment file) is an error."""
    path = layout.step_path(run.run_dir)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    if old != json.loads(json.dumps(_record(run))):
        raise ConfigError(
            f"{run.run_dir} holds step {old.get('step')} with args {old.get('args')}, not "
            f"{run.step} with {run.args}; delete that folder or choose another sweep_dir"
        )


def run_step(run: Any) -> None:
    """Run one step into its folder, held for the duration (re-entrant: the sweep runner holds it already,
    waiting for it when asked to)."""
    with hold_run_folder(run.run_dir):
        _run_step(run)


def _run_step(run: Any) -> None:
    os.makedirs(run.run_dir, exist_ok=True)
    write_json(layout.step_path(run.run_dir), _record(run))
    report = STEPS[run.step](run.args, run.run_dir)
    if isinstance(report, dict):  # counts a user would otherwise not see (skipped, cut-off responses)
        write_json(layout.step_report_path(run.run_dir), report)
    layout.mark_done(run.run_dir, {"step": run.step})
