"""The pure train and eval steps, the optimizer, and the sharded train state.

``train_step(state, batch) -> (state, metrics)`` is jitted with in/out shardings and donated
state. The batch carries a leading grad-accumulation axis; micro-batches are scanned and their
loss sums added before one division, so accumulation gives the same update as one big batch.

LoRA dropout (``lora_dropout > 0``) draws its masks from :func:`dropout_keys`: a function of the run's seed
and the step number only, so a resumed run draws the same masks for the same step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rm_jax.core.attributes import resolve_reward_weights
from rm_jax.core.config import LossConfig, OptimizerStateMemory, TrainConfig
from rm_jax.core.errors import ConfigError
from rm_jax.engine.losses import level_sums, mse_sums, pair_sums, steerlm2_sums, token_nll_sums
from rm_jax.models import CausalLM, RewardModel, param_shardings_for
from rm_jax.models.heads import expected_level
from rm_jax.models.llama import DecoderConfig
from rm_jax.models.lora import combine, split_trainable
from rm_jax.models.sharding import activate

BATCH_KEYS_2D = ("input_ids", "segment_ids", "positions")
# Where train.optimizer_state_memory=host keeps the optimizer state between steps: page-locked host memory, which
# the device reads and writes by DMA (JAX's memory kind for it; "unpinned_host" is ordinary pageable memory).
HOST_MEMORY_KIND = "pinned_host"


def lr_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    warm = max(int(cfg.warmup_steps), 0)
    decay_steps = max(total_steps - warm, 1)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        after = optax.constant_schedule(cfg.lr)
    if warm == 0:
        return after
    # Step 0 trains with lr/warm (not 0), so the first step is never wasted.
    return optax.join_schedules([optax.linear_schedule(cfg.lr / warm, cfg.lr, warm), after], [warm])


# Why stochastic rounding, not round-to-nearest or a compensated (Kahan) update: an Adam moment decays by (1 - b)
# of itself each step, and with b2 = 0.999 that 0.1% is below half of a bfloat16 spacing (2^-8 to 2^-9 of the value),
# so round-to-nearest gives back the old value and nu never decays (measured: stuck at 0.195 where float32 fell to
# 0.009 over 3,000 steps, updates ~4.5x too small). A Kahan-style compensation term would fix that but costs a
# second 2-byte number per moment, i.e. the 4 bytes of float32 this option exists to halve. Stochastic rounding keeps
# 2 bytes and is unbiased (E[round(x)] = x): the small decay is applied with a probability proportional to its size,
# so the stored moments follow the float32 trajectory in expectation and their deviation is a zero-mean noise that
# the moving average itself damps (docs/training.md states the measured bound). The random bits are a function of
# (seed, update count) only, the count is part of the optimizer state: a run is reproducible and a resumed run
# draws the same bits for the same step.
class StoredState(NamedTuple):
    count: jax.Array  # int32 updates so far: keys the rounding of the next one
    inner: Any


_ROUNDING_SALT = 0x5EED_B16  # keeps these bits apart from other uses of train.seed (dropout keys)


def round_stochastic(x: jax.Array, key: jax.Array) -> jax.Array:
    """float32 ``x`` in bfloat16, rounded up or down at random with the probabilities that make the result
    unbiased: bfloat16 is the top 16 bits of float32, so adding uniform noise below them and truncating rounds
    the magnitude up with probability (dropped bits) / 2^16. Non-finite values are kept as they are."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    noise = jax.random.bits(key, x.shape, jnp.uint32) >> 16
    rounded = jax.lax.bitcast_convert_type((bits + noise) & jnp.uint32(0xFFFF0000), jnp.float32)
    return jnp.where(jnp.isfinite(x), rounded, x).astype(jnp.bfloat16)  # exact: the low 16 bits are zero


def stored_in(dtype: Any, inner: optax.GradientTransformation, seed: int = 0) -> optax.GradientTransformation:
    """``inner`` with its floating-point state (moments) stored in ``dtype`` (bfloat16) and updated in float32:
    the arithmetic of each step is unchanged, only what is kept between steps is rounded, stochastically (see the
    comment above), with bits keyed by ``seed`` and the update count."""
    if jnp.dtype(dtype) != jnp.dtype(jnp.bfloat16):
        raise ConfigError(f"optimizer state can be stored in float32 or bfloat16, not {jnp.dtype(dtype).name}")

    def moments(tree: Any) -> list[bool]:
        return [jnp.issubdtype(x.dtype, jnp.floating) and x.ndim > 0 for x in jax.tree.leaves(tree)]

    def init(params: Any) -> StoredState:
        state = inner.init(params)
        leaves, tree = jax.tree.flatten(state)
        leaves = [x.astype(dtype) if m else x for x, m in zip(leaves, moments(state))]
        return StoredState(jnp.zeros([], jnp.int32), jax.tree.unflatten(tree, leaves))

    def update(updates: Any, state: StoredState, params: Any = None) -> tuple[Any, StoredState]:
        wide = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == dtype else x, state.inner)
        out, new = inner.update(updates, wide, params)
        leaves, tree = jax.tree.flatten(new)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _ROUNDING_SALT), state.count)
        keys = jax.random.split(key, max(len(leaves), 1))
        leaves = [round_stochastic(x, k) if m else x for x, k, m in zip(leaves, keys, moments(new))]
        return out, StoredState(state.count + 1, jax.tree.unflatten(tree, leaves))

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    def decay_mask(params: Any) -> Any:  # no weight decay on norms and biases
        return jax.tree.map(lambda x: x.ndim >= 2, params)

    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.optimizer == "adafactor":
        # lr is an absolute step size as for AdamW (no parameter-scale multiplication); optax's own decay
        # schedule for the factored second moments (b1, b2, eps are AdamW's).
        opt = optax.adafactor(
            lr_schedule(cfg, total_steps),
            multiply_by_parameter_scale=False,
            clipping_threshold=None,  # clip_norm above does the clipping
            weight_decay_rate=cfg.weight_decay or None,
            weight_decay_mask=decay_mask,
        )
    else:
        opt = optax.adamw(
            lr_schedule(cfg, total_steps),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    if cfg.optimizer_state_dtype != "float32":
        opt = stored_in(jnp.dtype(cfg.optimizer_state_dtype), opt, cfg.seed)
    parts.append(opt)
    return optax.chain(*parts)


# ---------------------------------------------------------------- sharded state


def _path_key(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def check_host_memory(devices: Sequence[Any]) -> None:
    """train.optimizer_state_memory=host keeps the optimizer state in pinned host memory: every device must
    offer that memory kind (GPUs and TPUs do; a backend without it gets a ConfigError, not a failed compile)."""
    for d in devices:
        try:
            kinds = [m.kind for m in d.addressable_memories()]
        except (NotImplementedError, RuntimeError, AttributeError):  # a backend without memory spaces
            kinds = []
        if HOST_MEMORY_KIND not in kinds:
            raise ConfigError(
                f"train.optimizer_state_memory=host needs a backend with a {HOST_MEMORY_KIND!r} memory kind; "
                f"{d.platform} devices offer {', '.join(kinds) or 'none'}; use device, or "
                f"train.optimizer_state_dtype=bfloat16 / train.optimizer=adafactor to save memory"
            )


def host_opt_shardings(shard: dict) -> dict:
    """The state shardings ``shard`` with every optimizer-state leaf in host memory (same partitioning);
    the step counter and the parameters stay on the device."""
    return {
        **shard,
        "opt_state": jax.tree.map(lambda s: s.with_memory_kind(HOST_MEMORY_KIND), shard["opt_state"]),
    }


def _to_memory(tree: Any, shardings: Any, kind: str) -> Any:
    return jax.tree.map(lambda x, s: jax.device_put(x, s.with_memory_kind(kind)), tree, shardings)


def state_shardings(abstract_state: dict, param_shard: Any, mesh: Mesh, memory: OptimizerStateMemory = "device") -> Any:
    """Optimizer moments take the sharding of the parameter they belong to (matched by path suffix
    and shape); everything else (counts, step) is replicated. ``memory="host"``: the optimizer state's
    leaves are in host memory (:func:`host_opt_shardings`)."""
    by_path = {}
    for path, s in jax.tree_util.tree_flatten_with_path(param_shard)[0]:
        by_path[_path_key(path)] = s
    shapes = {k: None for k in by_path}
    for path, a in jax.tree_util.tree_flatten_with_path(abstract_state["params"])[0]:
        shapes[_path_key(path)] = a.shape
    rep = NamedSharding(mesh, P())

    def pick(path: tuple, leaf: Any) -> NamedSharding:
        key = _path_key(path)
        for start in range(len(key)):
            suffix = key[start:]
            if suffix in by_path and shapes[suffix] == leaf.shape:
                return by_path[suffix]
        return rep

    out = {
        "step": rep,
        "params": param_shard,
        "opt_state": jax.tree_util.tree_map_with_path(pick, abstract_state["opt_state"]),
    }
    return host_opt_shardings(out) if memory == "host" else out


def init_state(cfg: DecoderConfig, tx: optax.GradientTransformation, params: Any) -> dict:
    """The train state of ``params``: optimizer state for the trainable leaves only (with LoRA, the
    adapters and the head; the frozen base has none)."""
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(split_trainable(cfg, params)[0])}


def create_state(
    cfg: DecoderConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    params: Any,
    memory: OptimizerStateMemory = "device",
) -> tuple[dict, Any]:
    """(state, shardings): ``params`` (already sharded; donated) plus optimizer state created by a
    jit whose out_shardings come from the logical rules (in host memory with ``memory="host"``)."""
    pshard = param_shardings_for(cfg, mesh)
    abstract = jax.eval_shape(lambda p: init_state(cfg, tx, p), params)
    shard = state_shardings(abstract, pshard, mesh, memory)
    state = jax.jit(
        lambda p: init_state(cfg, tx, p),
        in_shardings=(pshard,),
        out_shardings=shard,
        donate_argnums=0,
    )(params)
    return state, shard


def batch_shardings(mesh: Mesh, batch: dict, accum: bool) -> dict:
    """Rows over (data, fsdp); with an accumulation axis in front, that axis is not split."""

    def one(x: np.ndarray) -> NamedSharding:
        lead = (None,) if accum else ()
        rest = x.ndim - len(lead) - 1
        if x.shape[len(lead)] % (mesh.shape["data"] * mesh.shape["fsdp"]):
            return NamedSharding(mesh, P())  # pair-index vectors etc. are small: replicate
        return NamedSharding(mesh, P(*lead, ("data", "fsdp"), *([None] * rest)))

    return {k: one(v) for k, v in step_inputs(batch).items()}


def step_inputs(batch: dict) -> dict:
    """The entries of a loader's batch the train step reads: all but ``example_index``, the host's map from
    slots back to examples."""
    return {k: v for k, v in batch.items() if k != "example_index"}


def put_batch(batch: dict, shardings: dict) -> dict:
    """Global numpy batch -> sharded arrays; each process supplies only its addressable slices."""
    return {
        k: jax.make_array_from_callback(batch[k].shape, s, lambda idx, a=batch[k]: a[idx]) for k, s in shardings.items()
    }


# ---------------------------------------------------------------- steps


def dropout_keys(seed: int, step: Any, n: int) -> jax.Array:
    """The adapter-dropout keys of optimizer step ``step`` (may be traced): one per micro-batch, so each
    micro-batch of an accumulated step draws its own masks. They depend on (seed, step) only: a resumed run
    draws the same masks for the same step."""
    return jax.random.split(jax.random.fold_in(jax.random.key(seed), step), n)


def _sums(
    model_cfg: DecoderConfig,
    loss_cfg: LossConfig,
    params: Any,
    mb: dict,
    max_segments: int,
    attr_w: jax.Array,
    reward_w: jax.Array,
    dropout_key: Optional[jax.Array] = None,
    norms: Optional[tuple[jax.Array, jax.Array]] = None,
) -> dict:
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    if model_cfg.head == "lm":  # a causal LM
        logp = CausalLM(model_cfg).apply(
            {"params": params},
            mb["input_ids"],
            mb["segment_ids"],
            mb["positions"],
            targets=mb["targets"],
            max_segments=max_segments,
            rngs=rngs,
        )
        if "steer_group" not in mb:  # SFT: response-only next-token loss
            return token_nll_sums(logp, mb["loss_mask"])

        # SteerLM 2.0: each response slot's summed log-prob, then the group-weighted loss.
        def per_slot(x: jax.Array, seg: jax.Array) -> jax.Array:
            return jax.ops.segment_sum(x, seg, num_segments=max_segments + 1)[1:]

        seq_logp = jax.vmap(per_slot)(logp * mb["loss_mask"], mb["segment_ids"])
        tokens = jax.vmap(per_slot)(mb["loss_mask"], mb["segment_ids"])
        return steerlm2_sums(
            seq_logp, tokens, mb["w"], mb["logq_prime"], mb["steer_group"], loss_cfg.steerlm2_normalisation
        )
    kind = model_cfg.attribute_head
    pointwise = loss_cfg.type == "mse"
    out = RewardModel(model_cfg).apply(
        {"params": params},
        mb["input_ids"],
        mb["segment_ids"],
        mb["positions"],
        max_segments=max_segments,
        output="raw_reward" if pointwise else "attributes",
        rngs=rngs,
    )
    if not pointwise:
        return pair_sums(out, mb, reward_w, loss_cfg.type, loss_cfg.centering)
    raw, separate = out
    if kind != "regression":
        ls = loss_cfg
        sums = level_sums(
            raw,
            mb["labels"],
            mb["label_mask"],
            attr_w,
            kind,
            ls.label_smoothing,
            ls.soft_labels,
            ls.soft_label_sigma,
        )
    else:
        sums = mse_sums(raw, mb["labels"], mb["label_mask"], attr_w)
    if not loss_cfg.pair_weight:
        return sums
    return joint_sums(sums, raw, separate, mb, kind, reward_w, loss_cfg.pair_weight, norms)


def joint_sums(
    point: dict,
    raw: jax.Array,
    separate: Optional[jax.Array],
    mb: dict,
    kind: str,
    reward_w: jax.Array,
    pair_weight: float,
    norms: Optional[tuple[jax.Array, jax.Array]],
) -> dict:
    """task rm with loss.pair_weight = lambda > 0: pointwise / D_point + lambda * BT / D_pair, where the D are
    the whole optimizer step's totals (label weight, pair count; :func:`joint_norms`), known before the
    micro-batches run, so accumulation stays exact. BT (``pair_sums``' scaled_bt: strength 1 is plain BT)
    reads E[y] @ reward_weights (loss.pair_target attributes) or the separate reward output. ``num`` is the
    normalised loss and ``den`` this micro-batch's share of the label weight (they sum to 1 over the step)."""
    if separate is not None:
        reward, w = separate[..., None], jnp.ones((1,), jnp.float32)
    else:
        reward, w = expected_level(raw, kind), reward_w
    pair = pair_sums(reward, mb, w, "scaled_bt", 0.0)
    d_point, d_pair = norms if norms is not None else (jnp.maximum(point["den"], 1e-9), jnp.maximum(pair["den"], 1.0))
    return {
        **point,
        "num": point["num"] / d_point + pair_weight * pair["num"] / d_pair,
        "den": point["den"] / d_point,
        "point_num": point["num"] / d_point,
        "pair_num": pair["num"] / d_pair,
        "pair_n": pair["den"],
        "correct": pair["correct"],
    }


def joint_norms(batch: dict, attr_w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The step's (pointwise label weight, pair count) of a batch with any leading axes: the joint loss's
    denominators (at least 1e-9 and 1, so a step without pairs adds 0)."""
    return (
        jnp.maximum(jnp.sum(batch["label_mask"] * attr_w), 1e-9),
        jnp.maximum(jnp.sum(batch["pair_mask"]), 1.0),
    )


def _combine_sums(acc: dict, sums: dict) -> dict:
    return {k: jnp.minimum(acc[k], v) if k.endswith("_min") else acc[k] + v for k, v in sums.items()}


def _pair_reward_weights(
    model_cfg: DecoderConfig, loss_cfg: LossConfig, attributes: Optional[Sequence[str]]
) -> jax.Array:
    """The reward of a pair loss: loss.reward_weights matched to the attribute names (unused otherwise: zeros)."""
    joint = loss_cfg.pair_weight and loss_cfg.pair_target == "attributes"
    if model_cfg.head == "lm" or (loss_cfg.type == "mse" and not joint):
        return jnp.zeros((model_cfg.num_labels,), jnp.float32)
    if attributes is None:
        raise ValueError(f"loss.type {loss_cfg.type}: the model's attribute names are needed to weigh the reward")
    return jnp.asarray(resolve_reward_weights(loss_cfg.reward_weights, attributes).astype(np.float32))


def make_train_step(
    model_cfg: DecoderConfig,
    loss_cfg: LossConfig,
    tx: optax.GradientTransformation,
    max_segments: int,
    schedule: optax.Schedule,
    mesh: Optional[Mesh] = None,
    host_opt_shardings: Optional[Any] = None,
    seed: int = 0,
    attributes: Optional[Sequence[str]] = None,
) -> Callable:
    """The train step. ``host_opt_shardings``: the optimizer state's shardings when it lives in host memory
    (``host_opt_shardings(shard)["opt_state"]``; jit the step with those shardings in and out): the step
    copies it to the device for the update and the new state back to the host, so between steps the device
    holds none of it. ``seed`` (train.seed): the adapter-dropout masks' seed (:func:`dropout_keys`); unused, and
    no random numbers drawn, when the config has no adapter dropout. ``attributes``: the model's attribute names,
    which a pair loss's ``loss.reward_weights`` are matched to by name."""
    attr_w = jnp.asarray(np.asarray(loss_cfg.attribute_weights, np.float32))
    reward_w = _pair_reward_weights(model_cfg, loss_cfg, attributes)
    joint = model_cfg.head == "reward" and loss_cfg.type == "mse" and loss_cfg.pair_weight > 0

    def step(state: dict, batch: dict) -> tuple[dict, dict]:
        if host_opt_shardings is not None:
            state = {**state, "opt_state": _to_memory(state["opt_state"], host_opt_shardings, "device")}
        # With LoRA only the adapters (and head) are differentiated: no gradient buffers for the base.
        params, frozen = split_trainable(model_cfg, state["params"])

        norms = joint_norms(batch, attr_w) if joint else None

        def micro(acc: Any, xs: tuple) -> tuple[Any, None]:
            mb, key = xs

            def f(p: Any) -> tuple[jax.Array, dict]:
                s = _sums(model_cfg, loss_cfg, combine(p, frozen), mb, max_segments, attr_w, reward_w, key, norms)
                return s["num"], s

            (_, sums), g = jax.value_and_grad(f, has_aux=True)(params)
            acc_g, acc_s = acc
            return (jax.tree.map(jnp.add, acc_g, g), _combine_sums(acc_s, sums)), None

        with activate(mesh):
            zero_g = jax.tree.map(jnp.zeros_like, params)
            zero_s = jax.eval_shape(
                lambda: _sums(
                    model_cfg,
                    loss_cfg,
                    state["params"],
                    jax.tree.map(lambda x: x[0], batch),
                    max_segments,
                    attr_w,
                    reward_w,
                    None,
                    norms,
                )
            )
            zero_s = {  # a "_min" entry is a minimum over micro-batches, the rest are sums
                k: jnp.full(a.shape, jnp.inf if k.endswith("_min") else 0, a.dtype) for k, a in zero_s.items()
            }
            n_micro = batch["input_ids"].shape[0]
            keys = dropout_keys(seed, state["step"], n_micro) if model_cfg.adapter_dropout else None
            (grads, sums), _ = jax.lax.scan(micro, (zero_g, zero_s), (batch, keys))
        # The joint objective's sums are already normalised by the step's totals (joint_sums).
        den = jnp.ones(()) if joint else jnp.maximum(sums["den"], 1e-9)
        grads = jax.tree.map(lambda g: g / den, grads)
        loss = sums["num"] / den
        gnorm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = combine(optax.apply_updates(params, updates), frozen)
        new = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
        ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        # A non-finite step leaves the state untouched; the host stops the run on seeing ok == 0.
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        if host_opt_shardings is not None:
            new = {**new, "opt_state": _to_memory(new["opt_state"], host_opt_shardings, HOST_MEMORY_KIND)}
        metrics = {
            "loss": loss,
            "grad_norm": gnorm,
            "lr": schedule(state["step"]),
            "ok": ok,
            "real_tokens": jnp.sum(batch["segment_ids"] != 0),  # a shared prompt's tokens have negative ids
        }
        if "tokens_unshared" in batch:  # shared prompts (rm_jax.data.prefix_sharing): what they saved
            metrics["tokens_unshared"] = jnp.sum(batch["tokens_unshared"])
            metrics["prompt_tokens_saved"] = metrics["tokens_unshared"] - metrics["real_tokens"]
        if model_cfg.head == "lm" and "kl_sum" not in sums:
            metrics["loss_tokens"] = sums["den"]
        if "kl_sum" in sums:  # SteerLM 2.0: how far the current policy's baseline is from the targets
            metrics["kl_w_b"] = sums["kl_sum"] / jnp.maximum(sums["groups"], 1.0)
            # effective sample size of the weights per group, 1 / sum w^2: how many responses carry the signal
            metrics["ess_w_mean"] = sums["ess_sum"] / jnp.maximum(sums["groups"], 1.0)
            metrics["ess_w_min"] = jnp.where(sums["groups"] > 0, sums["ess_min"], 0.0)
        if "attr_sq" in sums:
            metrics["attr_mse"] = sums["attr_sq"] / jnp.maximum(sums["attr_n"], 1.0)
        if "pair_n" in sums:  # the joint objective: its two parts and the pairs' accuracy
            metrics["pointwise_loss"] = sums["point_num"]
            metrics["pair_loss"] = sums["pair_num"]
            metrics["pair_accuracy"] = sums["correct"] / jnp.maximum(sums["pair_n"], 1.0)
            metrics["pairs"] = sums["pair_n"]
        elif "correct" in sums:
            metrics["pair_accuracy"] = sums["correct"] / den
        return new, metrics

    return step


def make_eval_sums_fn(
    model_cfg: DecoderConfig,
    loss_cfg: LossConfig,
    max_segments: int,
    mesh: Optional[Mesh] = None,
    attributes: Optional[Sequence[str]] = None,
) -> Callable:
    """(params, batch) -> the loss sums of one batch without gradients (validation of a causal LM)."""
    attr_w = jnp.asarray(np.asarray(loss_cfg.attribute_weights, np.float32))
    reward_w = _pair_reward_weights(model_cfg, loss_cfg, attributes)

    def sums(params: Any, batch: dict) -> dict:
        with activate(mesh):
            return _sums(model_cfg, loss_cfg, params, batch, max_segments, attr_w, reward_w)

    return sums


def make_score_fn(
    model_cfg: DecoderConfig, max_segments: int, mesh: Optional[Mesh] = None, probs: bool = False
) -> Callable:
    """(params, batch) -> the attributes E[y] [B, S, A], or with ``probs`` (a distributional head) the pair
    (attributes, level probabilities [B, S, A, K])."""

    def score(params: Any, batch: dict) -> Any:
        with activate(mesh):
            return RewardModel(model_cfg).apply(
                {"params": params},
                batch["input_ids"],
                batch["segment_ids"],
                batch["positions"],
                max_segments=max_segments,
                output="levels" if probs else "attributes",
            )

    return score
