"""Run folders and sweep folders: every file name they hold, spelled here once, and the paths to them.

run_dir/                           (``rm-jax train``; a training member of a sweep)
  config.yaml                      the resolved config
  model_meta.json                  what export and ``model.init_from`` need (architecture, attributes, tokenizer)
  metrics.jsonl                    one JSON object per logged step (train) and per evaluation (val_*)
  data_report.json                 rows read, skipped, truncated and dropped, per split
  tensorboard/                     TensorBoard events (logging.tensorboard)
  checkpoints/                     Orbax: latest and best-by-validation-loss, with the loader position
  checkpoints.unreadable/          damaged steps moved aside (rm_jax.engine.checkpoint names it after checkpoints/)
  eval.json                        metrics of the kept (best) checkpoint on the validation set
  predictions/validation.jsonl     its per-row predictions (re-weighting needs no forward pass)
  predictions/rewardbench.jsonl    eval.rewardbench: per-pair rewards of the kept checkpoint
  lora_base.json                   lora.rank > 0: the frozen base's path, content hash and storage dtype
                                   (spelled in rm_jax.models.lora: engine restores read it, below runs)
  DONE                             written last: the run finished
  LOCK                             who holds the folder while a process works in it (rm_jax.runs.lock)

step folder                        (a ``step:`` member of a sweep)
  step.json, report.json           what ran; what was read, skipped, cut off
  samples.jsonl | groups.jsonl     its output (sample | label)
  steer_eval.json, steer_eval.md, steer_eval.png, steer_samples.jsonl   (steer_eval; also ``rm-jax steer eval``)
  DONE

sweep_dir/
  plan.json                        the expanded experiment
  <member>/                        one run or step folder per member
  results.csv, results.md, results.png, plots/<name>.png   ``rm-jax report``
"""

from __future__ import annotations

import json
import os

from rm_jax.core.files import write_text
from rm_jax.models.lora import BASE_FILE as LORA_BASE  # spelled beside the code that reads it (models sit below runs)

# ---------------------------------------------------------------- run folder
CONFIG = "config.yaml"
MODEL_META = "model_meta.json"
METRICS = "metrics.jsonl"
DATA_REPORT = "data_report.json"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
EVAL = "eval.json"
PREDICTIONS = "predictions"
DONE = "DONE"
LOCK = "LOCK"  # who holds the folder while a process trains in it (rm_jax.runs.lock)
# LORA_BASE (imported above): a LoRA run's frozen base: path, content hash, storage dtype

# ---------------------------------------------------------------- step folder
STEP = "step.json"
STEP_REPORT = "report.json"
SAMPLES = "samples.jsonl"
GROUPS = "groups.jsonl"
STEER_EVAL = "steer_eval.json"
STEER_EVAL_MD = "steer_eval.md"
STEER_EVAL_PLOT = "steer_eval.png"
STEER_SAMPLES = "steer_samples.jsonl"

# ---------------------------------------------------------------- sweep folder
PLAN = "plan.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PLOT = "results.png"
PLOTS = "plots"
RESERVED_IN_SWEEP = (PLAN, PLOTS, RESULTS_CSV, RESULTS_MD, RESULTS_PLOT)  # no member may be named so


def config_path(run_dir: str) -> str:
    return os.path.join(run_dir, CONFIG)


def meta_path(run_dir: str) -> str:
    return os.path.join(run_dir, MODEL_META)


def metrics_path(run_dir: str) -> str:
    return os.path.join(run_dir, METRICS)


def data_report_path(run_dir: str) -> str:
    return os.path.join(run_dir, DATA_REPORT)


def tensorboard_dir(run_dir: str) -> str:
    return os.path.join(run_dir, TENSORBOARD)


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def eval_path(run_dir: str) -> str:
    return os.path.join(run_dir, EVAL)


def predictions_path(run_dir: str, split: str) -> str:
    """``predictions/<split>.jsonl``: ``validation``, ``rewardbench``, ``rewardbench2``, ``rm_bench``,
    ``judgebench`` or ``helpsteer3``."""
    return os.path.join(run_dir, PREDICTIONS, f"{split}.jsonl")


def done_path(run_dir: str) -> str:
    return os.path.join(run_dir, DONE)


def is_done(run_dir: str) -> bool:
    return os.path.isfile(done_path(run_dir))


def mark_done(run_dir: str, record: dict) -> None:
    """Write ``DONE`` (one JSON line), atomically: a crash leaves no half-written marker."""
    write_text(done_path(run_dir), json.dumps(record) + "\n")


def step_path(step_dir: str) -> str:
    return os.path.join(step_dir, STEP)


def step_report_path(step_dir: str) -> str:
    return os.path.join(step_dir, STEP_REPORT)


def plan_path(sweep_dir: str) -> str:
    return os.path.join(sweep_dir, PLAN)


def plots_dir(sweep_dir: str) -> str:
    return os.path.join(sweep_dir, PLOTS)


def plot_path(sweep_dir: str, stem: str) -> str:
    return os.path.join(sweep_dir, PLOTS, f"{stem}.png")
