"""The training loop: steps, validation loss, checkpoints and metrics for one run folder.

``fit(cfg)`` trains (or resumes) and returns what the run's evaluation needs (:class:`FitResult`);
:func:`rm_jax.training.run.train` adds that evaluation. The loop knows the objective only through the
jitted step (:mod:`rm_jax.engine.train_step`) and the validation loss below, which is the same objective
computed from predictions.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from rm_jax.core.attributes import resolve_reward_weights
from rm_jax.core.config import RunConfig, dump_yaml
from rm_jax.core.errors import ConfigError, TrainingError
from rm_jax.core.flops import device_peak_flops, flops_per_token
from rm_jax.data.pipeline import Encoded, Loader, eval_batches
from rm_jax.engine.checkpoint import Checkpointer, abstract_with_shardings
from rm_jax.engine.losses import pair_sums
from rm_jax.engine.scoring import Scorer
from rm_jax.engine.train_step import (
    batch_shardings,
    create_state,
    lr_schedule,
    make_eval_sums_fn,
    make_optimizer,
    make_train_step,
    put_batch,
)
from rm_jax.models.hf_io import load_tokenizer
from rm_jax.models.sharding import replicated
from rm_jax.training.logs import MetricsLog, log, write_json_main
from rm_jax.training.setup import (
    build_mesh,
    build_model,
    check_label_probe,
    check_model_path,
    inherit_from_init,
    load_split,
    maybe_init_distributed,
    run_opts,
    tokenizer_path,
)


@dataclass
class FitResult:
    run_dir: str
    steps: int
    kept_step: Optional[int]  # best by validation loss, else the latest
    train_rows: int
    train_examples: int
    val_enc: Optional[Encoded] = None
    val: Optional[dict] = None  # validation_metrics of the kept checkpoint
    val_pred: Optional[np.ndarray] = None  # its predictions [N, A]
    mesh: Any = None


class LMValidator:
    """A causal LM's validation: the training objective (response-token NLL) over the whole split,
    and its perplexity. One compiled function for the split's fixed-shape batches."""

    def __init__(self, cfg: RunConfig, dcfg: Any, mesh: Any, enc: Encoded, pad_id: int):
        d = cfg.data
        self.batches = [
            {k: v for k, v in b.items() if k != "example_index"}
            for b in eval_batches(enc, d.seq_len, d.max_segments, cfg.train.eval_rows, pad_id, d.packing)
        ]
        self.mesh, self.shardings, self.params = mesh, None, None
        self.fn = jax.jit(
            make_eval_sums_fn(dcfg, cfg.loss, d.max_segments if d.packing else 1, mesh), out_shardings=replicated(mesh)
        )

    def __call__(self, params: Any) -> dict:
        total: dict[str, float] = {}
        for b in self.batches:
            if self.shardings is None:
                self.shardings = batch_shardings(self.mesh, b, accum=False)
            for k, v in jax.device_get(self.fn(params, put_batch(b, self.shardings))).items():
                total[k] = total.get(k, 0.0) + float(v)
        loss = total["num"] / total["den"] if total.get("den") else float("nan")
        if "kl_sum" in total:  # SteerLM 2.0: the objective and KL(w || b) over the validation groups
            return {
                "val_loss": loss,
                "val_kl_w_b": total["kl_sum"] / max(total["groups"], 1.0),
                "val_groups": int(total["groups"]),
            }
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 700.0)), "val_tokens": int(total["den"])}


def validation_metrics(cfg: RunConfig, scorer: Any, enc: Encoded) -> tuple[dict, Optional[np.ndarray]]:
    """Validation loss (the training objective) and per-attribute MSE; predictions [N, A]. A causal LM
    (``scorer`` an :class:`LMValidator`) has no predictions."""
    if isinstance(scorer, LMValidator):
        return scorer(scorer.params), None
    d = cfg.data
    pred = scorer.predict(
        enc.ids, d.seq_len, cfg.train.eval_rows, d.max_segments, d.packing, progress=False, desc="validation"
    )
    out: dict[str, Any] = {}
    if cfg.data.kind == "pairs":
        # The training objective itself (rm_jax.engine.losses), on the whole validation set as one "row".
        n = len(enc.units)
        pairs = {
            "pair_chosen": np.arange(0, 2 * n, 2),
            "pair_rejected": np.arange(1, 2 * n, 2),
            "pair_mask": np.ones(n, np.float32),
            "pair_strength": enc.strength,
        }
        w = resolve_reward_weights(cfg.loss.reward_weights, pred.shape[1]).astype(np.float32)
        sums = pair_sums(pred[None], pairs, w, cfg.loss.type, cfg.loss.centering)
        out["val_loss"] = float(sums["num"] / sums["den"]) if n else float("nan")
        out["val_pair_accuracy"] = float(sums["correct"] / sums["den"]) if n else float("nan")
        return out, pred
    w = np.asarray(cfg.loss.attribute_weights, np.float64)
    err = (pred - enc.labels) ** 2 * enc.label_mask
    out["val_loss"] = float((err * w).sum() / max((enc.label_mask * w).sum(), 1e-9))
    for a, name in enumerate(cfg.model.attributes):
        n = enc.label_mask[:, a].sum()
        out[f"val_mse_{name}"] = float(err[:, a].sum() / n) if n else None
    return out, pred


def _restore_order(ckpt: Checkpointer, first: Optional[int]) -> list[int]:
    """``first`` (when given), then every other step, newest first."""
    rest = [s for s in sorted(ckpt.all_steps(), reverse=True) if s != first]
    return ([first] if first is not None else []) + rest


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
        dump_yaml(cfg, os.path.join(run_dir, "config.yaml"))

    tok_path = tokenizer_path(cfg)
    tokenizer = load_tokenizer(tok_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_enc, train_rep = load_split(cfg, cfg.data.train, cfg.data.train_split, tokenizer, subset=True)
    val_enc, val_rep = (
        load_split(cfg, cfg.data.validation, cfg.data.validation_split, tokenizer, subset=False)
        if cfg.data.validation
        else (None, None)
    )
    write_json_main(os.path.join(run_dir, "data_report.json"), {"train": train_rep, "validation": val_rep})
    log(
        f"train: {train_rep['rows_used']} rows -> {len(train_enc.units)} units; "
        f"validation: {val_rep['rows_used'] if val_rep else 0} rows"
    )

    dcfg, params, hf_base = build_model(cfg, mesh, tokenizer)
    if len(tokenizer) > dcfg.vocab_size:
        raise ConfigError(
            f"tokenizer {tok_path!r} has {len(tokenizer)} tokens but the model's vocab_size is {dcfg.vocab_size}"
        )
    kernel = dcfg.attention_kernel()
    meta = {
        "task": cfg.task,
        "decoder": {k: v for k, v in dataclasses.asdict(dcfg).items() if k not in run_opts(cfg)},
        "attributes": list(cfg.model.attributes),
        "tokenizer": os.path.abspath(tok_path) if os.path.exists(tok_path) else tok_path,
        "hf_config": hf_base,
        "template": cfg.data.template,
    }
    write_json_main(os.path.join(run_dir, "model_meta.json"), meta)

    accum = cfg.train.grad_accum
    loader = Loader(
        train_enc,
        cfg.data.seq_len,
        cfg.data.max_segments,
        cfg.train.batch_rows // accum,
        pad_id,
        cfg.data.packing,
        cfg.data.padding_side,
        cfg.train.seed,
        cfg.data.shuffle,
    )
    per_epoch = loader.steps_per_epoch(accum)
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * per_epoch))
    tx = make_optimizer(cfg.train, total)
    schedule = lr_schedule(cfg.train, total)
    state, shard = create_state(dcfg, tx, mesh, params)
    del params  # donated into the state
    abstract = abstract_with_shardings(jax.eval_shape(lambda s: s, state), shard)

    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), cfg.checkpoint)
    try:
        start = 0
        if ckpt.latest_step() is not None:
            start, (state, data_state) = ckpt.first_readable(
                _restore_order(ckpt, ckpt.latest_step()), lambda s: ckpt.restore(s, abstract), log
            )
            loader.set_state(data_state)
            log(f"resumed from step {start} (epoch {data_state['epoch']}, batch {data_state['index']})")
        result = _loop(
            cfg,
            run_dir,
            mesh,
            dcfg,
            kernel,
            state,
            shard,
            tx,
            schedule,
            loader,
            ckpt,
            start,
            total,
            per_epoch,
            train_rep,
            val_enc,
            val_rep,
            pad_id,
            abstract,
        )
        result.train_rows, result.train_examples = train_rep["rows_used"], len(train_enc.ids)
        return result
    finally:
        ckpt.close()


def _loop(
    cfg: RunConfig,
    run_dir: str,
    mesh: Any,
    dcfg: Any,
    kernel: str,
    state: Any,
    shard: Any,
    tx: Any,
    schedule: Any,
    loader: Loader,
    ckpt: Checkpointer,
    start: int,
    total: int,
    per_epoch: int,
    train_rep: dict,
    val_enc: Optional[Encoded],
    val_rep: Optional[dict],
    pad_id: int,
    abstract: Any,
) -> FitResult:
    mlog = MetricsLog(cfg, run_dir, start)
    if start == 0:  # the over-length and bad-row counts, next to the losses they affect
        counts = ("rows_skipped", "truncated", "dropped_overlength")
        mlog.write(
            {
                "step": 0,
                "attention_kernel": kernel,
                **{f"train_{k}": train_rep[k] for k in counts},
                **({f"validation_{k}": val_rep[k] for k in counts} if val_rep else {}),
            }
        )

    accum = cfg.train.grad_accum
    step_fn = jax.jit(
        make_train_step(dcfg, cfg.loss, tx, loader.max_segments, schedule, mesh),
        in_shardings=(shard, None),
        out_shardings=(shard, replicated(mesh)),
        donate_argnums=0,
    )
    if cfg.task != "rm":
        scorer: Any = LMValidator(cfg, dcfg, mesh, val_enc, pad_id) if val_enc is not None else None
        if scorer is not None:
            scorer.params = state["params"]
    else:
        scorer = Scorer(dcfg, state["params"], mesh, pad_id)
    fpt = flops_per_token(dcfg, cfg.data.seq_len)
    peak = device_peak_flops(cfg.logging.peak_flops)
    eval_every = cfg.train.eval_every
    log(
        f"{dcfg.num_params() / 1e6:.2f}M parameters; mesh {dict(mesh.shape)}; attention kernel {kernel}; "
        f"{total} steps ({per_epoch} per epoch); {cfg.train.batch_rows} rows x {cfg.data.seq_len} tokens per step"
    )

    bar = tqdm(
        total=total,
        initial=start,
        desc="train",
        disable=not cfg.logging.progress or jax.process_index() != 0,
        dynamic_ncols=True,
    )
    batch_sh = None
    window_t, window_tok, window_real = time.perf_counter(), 0, 0
    try:
        for step in range(start, total):
            host = loader.next_step(accum)
            host.pop("example_index")
            if batch_sh is None:
                batch_sh = batch_shardings(mesh, host, accum=True)
            state, m = step_fn(state, put_batch(host, batch_sh))
            m = jax.device_get(m)
            if not bool(m["ok"]):
                raise TrainingError(
                    f"non-finite loss or gradient at step {step + 1} (loss={float(m['loss'])}, "
                    f"grad_norm={float(m['grad_norm'])}); the update was not applied and the last good checkpoint "
                    f"is kept in {ckpt.directory}. Lower train.lr or check the data."
                )
            window_tok += host["segment_ids"].size
            window_real += int(m["real_tokens"])
            done = step + 1
            if done % cfg.train.log_every == 0 or done == total or done == start + 1:
                dt = max(time.perf_counter() - window_t, 1e-9)
                rec = {
                    "step": done,
                    "loss": float(m["loss"]),
                    "lr": float(m["lr"]),
                    "grad_norm": float(m["grad_norm"]),
                    "tokens_per_s": window_tok / dt,
                    "real_tokens_per_s": window_real / dt,
                    "epoch": loader.epoch,
                }
                if "attr_mse" in m:
                    rec.update({f"train_mse_{a}": float(v) for a, v in zip(cfg.model.attributes, m["attr_mse"])})
                if "pair_accuracy" in m:
                    rec["train_pair_accuracy"] = float(m["pair_accuracy"])
                if "loss_tokens" in m:
                    rec["loss_tokens"] = int(m["loss_tokens"])
                if "kl_w_b" in m:
                    rec["kl_w_b"] = float(m["kl_w_b"])
                if peak:
                    rec["mfu"] = window_tok / dt * fpt / (peak * jax.device_count())
                mlog.write(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['real_tokens_per_s']:.0f}")
                window_t, window_tok, window_real = time.perf_counter(), 0, 0
            bar.update(1)

            is_eval = val_enc is not None and ((eval_every and done % eval_every == 0) or done == total)
            metrics = None
            if is_eval:
                scorer.params = state["params"]
                val, _ = validation_metrics(cfg, scorer, val_enc)
                metrics = {"val_loss": val["val_loss"]}
                mlog.write({"step": done, **val})
                if jax.process_index() == 0:
                    bar.write(f"step {done}: val_loss {val['val_loss']:.4f}", file=sys.stderr)
            if (
                metrics is not None
                or (cfg.checkpoint.every_steps and done % cfg.checkpoint.every_steps == 0)
                or done == total
            ):
                ckpt.save(done, state, loader.get_state(), metrics)
        ckpt.wait()
    finally:
        bar.close()
        mlog.close()

    # The kept checkpoint: best validation loss, else the latest (falling back past unreadable ones).
    result = FitResult(run_dir, total, ckpt.best_step() or ckpt.latest_step(), 0, 0, val_enc, mesh=mesh)
    if val_enc is not None and result.kept_step is not None:
        result.kept_step, (best_state, _) = ckpt.first_readable(
            _restore_order(ckpt, result.kept_step), lambda s: ckpt.restore(s, abstract), log
        )
        scorer.params = best_state["params"]
        result.val, result.val_pred = validation_metrics(cfg, scorer, val_enc)
        log(
            f"kept checkpoint: step {result.kept_step}, val_loss {result.val['val_loss']:.4f}"
            + (f", perplexity {result.val['val_perplexity']:.2f}" if "val_perplexity" in result.val else "")
        )
    return result
