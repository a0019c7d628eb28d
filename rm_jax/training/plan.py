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
    check_lora,
    init_from_config,
    lora_opts,
    model_head,
    run_opts,
    scratch_config,
    tokenizer_path,
)
from rm_jax.training.tasks import step_batch_spec, task_for
from rm_jax.training.validators import validation_function

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
        check_lora(cfg, dcfg)  # as train does: conflicting LoRA keys stop here too
    elif cfg.model.arch:
        from rm_jax.models.hf_io import load_tokenizer

        where = "model.arch"  # a new model's vocabulary is its tokenizer's, as training builds it
        dcfg = scratch_config(cfg, len(load_tokenizer(tokenizer_path(cfg))))
    else:
        raise ConfigError("plan: set model.path, model.arch or model.init_from")
    return dcfg.replace(**lora_opts(cfg)), where  # model.adapter's rank, alpha and targets when it names one


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
    total: int  # per device: arguments + outputs not aliased to them + temporaries (+ host_copy) (device memory)
    compile_s: float
    optimizer_memory: OptimizerStateMemory = "device"  # where the optimizer state lives between steps
    host: int = 0  # per device: bytes in host memory (the optimizer state when it lives there)
    host_from: str = ""  # where the host figure comes from
    host_copy: int = 0  # per device: the host state copied onto the device for the update, added to the total


@dataclasses.dataclass
class EvalMemory:
    """The validation forward at ``train.eval_rows`` rows, run while the train state stays on the device."""

    rows: int
    temporaries: int  # per device: XLA's temp buffers of the forward
    total: int  # per device: the resident train state + the forward's batch, outputs and temporaries
    compile_s: float


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
    host, host_from, host_copy = 0, "", 0
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
            # The update needs the moments on the device: the step copies them in and back out. XLA:CPU's
            # temporaries do not count those copies (no-ops there), so the plan adds them in full: an upper
            # bound (a GPU compile counts them itself, and may stream them leaf by leaf).
            host_copy = optimizer
            total += host_copy - optimizer
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
        host_copy=host_copy,
    )


def _abstract_state(cfg: RunConfig, dcfg: DecoderConfig, mesh: Any) -> tuple[Any, Any]:
    """(abstract train state, its shardings) as a run creates them."""
    tx = make_optimizer(cfg.train, 1000)
    params = abstract_params(dcfg)
    if dcfg.lora_rank:
        params = jax.eval_shape(lambda p: cast_frozen(dcfg, p, cfg.lora.base_dtype), params)
    state = jax.eval_shape(lambda p: init_state(dcfg, tx, p), params)
    return state, state_shardings(state, param_shardings_for(dcfg, mesh), mesh, cfg.train.optimizer_state_memory)


def eval_batch(cfg: RunConfig, dcfg: DecoderConfig, rows: int) -> dict:
    """One validation batch as abstract arrays: a reward model's scoring batch (ids, segments, positions, as
    rm_jax.engine.scoring.Scorer builds it) or a causal LM's loss batch (the task's loader, no accumulation)."""
    if dcfg.head == "reward":
        return {
            k: jax.ShapeDtypeStruct((rows, cfg.data.seq_len), jnp.int32)
            for k in ("input_ids", "segment_ids", "positions")
        }
    one = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_accum=1))
    return {k: jax.ShapeDtypeStruct(shape[1:], dt) for k, (shape, dt) in step_batch_spec(task_for(one), rows).items()}


def eval_memory(cfg: RunConfig, dcfg: DecoderConfig, mesh: Any) -> EvalMemory:
    """Validation's forward (rm_jax.training.validators.validation_function) compiled for its largest batch,
    ``train.eval_rows`` rounded up to the data-parallel size, with the parameters as the train state holds them."""
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = -(-cfg.train.eval_rows // dp) * dp
    state, shard = _abstract_state(cfg, dcfg, mesh)
    params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state["params"], shard["params"]
    )
    batch = eval_batch(cfg, dcfg, rows)
    bshard = batch_shardings(mesh, batch, accum=False)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bshard[k]) for k, v in batch.items()}
    t = time.perf_counter()
    m = validation_function(cfg, dcfg, mesh).lower(params, batch).compile().memory_analysis()
    compile_s = time.perf_counter() - t
    # Validation runs between steps: the parameters (its arguments) and the device-resident optimizer state
    # stay where they are while the forward's batch, outputs and temporaries come and go.
    resident = (
        0 if cfg.train.optimizer_state_memory == "host" else _device_bytes(state["opt_state"], shard["opt_state"])
    )
    total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return EvalMemory(rows, int(m.temp_size_in_bytes), int(total + resident), round(compile_s, 1))


def load_peak(cfg: RunConfig, dcfg: DecoderConfig, mesh: Any) -> int:
    """Per device, the most the model's setup holds at once: its parameters as the state keeps them (a LoRA
    base read straight into lora.base_dtype, tensor by tensor: rm_jax.models.hf_io) plus its largest leaf once
    more (scanned layers are placed one by one, then stacked into that leaf)."""
    state, shard = _abstract_state(cfg, dcfg, mesh)
    leaves = zip(
        jax.tree.leaves(state["params"]), jax.tree.leaves(shard["params"], is_leaf=lambda x: hasattr(x, "spec"))
    )
    sizes = [int(np.prod(s.shard_shape(a.shape), dtype=np.int64)) * jnp.dtype(a.dtype).itemsize for a, s in leaves]
    return sum(sizes) + max(sizes)


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
    eval: Optional[EvalMemory] = None
    load_peak: int = 0
    base_dtype: str = "float32"

    @property
    def peak(self) -> int:
        """Per device: the most any phase holds (setup, the train step, validation)."""
        return max(self.at_config.total, self.eval.total if self.eval else 0, self.load_peak)


def plan(cfg: RunConfig, devices: int, device_memory: int, search: bool = True, max_rows: int = 4096) -> PlanReport:
    """Size ``cfg``'s run on ``devices`` devices of ``device_memory`` bytes each (JAX's devices: a CPU process
    with that many fake devices; see rm_jax.cli.plan): its setup (load peak), its train step at
    ``train.batch_rows`` and its validation forward at ``train.eval_rows``; it fits when the largest fits."""
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
    ev = eval_memory(cfg, dcfg, mesh)
    load = load_peak(cfg, dcfg, mesh)
    fixed = max(ev.total, load)  # what does not depend on train.batch_rows
    results: dict[int, StepMemory] = {}

    def measure(rows: int) -> StepMemory:
        if rows not in results:
            results[rows] = step_memory(cfg, dcfg, mesh, rows)
        return results[rows]

    at = measure(cfg.train.batch_rows)
    best = None
    if search and fixed <= device_memory:
        best = largest_batch(lambda r: measure(r).total <= device_memory, unit, cfg.train.batch_rows, max_rows)
    base_dtype = cfg.lora.base_dtype if dcfg.lora_rank else "float32"
    rep = PlanReport(
        dcfg, where, dict(mesh.shape), devices, device_memory, at, False, best, len(results) + 1, search, ev, load,
        base_dtype,
    )  # fmt: skip
    rep.fits = rep.peak <= device_memory
    return rep


SCHEMA = "rm_jax.plan/1"


def plan_json(rep: PlanReport, source: str) -> dict:
    """``rm-jax plan --json``: the report as one JSON object (schema ``rm_jax.plan/1``, docs/plan.md). Every
    byte figure is per device."""
    m, d = rep.at_config, rep.dcfg
    return {
        "schema": SCHEMA,
        "config": source,
        "model": {
            "parameters": d.num_params(),
            "architecture_from": rep.where,
            "lora_rank": d.lora_rank,
            "lora_alpha": d.lora_alpha if d.lora_rank else None,
            "lora_targets": list(d.lora_targets) if d.lora_rank else None,
            "base_dtype": rep.base_dtype,
            "compute_dtype": d.dtype,
        },
        "mesh": rep.mesh_shape,
        "devices": rep.devices,
        "device_memory_bytes": rep.device_memory,
        "batch_rows": m.batch_rows,
        "eval_rows": rep.eval.rows if rep.eval else None,
        "per_device_bytes": {
            "params": m.params,
            "optimizer_state": m.optimizer,
            "optimizer_state_memory": m.optimizer_memory,
            "host": m.host,
            "host_copy": m.host_copy,
            "gradients": m.gradients,
            "temporaries": m.temporaries,
            "train_step": m.total,
            "eval_temporaries": rep.eval.temporaries if rep.eval else None,
            "eval_forward": rep.eval.total if rep.eval else None,
            "load_peak": rep.load_peak,
            "peak": rep.peak,
        },
        "fits": rep.fits,
        "largest_batch_rows": rep.largest_batch_rows,
        "searched": rep.searched,
        "compiles": rep.compiles,
    }


def format_plan(rep: PlanReport, source: str) -> str:
    m = rep.at_config

    def g(b: int) -> str:
        return f"{b / GiB:8.2f} GiB" if b >= GiB // 10 else f"{b / 2**20:8.2f} MiB"

    d = rep.dcfg
    lora = (
        f", LoRA rank {d.lora_rank} alpha {d.lora_alpha:g} on {','.join(d.lora_targets)}, base in {rep.base_dtype}"
        if d.lora_rank
        else ""
    )
    host = m.optimizer_memory == "host"
    lines = [
        f"plan for {source}",
        f"  model: {d.num_params() / 1e9:.2f}B parameters ({rep.where}){lora}; {d.dtype} compute, "
        f"remat {d.remat}, scan_layers {d.scan_layers}",
        f"  mesh: {rep.mesh_shape} over {rep.devices} devices; train.batch_rows {m.batch_rows}",
        "  per device (XLA buffer assignment of the compiled train step):",
        f"    parameters   {g(m.params)}",
        f"    gradients    {g(m.gradients)}   (float32, trainable leaves; inside the temporaries)",
        f"    optimizer    {g(m.optimizer)}"
        + ("   in HOST memory (train.optimizer_state_memory=host) between steps" if host else ""),
        f"    temporaries  {g(m.temporaries)}   (activations, gradients, workspace)",
    ]
    if host:
        lines.append(f"    host memory  {g(m.host)}   (pinned_host, not device memory; {m.host_from})")
        if m.host_copy:
            lines.append(
                f"    host copy    {g(m.host_copy)}   the step copies the host optimizer state to the device for "
                f"the update: added to the step (XLA:CPU does not count the copies; an upper bound)"
            )
        else:
            lines.append(
                "    host copy    the step copies the host optimizer state to the device for the update: "
                "XLA's device temporaries include those copies"
            )
    lines.append(f"    train step   {g(m.total)}   (arguments + outputs not aliased + temporaries)")
    if rep.eval:
        lines.append(
            f"    validation   {g(rep.eval.total)}   (forward at train.eval_rows {rep.eval.rows}: temporaries "
            f"{g(rep.eval.temporaries).strip()}, with the train state resident)"
        )
    lines.append(f"    load peak    {g(rep.load_peak)}   (setup: parameters + their largest leaf once more)")
    lines.append(
        f"    peak         {g(rep.peak)}   of {g(rep.device_memory).strip()}: "
        + ("fits" if rep.fits else "DOES NOT FIT")
    )
    if rep.largest_batch_rows is not None:
        lines.append(f"  largest train.batch_rows that fits: {rep.largest_batch_rows} ({rep.compiles} compiles)")
    elif rep.searched:
        lines.append("  no train.batch_rows fits: more devices, LoRA, remat or a shorter data.seq_len")
    return "\n".join(lines)
