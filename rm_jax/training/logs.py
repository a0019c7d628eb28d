"""What a run reports while it trains: stderr lines and metrics.jsonl (+ TensorBoard, + W&B)."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax

from rm_jax.core.config import RunConfig, to_dict
from rm_jax.core.console import get_logger
from rm_jax.core.files import write_json
from rm_jax.runs import layout

logger = get_logger("training")


class MetricsLog:
    """metrics.jsonl (+ TensorBoard, + W&B) on process 0. On resume, lines past the restored
    step are dropped so the file holds each step once."""

    def __init__(self, cfg: RunConfig, run_dir: str, resume_step: int):
        self.main = jax.process_index() == 0
        self.path = layout.metrics_path(run_dir)
        self.tb = self.wandb = None
        if not self.main:
            return
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                lines = [ln for ln in f if ln.strip()]
            kept = [ln for ln in lines if _json_step(ln) is not None and _json_step(ln) <= resume_step]
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)
        if cfg.logging.tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(layout.tensorboard_dir(run_dir))
            except ImportError:
                logger.info("tensorboardX not installed: no TensorBoard events")
        if cfg.logging.wandb:
            try:
                import wandb

                self.wandb = wandb.init(
                    project=cfg.logging.wandb_project,
                    config=to_dict(cfg),
                    name=os.path.basename(os.path.abspath(run_dir)),
                    resume="allow",
                )
            except ImportError:
                logger.info("logging.wandb=true but wandb is not installed: skipping W&B")

    def write(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and v is not None:
                if self.tb is not None:
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(record, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _json_step(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def write_json_main(path: str, obj: Any) -> None:
    """Atomically, by process 0 only (every process of a multi-host run gets here)."""
    if jax.process_index() == 0:
        write_json(path, obj)
