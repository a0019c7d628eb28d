"""Memory of the compiled train step from XLA's buffer assignment (``compiled.memory_analysis()``): the
step is compiled for abstract inputs, so nothing is allocated and a model far larger than this machine's
memory can be examined on a CPU (scripts/memory_report.py; the memory tests)."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

from rm_jax.core.config import LossConfig, TrainConfig
from rm_jax.engine.train_step import init_state, lr_schedule, make_optimizer, make_train_step
from rm_jax.models import abstract_params


def train_step_memory(cfg: Any, rows: int, seq: int, max_segments: int = 16) -> dict:
    """Bytes of the train step compiled for [1, rows, seq] batches (abstract: nothing runs)."""
    tc = TrainConfig(lr=1e-5, warmup_steps=0)
    tx = make_optimizer(tc, 1000)
    state = jax.eval_shape(lambda p: init_state(cfg, tx, p), abstract_params(cfg))
    sd = jax.ShapeDtypeStruct
    tok = sd((1, rows, seq), jnp.int32)
    lab = sd((1, rows, max_segments, cfg.num_labels), jnp.float32)
    batch = {"input_ids": tok, "segment_ids": tok, "positions": tok, "labels": lab, "label_mask": lab}
    step = jax.jit(make_train_step(cfg, LossConfig(), tx, max_segments, lr_schedule(tc, 1000)), donate_argnums=0)
    t = time.perf_counter()
    m = step.lower(state, batch).compile().memory_analysis()
    return {
        "temp_bytes": int(m.temp_size_in_bytes),
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "compile_s": round(time.perf_counter() - t, 1),
    }
