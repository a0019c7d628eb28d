"""The hooks a training run registers on its :class:`rm_jax.training.trainer.Trainer`, in this order:

1. :class:`MetricsHook`    every ``train.log_every`` steps, the first step of a session and the last: one
                           metrics.jsonl record (+ TensorBoard, + W&B) of the step's metrics, throughput, MFU
2. :class:`ProgressHook`   every step: the progress bar (its postfix from hook 1's record, when it wrote one)
3. :class:`ValidationHook` every ``train.eval_every`` steps and the last: the task's validation metrics into
                           metrics.jsonl and ``step N: val_loss X`` on stderr; leaves ``val`` for step 4
4. :class:`CheckpointHook` every ``checkpoint.every_steps`` steps, the last, and wherever step 3 validated
                           (the validation loss ranks the best checkpoints)
5. :class:`LabelProbeHook` every ``eval.label_probe.every`` steps and the last (when set > 0): the label probe
                           of the training state into metrics.jsonl and a stderr line

Before them, every step, :meth:`MetricsHook.count` adds the step's tokens to the throughput window.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import jax
from tqdm.auto import tqdm

from rm_jax.core.config import RunConfig
from rm_jax.engine.checkpoint import Checkpointer
from rm_jax.policy.load import Policy
from rm_jax.training.final_eval import probe_labels, probe_prompts
from rm_jax.training.logs import MetricsLog
from rm_jax.training.tasks import Task
from rm_jax.training.trainer import StepInfo, Trainer
from rm_jax.training.validators import ModelParts, Validator


class MetricsHook:
    """A train record per logged step. Throughput is over the window since the previous record, so the hook
    counts the tokens of the steps it does not log (``count`` runs every step)."""

    def __init__(
        self,
        mlog: MetricsLog,
        task: Task,
        flops_per_token: float,
        peak: Optional[float],
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.mlog, self.task, self.fpt, self.peak, self.clock = mlog, task, flops_per_token, peak, clock
        self.window_t, self.window_tok, self.window_real = clock(), 0, 0

    def count(self, info: StepInfo) -> None:
        self.window_tok += info.tokens
        self.window_real += info.real_tokens

    def __call__(self, info: StepInfo) -> None:
        dt = max(self.clock() - self.window_t, 1e-9)
        m = info.metrics
        rec = {
            "step": info.step,
            "loss": info.loss,
            "lr": info.lr,
            "grad_norm": float(m["grad_norm"]),
            "tokens_per_s": self.window_tok / dt,
            "real_tokens_per_s": self.window_real / dt,
            "epoch": info.epoch,
            **self.task.train_metrics(m),
        }
        if self.peak:
            rec["mfu"] = self.window_tok / dt * self.fpt / (self.peak * jax.device_count())
        self.mlog.write(rec)
        info.results["train"] = rec
        self.window_t, self.window_tok, self.window_real = self.clock(), 0, 0


class ProgressHook:
    """The tqdm bar on process 0; other hooks print through :meth:`write` so the bar stays intact."""

    def __init__(self, start: int, total: int, enabled: bool):
        self.bar = tqdm(
            total=total,
            initial=start,
            desc="train",
            disable=not enabled or jax.process_index() != 0,
            dynamic_ncols=True,
        )

    def __call__(self, info: StepInfo) -> None:
        rec = info.results.get("train")
        if rec is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['real_tokens_per_s']:.0f}")
        self.bar.update(1)

    def write(self, line: str) -> None:
        if jax.process_index() == 0:
            self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


class ValidationHook:
    """The task's validation of the current parameters."""

    def __init__(self, validator: Validator, mlog: MetricsLog, say: Callable[[str], None]):
        self.validator, self.mlog, self.say = validator, mlog, say

    def __call__(self, info: StepInfo) -> None:
        val, _ = self.validator(info.state["params"])
        self.mlog.write({"step": info.step, **val})
        self.say(f"step {info.step}: val_loss {val['val_loss']:.4f}")
        info.results["val"] = {"val_loss": val["val_loss"]}


class CheckpointHook:
    """The state and the loader's position; with the step's validation loss when it was validated."""

    def __init__(self, ckpt: Checkpointer):
        self.ckpt = ckpt

    def __call__(self, info: StepInfo) -> None:
        self.ckpt.save(info.step, info.state, info.loader.get_state(), info.results.get("val"))

    @staticmethod
    def validated(info: StepInfo) -> bool:
        return "val" in info.results


class LabelProbeHook:
    """``eval.label_probe`` on the training state (a policy's run with ``eval.label_probe.every`` > 0): mean
    response tokens and characters per level into metrics.jsonl and one stderr line. eval.json keeps the
    probe of the kept checkpoint (:func:`rm_jax.training.final_eval.label_probe`); this shows its course."""

    def __init__(self, cfg: RunConfig, parts: ModelParts, tokenizer: Any, mlog: MetricsLog, say: Callable[[str], None]):
        self.cfg, self.parts, self.tokenizer, self.mlog, self.say = cfg, parts, tokenizer, mlog, say
        self.prompts = probe_prompts(cfg)

    def __call__(self, info: StepInfo) -> None:
        p = self.parts
        policy = Policy(p.dcfg, info.state["params"], self.tokenizer, self.cfg.data.template, p.mesh)
        out = probe_labels(self.cfg, policy, self.prompts)
        name = f"label_probe_{out['attribute']}"
        rec: dict = {"step": info.step}
        for level, v in out["levels"].items():
            rec[f"{name}_{level}_tokens"] = v["mean_response_tokens"]
            rec[f"{name}_{level}_chars"] = v["mean_response_chars"]
        rec["label_probe_higher_level_longer"] = out["higher_level_longer"]
        self.mlog.write(rec)
        levels = ", ".join(f"{level}: {v['mean_response_tokens']:.1f} tokens" for level, v in out["levels"].items())
        self.say(f"step {info.step}: label probe {out['attribute']} {levels}")


@dataclass
class RunHooks:
    """A run's hooks; :meth:`register` adds them in the documented order."""

    metrics: MetricsHook
    progress: ProgressHook
    validation: Optional[ValidationHook]  # None without a validation split
    checkpoint: CheckpointHook
    probe: Optional[LabelProbeHook] = None  # with eval.label_probe.every > 0

    def register(self, trainer: Trainer, cfg: RunConfig) -> None:
        trainer.add_hook(self.metrics.count, every=1, name="count_tokens")
        trainer.add_hook(self.metrics, every=cfg.train.log_every, first=True, name="metrics")
        trainer.add_hook(self.progress, every=1, name="progress")
        if self.validation is not None:
            trainer.add_hook(self.validation, every=cfg.train.eval_every, name="validation")
        trainer.add_hook(
            self.checkpoint, every=cfg.checkpoint.every_steps, when=CheckpointHook.validated, name="checkpoint"
        )
        if self.probe is not None:
            trainer.add_hook(self.probe, every=cfg.eval.label_probe.every, name="label_probe")
