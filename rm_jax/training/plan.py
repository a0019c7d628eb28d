"""Will a run config fit its devices? The real train step (LoRA, remat, scan, mesh and all) compiled on abstract
shapes for the configured mesh, and XLA's buffer assignment read back: per-device bytes of parameters,
optimizer state and temporaries, whether the total fits, and the largest ``train.batch_rows`` that does
(bisection over compiles). Nothing is allocated, so a 70B config is sized on a CPU with fake devices.

The architecture comes from, in order: ``model.path``'s config.json (a local folder), the local HF hub cache,
the table of models the shipped experiment files name (rm_jax.models.known_models), or ``model.arch``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rm_jax.core.config import OptimizerStateMemory, RunConfig
from rm_jax.core.errors import ConfigError
from rm_jax.engine.train_step import (
    batch_shardings,
    init_state,
    lr_schedule,
    make_optimizer,
    make_train_step,
    state_shardings,
)
from rm_jax.models import abstract_params, param_shardings_for
from rm_jax.models.hf_io import decoder_config_from_hf, read_hf_config
from rm_jax.models.known_models import known_config
from rm_jax.models.llama import DecoderConfig
from rm_jax.models.lora import cast_frozen, split_trainable
from rm_jax.models.sharding import make_mesh, replicated
from rm_jax.runs import layout
from rm_jax.training.setup import (
    init_from_config,
    lora_opts,
    model_head,
    run_opts,
    scratch_config,
    tokenizer_path,
)
from rm_jax.training.tasks import step_batch_spec, task_for

GiB = 2**30


def parse_bytes(text: str) -> int:
    """'80GiB', '141GB', '96G', '1.5TiB', or a plain number of bytes."""
    t = text.strip().replace(" ", "")
    units = {"tib": 2**40, "gib": GiB, "mib": 2**20, "tb": 10**12, "gb": 10**9, "mb": 10**6, "t": 2**40, "g": GiB}
    for u, f in units.items():
        if t.lower().endswith(u):
            try:
                return int(float(t[: -len(u)]) * f)
            except ValueError:
                break
    try:
        return int(float(t))
    except ValueError:
        raise ConfigError(f"device memory {text!r}: write a size like 80GiB, 141GB or 96G") from None


def hf_architecture(path: str) -> tuple[dict, str]:
    """(config.json, where it came from) for a local folder, a hub id in the local cache, or the table."""
    if os.path.isdir(path):
        return read_hf_config(path), os.path.join(path, "config.json")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # not a valid repo id
        cached = None
    if isinstance(cached, str) and os.path.isfile(cached):
        return read_hf_config(os.path.dirname(cached)), cached
    table = known_config(path)
    if table is not None:
        return table, f"rm_jax's table of known models ({path})"
    raise ConfigError(
        f"model.path={path!r}: no local folder, nothing in the local hub cache, and not in rm_jax's table of "
        f"known models; give a folder with its config.json, or model.arch"
    )


def planned_decoder(cfg: RunConfig) -> tuple[DecoderConfig, str]:
    """The DecoderConfig a run of ``cfg`` trains (architecture, head, run options, LoRA) and its source."""
    head = {"head": "lm"} if model_head(cfg) == "lm" else {}
    if cfg.model.init_from:  # the earlier run's architecture (lora.rank with init_from is refused by the config)
        dcfg, _ = init_from_config(cfg)
        where = layout.meta_path(cfg.model.init_from)
    elif cfg.model.path:
        hf, where = hf_architecture(cfg.model.path)
        hf = dict(hf, num_labels=len(cfg.model.attributes))
        dcfg = decoder_config_from_hf(hf, where, **head, **run_opts(cfg))
    elif cfg.model.arch:
        from rm_jax.models.hf_io import load_tokenizer

        where = "model.arch"  # a new model's vocabulary is its tokenizer's, as training builds it
        dcfg = scratch_config(cfg, len(load_tokenizer(tokenizer_path(cfg))))
    else:
        raise ConfigError("plan: set model.path, model.arch or model.init_from")
    return dcfg.replace(**lora_opts(cfg)), where


def _device_bytes(tree: Any, shardings: Any) -> int:
    """Bytes one device holds of ``tree`` (abstract arrays) under ``shardings`` (the most loaded device)."""
    total = 0
    for a, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings, is_leaf=lambda x: hasattr(x, "spec"))):
        total += int(np.prod(s.shard_shape(a.shape), dtype=np.int64)) * jnp.dtype(a.dtype).itemsize
    return total


def _abstract_batch(cfg: RunConfig, micro_rows: int) -> dict:
    """One step's batch as abstract arrays: the shapes and dtypes the task's own loader gives the step."""
    return {k: jax.ShapeDtypeStruct(shape, dt) for k, (shape, dt) in step_batch_spec(task_for(cfg), micro_rows).items()}


@dataclasses.dataclass
class StepMemory:
    batch_rows: int
    params: int  # per device: parameters (frozen base in its storage dtype, trainable float32)
    gradients: int  # per device: float32 gradients of the trainable leaves (XLA counts them in temporaries)
    optimizer: int  # per device: optimizer state
    temporaries: int  # per device: XLA's temp buffers (activations, gradients, workspace)
    total: int  # per device: arguments + outputs not aliased to them + temporaries (device memory only)
    compile_s: float
    optimizer_memory: OptimizerStateMemory = "device"  # where the optimizer state lives between steps
    host: int = 0  # per device: bytes in host memory (the optimizer state when it lives there)
    host_from: str = ""  # where the host figure comes from


def step_memory(cfg: RunConfig, dcfg: DecoderConfig, mesh: Any, batch_rows: int) -> StepMemory:
    """The train step of ``cfg`` compiled for ``batch_rows`` rows on ``mesh`` (abstract: nothing runs)."""
    total_steps = 1000
    tx = make_optimizer(cfg.train, total_steps)
    params = abstract_params(dcfg)
    if dcfg.lora_rank:
        params = jax.eval_shape(lambda p: cast_frozen(dcfg, p, cfg.lora.base_dtype), params)
    pshard = param_shardings_for(dcfg, mesh)
    state = jax.eval_shape(lambda p: init_state(dcfg, tx, p), params)
    memory = cfg.train.optimizer_state_memory
    shard = state_shardings(state, pshard, mesh, memory)
    max_segments = cfg.data.max_segments if cfg.data.packing else 1
    batch = _abstract_batch(cfg, batch_rows // cfg.train.grad_accum)
    bshard = batch_shardings(mesh, batch, accum=True)
    step = jax.jit(
        make_train_step(
            dcfg,
            cfg.loss,
            tx,
            max_segments,
            lr_schedule(cfg.train, total_steps),
            mesh,
            shard["opt_state"] if memory == "host" else None,
            seed=cfg.train.seed,
            attributes=cfg.model.attributes,
        ),
        in_shardings=(shard, bshard),
        out_shardings=(shard, replicated(mesh)),
        donate_argnums=0,
    )
    t = time.perf_counter()
    m = step.lower(state, batch).compile().memory_analysis()
    compile_s = time.perf_counter() - t
    trainable, _ = split_trainable(dcfg, state["params"])
    tshard, _ = split_trainable(dcfg, shard["params"])
    grads = sum(
        int(np.prod(s.shard_shape(a.shape), dtype=np.int64)) * 4
        for a, s in zip(jax.tree.leaves(trainable), jax.tree.leaves(tshard, is_leaf=lambda x: hasattr(x, "spec")))
    )
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    optimizer = _device_bytes(state["opt_state"], shard["opt_state"])
    host, host_from = 0, ""
    if memory == "host":
        seen = (
            m.host_argument_size_in_bytes
            + m.host_output_size_in_bytes
            - m.host_alias_size_in_bytes
            + m.host_temp_size_in_bytes
        )
        if seen > 0:  # the backend assigns host buffers apart: the figures above are device memory already
            host, host_from = int(seen), "from XLA's buffer assignment"
        else:
            # XLA:CPU counts the host-resident state among the arguments (and, donated, aliased to the outputs:
            # once in the total); it is not device memory, so it comes out of the total.
            host = optimizer
            host_from = (
                "computed from the optimizer state's shapes: XLA:CPU's memory analysis does not separate host memory"
            )
            total -= optimizer
    return StepMemory(
        batch_rows=batch_rows,
        params=_device_bytes(state["params"], shard["params"]),
        gradients=grads,
        optimizer=optimizer,
        temporaries=int(m.temp_size_in_bytes),
        total=int(total),
        compile_s=round(compile_s, 1),
        optimizer_memory=memory,
        host=host,
        host_from=host_from,
    )


def largest_batch(fits: Callable[[int], bool], unit: int, start: int, limit: int) -> Optional[int]:
    """The largest multiple of ``unit`` up to ``limit`` for which ``fits`` holds (assumed monotone): doubling
    from ``start`` while it fits, then bisection; None when not even ``unit`` fits."""
    kmax = max(limit // unit, 1)
    k = min(max(start // unit, 1), kmax)
    if fits(k * unit):
        lo, hi = k, kmax + 1
        n = 2 * k
        while n <= kmax:
            if not fits(n * unit):
                hi = n
                break
            lo, n = n, 2 * n
    else:
        lo, hi = 0, k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid * unit):
            lo = mid
        else:
            hi = mid
    return lo * unit if lo else None


@dataclasses.dataclass
class PlanReport:
    dcfg: DecoderConfig
    where: str
    mesh_shape: dict
    devices: int
    device_memory: int
    at_config: StepMemory
    fits: bool
    largest_batch_rows: Optional[int]
    compiles: int
    searched: bool = True


def plan(cfg: RunConfig, devices: int, device_memory: int, search: bool = True, max_rows: int = 4096) -> PlanReport:
    """Size ``cfg``'s train step on ``devices`` devices of ``device_memory`` bytes each (JAX's devices: a
    CPU process with that many fake devices; see rm_jax.cli.plan)."""
    avail = jax.devices()
    if len(avail) < devices:
        raise ConfigError(
            f"plan: {devices} devices requested but this process has {len(avail)}; run `rm-jax plan` in a fresh "
            f"process (it creates fake CPU devices before JAX starts)"
        )
    dcfg, where = planned_decoder(cfg)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, avail[:devices])
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    unit = dp * cfg.train.grad_accum
    if cfg.train.batch_rows % unit:
        raise ConfigError(
            f"train.batch_rows={cfg.train.batch_rows} is not a multiple of data x fsdp x grad_accum = {unit}"
        )
    results: dict[int, StepMemory] = {}

    def measure(rows: int) -> StepMemory:
        if rows not in results:
            results[rows] = step_memory(cfg, dcfg, mesh, rows)
        return results[rows]

    at = measure(cfg.train.batch_rows)
    best = None
    if search:
        best = largest_batch(lambda r: measure(r).total <= device_memory, unit, cfg.train.batch_rows, max_rows)
    return PlanReport(
        dcfg,
        where,
        dict(mesh.shape),
        devices,
        device_memory,
        at,
        at.total <= device_memory,
        best,
        len(results),
        search,
    )


def format_plan(rep: PlanReport, source: str) -> str:
    m = rep.at_config

    def g(b: int) -> str:
        return f"{b / GiB:8.2f} GiB" if b >= GiB // 10 else f"{b / 2**20:8.2f} MiB"

    lora = f", LoRA rank {rep.dcfg.lora_rank}" if rep.dcfg.lora_rank else ""
    host = m.optimizer_memory == "host"
    lines = [
        f"plan for {source}",
        f"  model: {rep.dcfg.num_params() / 1e9:.2f}B parameters ({rep.where}){lora}; {rep.dcfg.dtype} compute, "
        f"remat {rep.dcfg.remat}, scan_layers {rep.dcfg.scan_layers}",
        f"  mesh: {rep.mesh_shape} over {rep.devices} devices; train.batch_rows {m.batch_rows}",
        "  per device (XLA buffer assignment of the compiled train step):",
        f"    parameters   {g(m.params)}",
        f"    gradients    {g(m.gradients)}   (float32, trainable leaves; inside the temporaries)",
        f"    optimizer    {g(m.optimizer)}"
        + ("   in HOST memory (train.optimizer_state_memory=host): not in the total" if host else ""),
        f"    temporaries  {g(m.temporaries)}   (activations, gradients, workspace)",
        f"    total        {g(m.total)}   of {g(rep.device_memory).strip()}: "
        + ("fits" if rep.fits else "DOES NOT FIT"),
    ]
    if host:
        lines.insert(-1, f"    host memory  {g(m.host)}   (pinned_host, not device memory; {m.host_from})")
    if rep.largest_batch_rows is not None:
        lines.append(f"  largest train.batch_rows that fits: {rep.largest_batch_rows} ({rep.compiles} compiles)")
    elif rep.searched:
        lines.append("  no train.batch_rows fits: more devices, LoRA, remat or a shorter data.seq_len")
    return "\n".join(lines)
