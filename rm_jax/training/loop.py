"""One run's training: data, model, state and resume wired into a :class:`rm_jax.training.trainer.Trainer`.

``fit(cfg)`` trains (or resumes) and returns what the run's evaluation needs (:class:`FitResult`);
:func:`rm_jax.training.run.train` adds that evaluation. What is trained is a
:class:`rm_jax.training.tasks.Task` (its data, loss config, validation and metric names); what happens
after each step are the hooks of :mod:`rm_jax.training.hooks` (metrics, progress, validation,
checkpoints, in that order). The step itself is the pure function of :mod:`rm_jax.engine.train_step`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import jax
import numpy as np

from rm_jax.core.config import RunConfig, dump_yaml
from rm_jax.core.errors import ConfigError
from rm_jax.core.flops import device_peak_flops, flops_per_token
from rm_jax.data.pipeline import Encoded, Loader
from rm_jax.engine.checkpoint import Checkpointer, abstract_with_shardings, frozen_base
from rm_jax.engine.train_step import (
    batch_shardings,
    create_state,
    lr_schedule,
    make_optimizer,
    make_train_step,
    put_batch,
)
from rm_jax.models.hf_io import load_tokenizer
from rm_jax.models.sharding import replicated
from rm_jax.runs import layout
from rm_jax.training.hooks import (
    CheckpointHook,
    LabelProbeHook,
    MetricsHook,
    ProgressHook,
    RunHooks,
    ValidationHook,
)
from rm_jax.training.logs import MetricsLog, logger, write_json_main
from rm_jax.training.setup import (
    build_mesh,
    build_model,
    check_label_probe,
    check_model_path,
    inherit_from_init,
    maybe_init_distributed,
    run_opts,
    tokenizer_path,
)
from rm_jax.training.tasks import Task, task_for
from rm_jax.training.trainer import Trainer
from rm_jax.training.validators import ModelParts, Validator


@dataclass
class FitResult:
    run_dir: str
    steps: int
    kept_step: Optional[int]  # best by validation loss, else the latest
    train_rows: int
    train_examples: int
    val_enc: Optional[Encoded] = None
    val: Optional[dict] = None  # the task's validation metrics of the kept checkpoint
    val_pred: Optional[np.ndarray] = None  # its predictions [N, A]
    val_probs: Optional[np.ndarray] = None  # a distributional head's level probabilities [N, A, K]
    mesh: Any = None


def _restore_order(ckpt: Checkpointer, first: Optional[int]) -> list[int]:
    """``first`` (when given), then every other step, newest first."""
    rest = [s for s in sorted(ckpt.all_steps(), reverse=True) if s != first]
    return ([first] if first is not None else []) + rest


@dataclass
class Splits:
    """The encoded splits with their data_report.json entries."""

    train: Encoded
    train_report: dict
    val: Optional[Encoded]
    val_report: Optional[dict]


@dataclass
class Optimization:
    """The state to train and what restoring and stepping it needs."""

    state: Any
    shard: Any  # the state's shardings
    abstract: Any  # its shapes with shardings (restores)
    tx: Any
    schedule: Any
    total: int  # the run's last step
    per_epoch: int


def fit(cfg: RunConfig) -> FitResult:
    """Train (or resume) the run in ``cfg.run_dir``."""
    maybe_init_distributed(cfg)
    mesh = build_mesh(cfg)
    check_model_path(cfg)
    check_label_probe(cfg)
    cfg = inherit_from_init(cfg)
    run_dir = os.path.abspath(cfg.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if jax.process_index() == 0:
        dump_yaml(cfg, layout.config_path(run_dir))

    task = task_for(cfg)
    tok_path = tokenizer_path(cfg)
    tokenizer = load_tokenizer(tok_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    data = _load_splits(cfg, task, tokenizer, run_dir)
    parts, params = _build_model(cfg, mesh, tokenizer, tok_path, run_dir, pad_id)

    loader = task.loader(data.train, pad_id)
    opt = _optimization(cfg, parts, params, loader.steps_per_epoch(cfg.train.grad_accum))
    del params  # donated into the state
    if loader.share and not loader.fill:  # shared prompts, the unshared run's steps: rows for the whole run
        rows = loader.fix_shared_rows(opt.total * cfg.train.grad_accum, mesh.shape["data"] * mesh.shape["fsdp"])
        logger.info(f"shared prompts: {rows} rows per micro-batch hold what {loader.rows} rows hold unshared")

    ckpt = Checkpointer(layout.checkpoints_dir(run_dir), cfg.checkpoint)
    try:
        start = 0
        if ckpt.latest_step() is not None:
            # A LoRA run's base is in memory already (attach_lora checked it is the one the run trained on).
            base = frozen_base(opt.state)
            start, (opt.state, data_state) = ckpt.first_readable(
                _restore_order(ckpt, ckpt.latest_step()), lambda s: ckpt.restore(s, opt.abstract, base), logger.info
            )
            del base
            loader.set_state(data_state)
            logger.info(f"resumed from step {start} (epoch {data_state['epoch']}, batch {data_state['index']})")
        result = _train(RunContext(cfg, run_dir, task, parts, data, loader, ckpt, tokenizer), opt, start)
        result.train_rows, result.train_examples = data.train_report["rows_used"], len(data.train.ids)
        return result
    finally:
        ckpt.close()


@dataclass
class RunContext:
    """What the loop of one run works with."""

    cfg: RunConfig
    run_dir: str
    task: Task
    parts: ModelParts
    data: Splits
    loader: Loader
    ckpt: Checkpointer
    tokenizer: Any


def _load_splits(cfg: RunConfig, task: Task, tokenizer: Any, run_dir: str) -> Splits:
    d = cfg.data
    train_enc, train_rep = task.load_split(d.train, d.train_split, tokenizer, subset=True)
    val_enc, val_rep = (
        task.load_split(d.validation, d.validation_split, tokenizer, subset=False) if d.validation else (None, None)
    )
    write_json_main(layout.data_report_path(run_dir), {"train": train_rep, "validation": val_rep})
    logger.info(
        f"train: {train_rep['rows_used']} rows -> {len(train_enc.units)} units; "
        f"validation: {val_rep['rows_used'] if val_rep else 0} rows"
    )
    return Splits(train_enc, train_rep, val_enc, val_rep)


def _build_model(cfg: RunConfig, mesh: Any, tokenizer: Any, tok_path: str, run_dir: str, pad_id: int) -> tuple:
    """(:class:`ModelParts`, parameters on the mesh); writes model_meta.json."""
    dcfg, params, hf_base = build_model(cfg, mesh, tokenizer)
    if len(tokenizer) > dcfg.vocab_size:
        raise ConfigError(
            f"tokenizer {tok_path!r} has {len(tokenizer)} tokens but the model's vocab_size is {dcfg.vocab_size}"
        )
    meta = {
        "task": cfg.task,
        "decoder": {k: v for k, v in dataclasses.asdict(dcfg).items() if k not in run_opts(cfg)},
        "attributes": list(cfg.model.attributes),
        "tokenizer": os.path.abspath(tok_path) if os.path.exists(tok_path) else tok_path,
        "hf_config": hf_base,
        "template": cfg.data.template,
    }
    write_json_main(layout.meta_path(run_dir), meta)
    return ModelParts(dcfg, mesh, pad_id, dcfg.attention_kernel()), params


def _optimization(cfg: RunConfig, parts: ModelParts, params: Any, per_epoch: int) -> Optimization:
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * per_epoch))
    tx = make_optimizer(cfg.train, total)
    schedule = lr_schedule(cfg.train, total)
    state, shard = create_state(parts.dcfg, tx, parts.mesh, params, cfg.train.optimizer_state_memory)
    abstract = abstract_with_shardings(jax.eval_shape(lambda s: s, state), shard)
    return Optimization(state, shard, abstract, tx, schedule, total, per_epoch)


class ShardedStep:
    """The jitted train step (state donated) behind the trainer's host-side interface: the host batch goes
    onto the mesh, the metrics come back to the host."""

    def __init__(self, ctx: RunContext, opt: Optimization):
        mesh = ctx.parts.mesh
        self.mesh, self.shardings = mesh, None
        host_opt = opt.shard["opt_state"] if ctx.cfg.train.optimizer_state_memory == "host" else None
        self.fn = jax.jit(
            make_train_step(
                ctx.parts.dcfg,
                ctx.task.loss,
                opt.tx,
                ctx.loader.max_segments,
                opt.schedule,
                mesh,
                host_opt,
                seed=ctx.cfg.train.seed,
                attributes=ctx.cfg.model.attributes,
            ),
            in_shardings=(opt.shard, None),
            out_shardings=(opt.shard, replicated(mesh)),
            donate_argnums=0,
        )

    def __call__(self, state: Any, host: dict) -> tuple[Any, dict]:
        if self.shardings is None:
            self.shardings = batch_shardings(self.mesh, host, accum=True)
        state, m = self.fn(state, put_batch(host, self.shardings))
        return state, jax.device_get(m)


def _train(ctx: RunContext, opt: Optimization, start: int) -> FitResult:
    cfg, data, parts = ctx.cfg, ctx.data, ctx.parts
    mlog = MetricsLog(cfg, ctx.run_dir, start)
    if start == 0:  # the over-length and bad-row counts, next to the losses they affect
        counts = ("rows_skipped", "truncated", "dropped_overlength")
        mlog.write(
            {
                "step": 0,
                "attention_kernel": parts.kernel,
                **{f"train_{k}": data.train_report[k] for k in counts},
                **({f"validation_{k}": data.val_report[k] for k in counts} if data.val_report else {}),
            }
        )
    trainer = Trainer(ShardedStep(ctx, opt), ctx.loader, cfg.train.grad_accum, ctx.ckpt.directory)
    validator = ctx.task.validator(parts, data.val) if data.val is not None else None
    logger.info(
        f"{parts.dcfg.num_params() / 1e6:.2f}M parameters; mesh {dict(parts.mesh.shape)}; attention kernel "
        f"{parts.kernel}; {opt.total} steps ({opt.per_epoch} per epoch); {cfg.train.batch_rows} rows x "
        f"{cfg.data.seq_len} tokens per step"
    )
    progress = ProgressHook(start, opt.total, cfg.logging.progress)
    hooks = RunHooks(
        metrics=MetricsHook(
            mlog, ctx.task, flops_per_token(parts.dcfg, cfg.data.seq_len), device_peak_flops(cfg.logging.peak_flops)
        ),
        progress=progress,
        validation=ValidationHook(validator, mlog, progress.write) if validator is not None else None,
        checkpoint=CheckpointHook(ctx.ckpt),
        probe=_label_probe_hook(ctx, mlog, progress),
    )
    hooks.register(trainer, cfg)
    try:
        final = trainer.train(opt.state, start, opt.total)
        ctx.ckpt.wait()
    finally:
        progress.close()
        mlog.close()
    base = frozen_base(final)  # a LoRA run's base, for the kept checkpoint's restore (not read from disk again)
    del final  # the rest (all of a full fine-tune's parameters and moments) is freed before that restore
    return _kept(ctx, opt, validator, base)


def _label_probe_hook(ctx: RunContext, mlog: MetricsLog, progress: ProgressHook) -> Optional[LabelProbeHook]:
    probe = ctx.cfg.eval.label_probe
    if not (probe.every and probe.prompts and ctx.data.val is not None):
        return None
    return LabelProbeHook(ctx.cfg, ctx.parts, ctx.tokenizer, mlog, progress.write)


def _kept(ctx: RunContext, opt: Optimization, validator: Optional[Validator], base: Any = None) -> FitResult:
    """The kept checkpoint: best validation loss, else the latest (falling back past unreadable ones).
    ``base``: a LoRA run's frozen base, in memory (None: a LoRA restore re-reads it from its folder)."""
    ckpt = ctx.ckpt
    result = FitResult(ctx.run_dir, opt.total, ckpt.best_step() or ckpt.latest_step(), 0, 0, ctx.data.val)
    result.mesh = ctx.parts.mesh
    if validator is not None and result.kept_step is not None:
        result.kept_step, (best_state, _) = ckpt.first_readable(
            _restore_order(ckpt, result.kept_step), lambda s: ckpt.restore(s, opt.abstract, base), logger.info
        )
        result.val, result.val_pred = validator(best_state["params"])
        result.val_probs = getattr(validator, "probs", None)
        logger.info(ctx.task.kept_line(result.kept_step, result.val))
    return result
