"""``rm-jax sweep`` and ``rm-jax report``: run the members of an expanded experiment (one after
another, or one ``--task-index`` of an array job), skipping finished ones and resuming unfinished
ones, then tabulate and plot (:mod:`rm_jax.sweeps.report`). The file format lives in
:mod:`rm_jax.sweeps.experiment_file`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

import yaml

from rm_jax.core.config import ConfigError, build_config
from rm_jax.core.console import get_logger, is_main_process
from rm_jax.core.errors import TrainingError
from rm_jax.core.files import write_json
from rm_jax.runs import layout
from rm_jax.runs.lock import hold_run_folder, hold_run_folder_agreed
from rm_jax.sweeps.experiment_file import (
    NOT_TRAINING,
    TRAINING_SECTIONS,
    Plan,
    Run,
    attribute_weights_label,
    expand,
    load_experiment,
    plan_record,
    reward_weights_label,
)
from rm_jax.sweeps.report import build_report, print_report

logger = get_logger("sweeps")

# ---------------------------------------------------------------- running


def run_status(run: Run) -> str:
    if layout.is_done(run.run_dir):
        return "done"
    ck = layout.checkpoints_dir(run.run_dir)
    if os.path.isdir(ck):
        steps = [int(d) for d in os.listdir(ck) if d.isdigit()]
        if steps:
            return f"resumes at step {max(steps)}"
    return "new" if not os.path.exists(run.run_dir) else "started"


def check_existing(run: Run) -> None:
    """A run folder holding a different training (an edited experiment file) is an error, not a resume."""
    if run.step:
        from rm_jax.sweeps.pipeline_steps import check_existing_step

        check_existing_step(run)
        return
    path = layout.config_path(run.run_dir)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        old = yaml.safe_load(f) or {}
    diffs = []
    for sec in TRAINING_SECTIONS:
        a, b = old.get(sec) or {}, run.config.get(sec) or {}
        for k in sorted(set(a) & set(b)):
            if a[k] != b[k] and f"{sec}.{k}" not in NOT_TRAINING:
                diffs.append(f"{sec}.{k}: {a[k]!r} there, {b[k]!r} now")
    if diffs:
        state = "finished" if layout.is_done(run.run_dir) else "unfinished"
        raise ConfigError(
            f"{run.run_dir} holds a {state} run with a different training config "
            f"({'; '.join(diffs[:3])}); delete that folder or choose another sweep_dir"
        )


def rewardbench_pending(run: Run) -> bool:
    return bool(run.config["eval"].get("rewardbench")) and not os.path.isfile(
        layout.predictions_path(run.run_dir, "rewardbench")
    )


def rewardbench2_pending(run: Run) -> bool:
    return bool(run.config["eval"].get("rewardbench2")) and not os.path.isfile(
        layout.predictions_path(run.run_dir, "rewardbench2")
    )


def yardsticks_pending(run: Run) -> list[str]:
    """The yardsticks (rm_bench, judgebench, helpsteer3) the member's config names but its folder has no
    predictions of: scored after training, or for a member trained before the key was set."""
    from rm_jax.evaluation.yardsticks import YARDSTICKS

    return [
        name
        for name in YARDSTICKS
        if run.config["eval"].get(name) and not os.path.isfile(layout.predictions_path(run.run_dir, name))
    ]


def run_one(run: Run, plan: Plan, trainer: Optional[Callable] = None, wait: bool = False) -> str:
    """Train (or resume) one run unless it is finished; returns 'done' / 'trained' / 'ran'. The member's
    folder is held while it runs (rm_jax.runs.lock): a second process on it is refused, or with ``wait``
    waits and then finds it finished."""
    if trainer is None:
        from rm_jax.training.run import train as trainer
    by_name = {r.name: r for r in plan.runs}
    missing = [d for d in run.after if not layout.is_done(by_name[d].run_dir)]
    if missing:
        dep = by_name[missing[0]]
        raise ConfigError(
            f"run {run.name} needs {dep.name} (task index {dep.index}) finished first "
            f"(no DONE in {dep.run_dir}); with array jobs, make this task depend on that one"
        )
    cfg = build_config(run.config, where=run.name)
    check_existing(run)
    if run.step:
        with hold_run_folder(run.run_dir, wait, enabled=is_main_process()):
            return _run_held(run, cfg, trainer)
    from rm_jax.training.setup import maybe_init_distributed

    maybe_init_distributed(cfg)  # before the lock's agreement, which needs jax.distributed when it is enabled
    # every process of a multi-host member follows process 0's lock outcome (a refusal stops them all at once)
    with hold_run_folder_agreed(run.run_dir, wait):
        return _run_held(run, cfg, trainer)


def _run_held(run: Run, cfg: Any, trainer: Callable) -> str:
    status = "done"  # is_done is read under the lock: a process that waited finds the member finished
    if run.step:
        if not layout.is_done(run.run_dir):
            from rm_jax.sweeps.pipeline_steps import run_step

            run_step(run)
            status = "ran"
        return status
    if not layout.is_done(run.run_dir):
        import jax

        if cfg.distributed.enabled and jax.distributed.is_initialized():
            cfg.distributed.enabled = False  # a second run in the same processes
        trainer(cfg)
        status = "trained"
    if rewardbench_pending(run):
        logger.info(f"{run.name}: RewardBench predictions ({cfg.eval.rewardbench})")
        from rm_jax.training.final_eval import score_rewardbench

        score_rewardbench(cfg, run.run_dir)
    if rewardbench2_pending(run):
        logger.info(f"{run.name}: RewardBench 2 predictions ({cfg.eval.rewardbench2})")
        from rm_jax.training.final_eval import score_rewardbench2

        score_rewardbench2(cfg, run.run_dir)
    for name in yardsticks_pending(run):
        logger.info(f"{run.name}: {name} predictions ({run.config['eval'][name]})")
        from rm_jax.training.final_eval import score_yardstick

        score_yardstick(cfg, run.run_dir, name)
    return status


def format_plan(plan: Plan, statuses: Optional[dict] = None) -> str:
    exp = plan.experiment
    runs = plan.runs
    ev = [lab for lab, _ in runs[0].evals] if runs else []
    rms = [r for r in runs if not r.step and r.config.get("task", "rm") == "rm"]
    steps = [r for r in runs if r.step]
    lines = [
        f"experiment {exp.path} -> sweep folder {exp.sweep_dir}",
        f"{len(runs) - len(steps)} training run(s)"
        + (f" and {len(steps)} step(s)" if steps else "")
        + f" (task indices 0-{len(runs) - 1}); {len(rms) * len(ev)} reward-model result rows: each RM scored "
        f"under {len(ev)} reward weighting(s) from its saved predictions: {', '.join(ev)}"
        + (f"; {sum(r.step == 'steer_eval' for r in steps)} policy evaluation row(s)" if steps else ""),
    ]
    axes = [f"{a.key} [{', '.join(a.labels)}]" for a in exp.grid]
    axes += ["zip(" + ", ".join(f"{a.key} [{', '.join(a.labels)}]" for a in g) + ")" for g in exp.zips]
    if axes:
        lines.append("trained axes: " + " x ".join(axes))
    if exp.evals:
        lines.append(f"evaluation-only axis (no extra training): {exp.evals.key} [{', '.join(exp.evals.labels)}]")
    if exp.members[0].name is not None:
        lines.append(
            "members: " + ", ".join(m.name + (f" (after {', '.join(m.after)})" if m.after else "") for m in exp.members)
        )
    width = max([len(r.name) for r in runs] + [4])
    lines.append("")
    lines.append(f"  {'#':>3}  {'run':<{width}}  {'status':<20} trains")
    for r in runs:
        st = (statuses or {}).get(r.name) or run_status(r)
        what = _describe(r)
        after = f"  [after {', '.join(r.after)}]" if r.after else ""
        lines.append(f"  {r.index:>3}  {r.name:<{width}}  {st:<20} {what}{after}")
    same = _same_training(runs)
    if same:
        lines.append("")
        for a, b in same:
            lines.append(f"note: {a} and {b} train the same config (different folders)")
    return "\n".join(lines)


def _describe(r: Run) -> str:
    if r.step:
        return f"step {r.step}: " + ", ".join(f"{k}={v}" for k, v in r.args.items())
    c = r.config
    model = c["model"]["path"] or (
        f"init_from {c['model']['init_from']}"
        if c["model"]["init_from"]
        else "scratch "
        + ",".join(f"{k}={v}" for k, v in c["model"]["arch"].items() if k in ("hidden_size", "num_hidden_layers"))
    )
    steps = f"{c['train']['max_steps']} steps" if c["train"]["max_steps"] else f"{c['train']['epochs']:g} epochs"
    if c.get("task", "rm") != "rm":
        data = c["data"]["train"] + (", SteerLM labels" if c["data"]["attributes_as_label"] else "")
        return f"task {c['task']}: {model}; data {data}; lr {c['train']['lr']:g}; {steps}; seed {c['train']['seed']}"
    if c["loss"]["type"] == "mse":
        loss = f"mse on {attribute_weights_label(c['loss']['attribute_weights'], c['model']['attributes'])}"
    else:
        loss = f"{c['loss']['type']} on reward {reward_weights_label(c['loss']['reward_weights'])}"
    return (
        f"{model}; data {c['data']['train']} x{c['data']['fraction']:g} ({c['data']['kind']}); "
        f"{loss}; lr {c['train']['lr']:g}; {steps}; seed {c['train']['seed']}"
    )


def _same_training(runs: list) -> list:
    seen, out = {}, []
    for r in runs:
        if r.step:
            continue
        key = json.dumps({s: r.config[s] for s in TRAINING_SECTIONS}, sort_keys=True, default=str)
        if key in seen:
            out.append((seen[key], r.name))
        else:
            seen[key] = r.name
    return out


def sweep(
    path: str,
    overrides: Sequence[str] = (),
    task_index: Optional[int] = None,
    dry_run: bool = False,
    trainer: Optional[Callable] = None,
    out: Any = None,
    wait: bool = False,
) -> int:
    """Run (or resume) the experiment's members, or only ``task_index``, then print the results table to
    ``out``; returns the number of runs that failed (0 = all done). ``trainer`` replaces
    rm_jax.training.run.train in tests. ``wait``: a member held by another process is waited for
    instead of failing."""
    out = out or sys.stdout
    exp = load_experiment(path, overrides)
    plan = expand(exp)
    if task_index is not None and not 0 <= task_index < len(plan.runs):
        raise ConfigError(
            f"--task-index {task_index}: the experiment has {len(plan.runs)} runs (indices 0-{len(plan.runs) - 1})"
        )
    if dry_run:
        print(format_plan(plan), file=out)
        print(f"\nall {len(plan.runs)} run configs validated; nothing was trained (--dry-run)", file=out)
        return 0
    if is_main_process():
        write_json(layout.plan_path(exp.sweep_dir), plan_record(plan))
    selected = plan.runs if task_index is None else [plan.runs[task_index]]
    for r in selected:  # errors about existing folders (an edited experiment) before anything trains
        check_existing(r)
    logger.info(
        f"{exp.path}: {len(plan.runs)} runs in {exp.sweep_dir}"
        + (f"; this task runs #{task_index} ({selected[0].name})" if task_index is not None else "")
    )
    failed: list[str] = []
    for k, r in enumerate(selected, 1):
        blocked = [d for d in r.after if d in failed]
        if blocked:
            logger.info(f"({k}/{len(selected)}) {r.name}: skipped, {blocked[0]} failed")
            failed.append(r.name)
            continue
        st = run_status(r)
        logger.info(f"({k}/{len(selected)}) {r.name}: {'finished, skipped' if st == 'done' else st}")
        try:
            run_one(r, plan, trainer, wait)
        except TrainingError as e:  # the next member may still run; others are real errors
            logger.info(f"{r.name} failed: {e}")
            failed.append(r.name)
    if is_main_process():
        rep = build_report(exp.sweep_dir)
        print_report(rep, out)
        if task_index is not None and rep.missing:
            print(
                f"{len(rep.missing)} of {len(plan.runs)} runs not finished yet; once every task is done run: "
                f"rm-jax report {exp.sweep_dir}",
                file=out,
            )
    if failed:
        print(f"rm-jax sweep: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)
