"""``rm-jax train``: one run from a config to a run folder.

run_dir/
  config.yaml        the resolved config
  model_meta.json    what export and ``model.init_from`` need (architecture, attributes, tokenizer)
  metrics.jsonl      one JSON object per logged step (train) and per evaluation (val_*)
  data_report.json   rows read, skipped, truncated and dropped, per split
  checkpoints/       Orbax: latest and best-by-validation-loss, with the loader position
  eval.json          metrics of the kept (best) checkpoint on the validation set
  predictions/validation.jsonl   its per-row predictions (re-weighting needs no forward pass)
  DONE               written last: the run finished
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from rm_jax.attributes import ATTRIBUTES, resolve_reward_weights
from rm_jax.checkpoint import Checkpointer, abstract_with_shardings
from rm_jax.config import ConfigError, RunConfig, dump_yaml, to_dict
from rm_jax.data.pipeline import (Encoded, Loader, bundled_tokenizer_path, encode_helpsteer, encode_pairs,
                                  resolve_source, subset_prompts)
from rm_jax.data.sources import load_helpsteer, load_pairs
from rm_jax.files import write_json, write_jsonl
from rm_jax.losses import pair_sums
from rm_jax.hf_io import (LoadedModel, decoder_config_from_hf, load_hf_reward_model, load_tokenizer, read_hf_config,
                          resolve_model_dir)
from rm_jax.metrics import helpsteer_report
from rm_jax.models import abstract_params, init_params, param_shardings_for
from rm_jax.models.llama import DecoderConfig
from rm_jax.scoring import Scorer
from rm_jax.sharding import MeshError, make_mesh, replicated
from rm_jax.step import batch_shardings, create_state, lr_schedule, make_optimizer, make_train_step, put_batch

# bf16 dense peak per device, for MFU; pass logging.peak_flops for anything else.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12,
              "TPU v4": 275e12, "TPU v6 lite": 918e12, "L4": 121e12, "A10G": 125e12}


class TrainingError(RuntimeError):
    pass


def log(msg: str) -> None:
    if jax.process_index() == 0:
        print(f"[rm_jax] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- setup pieces

def maybe_init_distributed(cfg: RunConfig) -> None:
    d = cfg.distributed
    if not d.enabled or jax.distributed.is_initialized():
        return
    kwargs = {k: v for k, v in dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                                    process_id=d.process_id, local_device_ids=d.local_device_ids).items()
              if v is not None}
    jax.distributed.initialize(**kwargs)


def build_mesh(cfg: RunConfig) -> Any:
    try:
        devices = jax.devices()
        if cfg.mesh.num_devices:
            if cfg.mesh.num_devices > len(devices):
                raise MeshError(f"mesh.num_devices={cfg.mesh.num_devices} but only {len(devices)} devices exist")
            devices = devices[:cfg.mesh.num_devices]
        mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices)
    except MeshError as e:
        raise ConfigError(str(e)) from None
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = cfg.train.batch_rows // cfg.train.grad_accum
    if micro % dp:
        raise ConfigError(f"train.batch_rows / train.grad_accum = {micro} rows per micro-batch does not divide over "
                          f"the data-parallel size data x fsdp = {dp}")
    if cfg.train.eval_rows % dp:
        raise ConfigError(f"train.eval_rows = {cfg.train.eval_rows} does not divide over data x fsdp = {dp}")
    return mesh


def tokenizer_path(cfg: RunConfig) -> str:
    return cfg.model.tokenizer or cfg.model.path or bundled_tokenizer_path()


def check_model_path(cfg: RunConfig) -> None:
    """Fail before any compilation or data work when the model folder is wrong."""
    if cfg.model.path:
        path = resolve_model_dir(cfg.model.path)
        decoder_config_from_hf(read_hf_config(path), os.path.join(path, "config.json"))
    if cfg.model.init_from and not os.path.exists(os.path.join(cfg.model.init_from, "model_meta.json")):
        raise ConfigError(f"model.init_from={cfg.model.init_from!r}: not a finished rm_jax run folder (no model_meta.json)")


def _run_opts(cfg: RunConfig) -> dict:
    return dict(dtype=cfg.model.dtype, remat=cfg.model.remat, scan_layers=cfg.model.scan_layers,
                attention=cfg.model.attention, attention_block=cfg.model.attention_block)


def scratch_config(cfg: RunConfig, vocab_size: int) -> DecoderConfig:
    arch = dict(cfg.model.arch)
    arch.setdefault("vocab_size", vocab_size)
    arch.setdefault("head_dim", arch.get("hidden_size", 4096) // arch.get("num_attention_heads", 32))
    arch.setdefault("num_key_value_heads", arch.get("num_attention_heads", 32))
    fields = {f.name for f in dataclasses.fields(DecoderConfig)}
    for k in arch:
        if k not in fields or k in _run_opts(cfg) or k == "num_labels":
            raise ConfigError(f"unknown config key 'model.arch.{k}'")
    try:
        return DecoderConfig(num_labels=len(cfg.model.attributes), **arch, **_run_opts(cfg))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.arch: {e}") from None


def build_model(cfg: RunConfig, mesh: Any, tokenizer: Any) -> tuple[DecoderConfig, Any, Optional[dict]]:
    """(decoder config, params on the mesh, HF base config or None)."""
    if cfg.model.init_from:
        meta = read_meta(cfg.model.init_from)
        dcfg = DecoderConfig(**{**meta["decoder"], **_run_opts(cfg)})
        if meta["attributes"] != list(cfg.model.attributes):
            raise ConfigError(f"model.init_from: that run's attributes {meta['attributes']} differ from model.attributes")
        params = restore_run_params(cfg.model.init_from, dcfg, mesh)
        log(f"initialised from {cfg.model.init_from}")
        return dcfg, params, meta.get("hf_config")
    if cfg.model.path:
        lm: LoadedModel = load_hf_reward_model(cfg.model.path, mesh, seed=cfg.model.seed,
                                               attribute_names=cfg.model.attributes, **_run_opts(cfg))
        for n in lm.notes:
            log(n)
        log(f"loaded {cfg.model.path} ({'head loaded' if lm.head_loaded else 'new head'})")
        return lm.cfg, lm.params, lm.hf_config
    dcfg = scratch_config(cfg, len(tokenizer))
    return dcfg, init_params(dcfg, mesh, cfg.model.seed), None


def read_meta(run_dir: str) -> dict:
    path = os.path.join(run_dir, "model_meta.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: not an rm_jax run folder (no model_meta.json)") from None


def restore_run_params(run_dir: str, dcfg: DecoderConfig, mesh: Any, step: Optional[int] = None) -> Any:
    """Parameters of a run's best checkpoint (else its latest), placed on ``mesh``."""
    from rm_jax.config import CheckpointConfig
    ck = Checkpointer(os.path.join(run_dir, "checkpoints"), CheckpointConfig(async_save=False))
    try:
        step = step if step is not None else (ck.best_step() or ck.latest_step())
        if step is None:
            raise ConfigError(f"{run_dir}: has no checkpoint")
        target = abstract_with_shardings(abstract_params(dcfg), param_shardings_for(dcfg, mesh))
        return ck.restore_params(step, target)
    finally:
        ck.close()


def load_split(cfg: RunConfig, source: Optional[str], split: str, tokenizer: Any, subset: bool) -> tuple[Encoded, dict]:
    src = resolve_source(source)
    d = cfg.data
    if d.kind == "pairs":
        res = load_pairs(src, split, on_bad_row=d.on_bad_row)
    else:
        res = load_helpsteer(src, split, on_bad_row=d.on_bad_row)
    rows = res.rows
    if subset and (d.fraction < 1 or d.max_prompts is not None):
        rows = [rows[i] for i in subset_prompts(rows, d.fraction, d.max_prompts, d.subset_seed)]
    if d.kind == "pairs":
        enc = encode_pairs(rows, tokenizer, d.seq_len, d.template, d.overlength, len(cfg.model.attributes))
    else:
        enc = encode_helpsteer(rows, tokenizer, d.seq_len, d.template, d.overlength, cfg.model.attributes)
    report = {"source": source, "split": split, "rows_read": len(res.rows) + len(res.skipped),
              "rows_skipped": len(res.skipped), "rows_used": len(rows), "truncated": enc.report.truncated,
              "dropped_overlength": enc.report.dropped, "examples": len(enc.ids),
              "skipped": [list(s) for s in res.skipped[:100]]}
    if res.skipped:
        log(f"{source} [{split}]: skipped {len(res.skipped)} bad rows (first: {res.skipped[0]})")
    if enc.report.truncated or enc.report.dropped:
        log(f"{source} [{split}]: over-length policy {d.overlength!r}: {enc.report.truncated} truncated, "
            f"{enc.report.dropped} dropped (seq_len {d.seq_len})")
    return enc, report


def score_rewardbench(cfg: RunConfig, run_dir: str) -> dict:
    """RewardBench-format pairs scored by the run's kept checkpoint. The per-pair attribute
    predictions go to predictions/rewardbench.jsonl, so every reward weighting is scored from them
    without another forward pass; returns the metrics under eval.reward_weights[0]."""
    from rm_jax.data.sources import load_pairs
    from rm_jax.evaluate import evaluate_rewardbench, rewardbench_records
    from rm_jax.runs import load_scoring_model
    model = load_scoring_model(run_dir, mesh=build_mesh(cfg), dtype=cfg.model.dtype)
    rows = load_pairs(resolve_source(cfg.eval.rewardbench), cfg.eval.rewardbench_split,
                      on_bad_row=cfg.data.on_bad_row).rows
    weights = cfg.eval.reward_weights[0] if cfg.eval.reward_weights else None
    report, chosen, rejected = evaluate_rewardbench(model, rows, weights, seq_len=cfg.data.seq_len,
                                                    batch_rows=cfg.train.eval_rows, max_segments=cfg.data.max_segments,
                                                    overlength=cfg.data.overlength, progress=cfg.logging.progress)
    if jax.process_index() == 0:
        write_jsonl(os.path.join(run_dir, "predictions", "rewardbench.jsonl"),
                    rewardbench_records(rows, chosen, rejected, list(model.attributes)))
    return report


def flops_per_token(dcfg: DecoderConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding params) + attention (12 x layers x heads x head_dim x seq_len,
    halved for the causal mask). See docs/performance.md."""
    n = dcfg.num_params(include_embedding=False)
    attn = 12 * dcfg.num_hidden_layers * dcfg.num_attention_heads * dcfg.head_dim * seq_len / 2
    return 6 * n + attn


def device_peak_flops(cfg: RunConfig) -> Optional[float]:
    if cfg.logging.peak_flops:
        return cfg.logging.peak_flops
    kind = jax.devices()[0].device_kind
    for k, v in PEAK_FLOPS.items():
        if k.lower() in kind.lower():
            return v
    return None


# ---------------------------------------------------------------- logging sinks

class MetricsLog:
    """metrics.jsonl (+ TensorBoard, + W&B) on process 0. On resume, lines past the restored
    step are dropped so the file holds each step once."""

    def __init__(self, cfg: RunConfig, run_dir: str, resume_step: int):
        self.main = jax.process_index() == 0
        self.path = os.path.join(run_dir, "metrics.jsonl")
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
                self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:
                log("tensorboardX not installed: no TensorBoard events")
        if cfg.logging.wandb:
            try:
                import wandb
                self.wandb = wandb.init(project=cfg.logging.wandb_project, config=to_dict(cfg),
                                        name=os.path.basename(os.path.abspath(run_dir)), resume="allow")
            except ImportError:
                log("logging.wandb=true but wandb is not installed: skipping W&B")

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


def write_json_atomic(path: str, obj: Any) -> None:
    if jax.process_index() == 0:
        write_json(path, obj)


# ---------------------------------------------------------------- evaluation

def validation_metrics(cfg: RunConfig, scorer: Scorer, enc: Encoded) -> tuple[dict, np.ndarray]:
    """Validation loss (the training objective) and per-attribute MSE; predictions [N, A]."""
    d = cfg.data
    pred = scorer.predict(enc.ids, d.seq_len, cfg.train.eval_rows, d.max_segments, d.packing,
                          progress=False, desc="validation")
    out: dict[str, Any] = {}
    if cfg.data.kind == "pairs":
        # The training objective itself (rm_jax.losses), on the whole validation set as one "row".
        n = len(enc.units)
        pairs = {"pair_chosen": np.arange(0, 2 * n, 2), "pair_rejected": np.arange(1, 2 * n, 2),
                 "pair_mask": np.ones(n, np.float32), "pair_strength": enc.strength}
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


def write_predictions(path: str, enc: Encoded, pred: np.ndarray, attributes: list) -> None:
    if jax.process_index() != 0:
        return
    write_jsonl(path, ({"row": int(enc.source_rows[i]), "group": int(enc.group[i]),
                        "pred": {a: float(pred[i, j]) for j, a in enumerate(attributes)},
                        "label": {a: (float(enc.labels[i, j]) if enc.label_mask[i, j] else None)
                                  for j, a in enumerate(attributes)}} for i in range(len(enc.ids))))


def full_eval(cfg: RunConfig, enc: Encoded, pred: np.ndarray, val: dict, step: int) -> dict:
    result: dict[str, Any] = {"step": step, **val}
    if cfg.data.kind == "helpsteer":
        n = len(cfg.model.attributes)
        weights = {str(w): w for w in cfg.eval.reward_weights} if n == len(ATTRIBUTES) else {}
        rep = helpsteer_report(pred, enc.labels, enc.label_mask, enc.group, weights, cfg.model.attributes)
        result.update(per_attribute=rep["per_attribute"], pairwise=rep["pairwise"])
    return result


# ---------------------------------------------------------------- the run

def train(cfg: RunConfig) -> str:
    """Train (or resume) the run in ``cfg.run_dir``; returns the run folder."""
    maybe_init_distributed(cfg)
    mesh = build_mesh(cfg)
    check_model_path(cfg)
    run_dir = os.path.abspath(cfg.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if jax.process_index() == 0:
        dump_yaml(cfg, os.path.join(run_dir, "config.yaml"))

    tok_path = tokenizer_path(cfg)
    tokenizer = load_tokenizer(tok_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_enc, train_rep = load_split(cfg, cfg.data.train, cfg.data.train_split, tokenizer, subset=True)
    val_enc, val_rep = (load_split(cfg, cfg.data.validation, cfg.data.validation_split, tokenizer, subset=False)
                        if cfg.data.validation else (None, None))
    write_json_atomic(os.path.join(run_dir, "data_report.json"), {"train": train_rep, "validation": val_rep})
    log(f"train: {train_rep['rows_used']} rows -> {len(train_enc.units)} units; "
        f"validation: {val_rep['rows_used'] if val_rep else 0} rows")

    dcfg, params, hf_base = build_model(cfg, mesh, tokenizer)
    if len(tokenizer) > dcfg.vocab_size:
        raise ConfigError(f"tokenizer {tok_path!r} has {len(tokenizer)} tokens but the model's vocab_size is {dcfg.vocab_size}")
    meta = {"decoder": {k: v for k, v in dataclasses.asdict(dcfg).items()
                        if k not in _run_opts(cfg)},
            "attributes": list(cfg.model.attributes), "tokenizer": os.path.abspath(tok_path) if os.path.exists(tok_path) else tok_path,
            "hf_config": hf_base, "template": cfg.data.template}
    write_json_atomic(os.path.join(run_dir, "model_meta.json"), meta)

    accum = cfg.train.grad_accum
    loader = Loader(train_enc, cfg.data.seq_len, cfg.data.max_segments, cfg.train.batch_rows // accum, pad_id,
                    cfg.data.packing, cfg.data.padding_side, cfg.train.seed, cfg.data.shuffle)
    per_epoch = loader.steps_per_epoch(accum)
    total = cfg.train.max_steps or max(1, math.ceil(cfg.train.epochs * per_epoch))
    tx = make_optimizer(cfg.train, total)
    schedule = lr_schedule(cfg.train, total)
    state, shard = create_state(dcfg, tx, mesh, params)
    del params  # donated into the state

    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), cfg.checkpoint)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        state, data_state = ckpt.restore(latest, abstract_with_shardings(jax.eval_shape(lambda s: s, state), shard))
        loader.set_state(data_state)
        start = latest
        log(f"resumed from step {latest} (epoch {data_state['epoch']}, batch {data_state['index']})")
    mlog = MetricsLog(cfg, run_dir, start)
    if start == 0:  # the over-length and bad-row counts, next to the losses they affect
        mlog.write({"step": 0, **{f"train_{k}": train_rep[k] for k in ("rows_skipped", "truncated", "dropped_overlength")},
                    **({f"validation_{k}": val_rep[k] for k in ("rows_skipped", "truncated", "dropped_overlength")}
                       if val_rep else {})})

    max_segments = loader.max_segments
    step_fn = jax.jit(make_train_step(dcfg, cfg.loss, tx, max_segments, schedule, mesh),
                      in_shardings=(shard, None), out_shardings=(shard, replicated(mesh)), donate_argnums=0)
    scorer = Scorer(dcfg, state["params"], mesh, pad_id)
    fpt = flops_per_token(dcfg, cfg.data.seq_len)
    peak = device_peak_flops(cfg)
    eval_every = cfg.train.eval_every
    log(f"{dcfg.num_params() / 1e6:.2f}M parameters; mesh {dict(mesh.shape)}; {total} steps "
        f"({per_epoch} per epoch); {cfg.train.batch_rows} rows x {cfg.data.seq_len} tokens per step")

    bar = tqdm(total=total, initial=start, desc="train", disable=not cfg.logging.progress or jax.process_index() != 0,
               dynamic_ncols=True)
    batch_sh = None
    window_t, window_tok, window_real = time.perf_counter(), 0, 0
    last_val: Optional[dict] = None
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
                    f"is kept in {ckpt.directory}. Lower train.lr or check the data.")
            window_tok += host["segment_ids"].size
            window_real += int(m["real_tokens"])
            done = step + 1
            if done % cfg.train.log_every == 0 or done == total or done == start + 1:
                dt = max(time.perf_counter() - window_t, 1e-9)
                rec = {"step": done, "loss": float(m["loss"]), "lr": float(m["lr"]),
                       "grad_norm": float(m["grad_norm"]), "tokens_per_s": window_tok / dt,
                       "real_tokens_per_s": window_real / dt, "epoch": loader.epoch}
                if "attr_mse" in m:
                    rec.update({f"train_mse_{a}": float(v) for a, v in zip(cfg.model.attributes, m["attr_mse"])})
                if "pair_accuracy" in m:
                    rec["train_pair_accuracy"] = float(m["pair_accuracy"])
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
                last_val, _ = validation_metrics(cfg, scorer, val_enc)
                metrics = {"val_loss": last_val["val_loss"]}
                mlog.write({"step": done, **last_val})
                if jax.process_index() == 0:
                    bar.write(f"step {done}: val_loss {last_val['val_loss']:.4f}", file=sys.stderr)
            if metrics is not None or (cfg.checkpoint.every_steps and done % cfg.checkpoint.every_steps == 0) \
                    or done == total:
                ckpt.save(done, state, loader.get_state(), metrics)
        ckpt.wait()
    finally:
        bar.close()
        mlog.close()

    # The kept checkpoint: best validation loss, else the latest.
    best = ckpt.best_step() or ckpt.latest_step()
    if val_enc is not None and best is not None:
        abstract = abstract_with_shardings(jax.eval_shape(lambda s: s, state), shard)
        best_state, _ = ckpt.restore(best, abstract)
        scorer.params = best_state["params"]
        val, pred = validation_metrics(cfg, scorer, val_enc)
        result = full_eval(cfg, val_enc, pred, val, best)
        result["train_rows"] = train_rep["rows_used"]
        result["train_examples"] = len(train_enc.ids)
        write_predictions(os.path.join(run_dir, "predictions", "validation.jsonl"), val_enc, pred,
                          list(cfg.model.attributes))
        write_json_atomic(os.path.join(run_dir, "eval.json"), result)
        log(f"kept checkpoint: step {best}, val_loss {val['val_loss']:.4f}")
    ckpt.close()
    if cfg.eval.rewardbench:
        rb = score_rewardbench(cfg, run_dir)
        if os.path.exists(os.path.join(run_dir, "eval.json")) and jax.process_index() == 0:
            with open(os.path.join(run_dir, "eval.json"), encoding="utf-8") as f:
                result = json.load(f)
            result["rewardbench"] = rb
            write_json_atomic(os.path.join(run_dir, "eval.json"), result)
    if jax.process_index() == 0:
        with open(os.path.join(run_dir, "DONE"), "w") as f:
            f.write(json.dumps({"steps": total, "best_step": best}) + "\n")
    return run_dir

