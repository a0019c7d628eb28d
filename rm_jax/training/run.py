"""``rm-jax train``: one run from a config to a finished run folder.

The run folder it fills is drawn in :mod:`rm_jax.runs.layout`; the folder is held (``LOCK``,
:mod:`rm_jax.runs.lock`) while it trains, and ``DONE`` is written last.

The training loop (:mod:`rm_jax.training.loop`) and the evaluation of its kept checkpoint
(:mod:`rm_jax.training.final_eval`) are separate layers; this module puts them in order.
"""

from __future__ import annotations

import os

import jax

from rm_jax.core.config import RunConfig
from rm_jax.evaluation.yardsticks import YARDSTICKS
from rm_jax.runs import layout
from rm_jax.runs.lock import hold_run_folder_agreed
from rm_jax.training.final_eval import score_rewardbench, score_rewardbench2, score_yardstick, write_run_evaluation
from rm_jax.training.logs import logger
from rm_jax.training.loop import fit
from rm_jax.training.setup import inherit_from_init, maybe_init_distributed


def train(cfg: RunConfig, wait: bool = False) -> str:
    """Train (or resume) the run in ``cfg.run_dir``, evaluate its kept checkpoint; returns the run folder.
    The folder is held for the whole run (one writer at a time; in a multi-host run process 0 holds it and
    every process follows its outcome); another process holding it is an error, or with ``wait`` is waited
    for. With ``wait`` a finished folder (``DONE``, read under the lock) is left as it is: the process that
    waited was a second start of the same run, which the first one finished and evaluated."""
    maybe_init_distributed(cfg)  # before the lock's agreement, which needs jax.distributed when it is enabled
    run_dir = os.path.abspath(cfg.run_dir)
    with hold_run_folder_agreed(run_dir, wait) as finished:
        if wait and finished:
            logger.info(f"{run_dir} is finished (DONE); nothing to train or evaluate (rm-jax eval re-evaluates it)")
            return run_dir
        return _train(cfg)


def _train(cfg: RunConfig) -> str:
    cfg = inherit_from_init(cfg)  # evaluation reads the data as training did
    result = fit(cfg)
    write_run_evaluation(cfg, result)
    if cfg.eval.rewardbench:
        score_rewardbench(cfg, result.run_dir, result.mesh)
    if cfg.eval.rewardbench2:
        score_rewardbench2(cfg, result.run_dir, result.mesh)
    for name in YARDSTICKS:
        if getattr(cfg.eval, name):
            score_yardstick(cfg, result.run_dir, name, result.mesh)
    if jax.process_index() == 0:
        layout.mark_done(result.run_dir, {"steps": result.steps, "best_step": result.kept_step})
    return result.run_dir
