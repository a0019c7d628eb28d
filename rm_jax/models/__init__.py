"""models: the Llama-family decoder with a reward head or a language-model head (:mod:`.llama`, one file
for Llama / Mistral / Qwen2 / Qwen3), its attention kernels (:mod:`.attention`, :mod:`.cudnn`,
:mod:`.splash`), matmul precision (:mod:`.precision`), the mesh and its one logical-axis rules table
(:mod:`.sharding`) and Hugging Face folders in and out (:mod:`.hf_io`). This module is the registry:
parameters created already sharded.

Imports: core, data.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rm_jax.models.llama import CausalLM, DecoderConfig, KVCache, RewardModel, init_cache
from rm_jax.models.sharding import activate, param_shardings

__all__ = [
    "CausalLM",
    "DecoderConfig",
    "KVCache",
    "RewardModel",
    "abstract_params",
    "init_cache",
    "model_for",
    "param_logical_specs",
    "param_shardings_for",
    "init_params",
    "apply_model",
    "relayout_params",
]


def model_for(cfg: DecoderConfig) -> nn.Module:
    """The module a config builds: RewardModel (head "reward") or CausalLM (head "lm")."""
    return CausalLM(cfg) if cfg.head == "lm" else RewardModel(cfg)


def _dummy_inputs() -> tuple[jax.Array, jax.Array, jax.Array]:
    ids = jnp.zeros((1, 4), jnp.int32)
    return ids, jnp.ones_like(ids), jnp.arange(4, dtype=jnp.int32)[None]


def _boxed_abstract(cfg: DecoderConfig) -> Any:
    return jax.eval_shape(lambda r: model_for(cfg).init(r, *_dummy_inputs())["params"], jax.random.key(0))


def param_logical_specs(cfg: DecoderConfig) -> Any:
    """Tree of PartitionSpecs whose entries are logical axis names."""
    return nn.get_partition_spec(_boxed_abstract(cfg))


def abstract_params(cfg: DecoderConfig) -> Any:
    """Tree of ShapeDtypeStructs (no memory used)."""
    return nn.meta.unbox(_boxed_abstract(cfg))


def param_shardings_for(cfg: DecoderConfig, mesh: Mesh) -> Any:
    return param_shardings(param_logical_specs(cfg), abstract_params(cfg), mesh)


def init_params(cfg: DecoderConfig, mesh: Mesh, seed: int = 0) -> Any:
    """Random parameters created directly in their sharded layout (never whole on one device)."""
    shardings = param_shardings_for(cfg, mesh)

    def init(key: jax.Array) -> Any:
        return nn.meta.unbox(model_for(cfg).init(key, *_dummy_inputs())["params"])

    return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def relayout_params(params: Any, cfg: DecoderConfig, mesh: Mesh) -> Any:
    """Parameters in ``cfg``'s layer layout, from either layout: the unrolled ``layers_i`` trees or the
    stacked ``layers`` tree (``scan_layers``) of the same decoder, placed on ``cfg``'s shardings. A checkpoint
    saved by a scanned run can thus be read by an unrolled one and the other way round."""
    n = cfg.num_hidden_layers
    params = dict(params)
    if cfg.scan_layers and "layers" not in params and n:
        params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params.pop(f"layers_{i}") for i in range(n)])
    elif not cfg.scan_layers and "layers" in params:
        stacked = params.pop("layers")
        params.update({f"layers_{i}": jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)})
    return jax.device_put(params, param_shardings_for(cfg, mesh))


def apply_model(
    cfg: DecoderConfig, params: Any, batch: dict, max_segments: int, mesh: Optional[Mesh] = None
) -> jax.Array:
    """Scores [B, S, num_labels] (reward head) or logits [B, T, V] (LM head) for a batch dict with
    input_ids, segment_ids, positions.

    One jitted call (compiled per call: a convenience for tests and scripts; the train and score
    paths keep their own compiled functions)."""

    def run(params: Any, ids: jax.Array, seg: jax.Array, pos: jax.Array) -> jax.Array:
        with activate(mesh):
            return model_for(cfg).apply({"params": params}, ids, seg, pos, max_segments=max_segments)

    return jax.jit(run)(params, batch["input_ids"], batch["segment_ids"], batch["positions"])
