"""``rm-jax train``: one run from a config to a finished run folder.

run_dir/
  config.yaml        the resolved config
  model_meta.json    what export and ``model.init_from`` need (architecture, attributes, tokenizer)
  metrics.jsonl      one JSON object per logged step (train) and per evaluation (val_*)
  data_report.json   rows read, skipped, truncated and dropped, per split
  checkpoints/       Orbax: latest and best-by-validation-loss, with the loader position
  eval.json          metrics of the kept (best) checkpoint on the validation set
  predictions/validation.jsonl   its per-row predictions (re-weighting needs no forward pass)
  DONE               written last: the run finished
  LOCK               who holds the folder while a process trains in it (rm_jax.runs.lock)

The training loop (:mod:`rm_jax.training.loop`) and the evaluation of its kept checkpoint
(:mod:`rm_jax.training.final_eval`) are separate layers; this module puts them in order.
"""

from __future__ import annotations

import json
import os

import jax

from rm_jax.core.config import RunConfig
from rm_jax.runs.lock import hold_run_folder
from rm_jax.training.final_eval import score_rewardbench, write_run_evaluation
from rm_jax.training.loop import fit
from rm_jax.training.setup import inherit_from_init, maybe_init_distributed

DONE_FILE = "DONE"


def train(cfg: RunConfig, wait: bool = False) -> str:
    """Train (or resume) the run in ``cfg.run_dir``, evaluate its kept checkpoint; returns the run folder.
    The folder is held for the whole run (one writer at a time); another process holding it is an error,
    or with ``wait`` is waited for."""
    maybe_init_distributed(cfg)  # before jax.process_index(), which would start jax single-process
    with hold_run_folder(os.path.abspath(cfg.run_dir), wait, enabled=jax.process_index() == 0):
        return _train(cfg)


def _train(cfg: RunConfig) -> str:
    cfg = inherit_from_init(cfg)  # evaluation reads the data as training did
    result = fit(cfg)
    write_run_evaluation(cfg, result)
    if cfg.eval.rewardbench:
        score_rewardbench(cfg, result.run_dir, result.mesh)
    if jax.process_index() == 0:
        with open(os.path.join(result.run_dir, DONE_FILE), "w") as f:
            f.write(json.dumps({"steps": result.steps, "best_step": result.kept_step}) + "\n")
    return result.run_dir
