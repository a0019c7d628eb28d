"""``rm-jax sweep EXPERIMENT.yaml``: train every member of an experiment file, then tabulate and plot."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="rm-jax sweep",
        description="Train every member of an experiment file "
        "(resuming unfinished ones, skipping finished ones), then write results.csv, "
        "results.md and plots in the sweep folder.",
    )
    ap.add_argument("experiment", help="experiment YAML (see docs/experiments.md)")
    ap.add_argument(
        "overrides",
        nargs="*",
        help="key=value applied to base (e.g. train.lr=1e-4); sweep_dir=DIR; sweep.KEY=[v1,v2] replaces an axis",
    )
    ap.add_argument(
        "--task-index",
        type=int,
        default=None,
        help="run only this member (0-based, as --dry-run lists them), e.g. $SLURM_ARRAY_TASK_ID",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the plan and validate every run config")
    ap.add_argument(
        "--wait", action="store_true", help="if another process holds a member's folder, wait for it instead of failing"
    )
    a = ap.parse_intermixed_args(list(argv))
    from rm_jax.sweeps.runner import sweep

    failed = sweep(a.experiment, a.overrides, a.task_index, a.dry_run, out=sys.stdout, wait=a.wait)
    return 1 if failed else 0
