"""The train step with LoRA: gradients and optimizer state for the adapters and the head only; the frozen base
(stored in bfloat16 here) comes out of a step bit-for-bit unchanged, for a reward model and a policy. The memory
options: bfloat16 moments, Adafactor, and the optimizer state in host memory."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rm_jax.core.config import LossConfig, TrainConfig
from rm_jax.core.errors import ConfigError
from rm_jax.engine.train_step import (
    check_host_memory,
    create_state,
    dropout_keys,
    init_state,
    lr_schedule,
    make_optimizer,
    make_train_step,
    round_stochastic,
)
from rm_jax.models import init_params
from rm_jax.models.llama import DecoderConfig
from rm_jax.models.lora import add_adapters, cast_frozen, is_trainable, split_trainable
from rm_jax.models.sharding import make_mesh, replicated
from tests.helpers import TINY_DECODER

ARCH = {**TINY_DECODER, "num_labels": 5}


def _batch(head: str) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 97, size=(1, 4, 32)).astype(np.int32)
    b = {
        "input_ids": ids,
        "segment_ids": np.ones_like(ids),
        "positions": np.broadcast_to(np.arange(32, dtype=np.int32), ids.shape).copy(),
    }
    if head == "reward":
        b["labels"] = rng.uniform(0, 4, size=(1, 4, 2, 5)).astype(np.float32)
        b["label_mask"] = np.zeros((1, 4, 2, 5), np.float32)
        b["label_mask"][:, :, 0] = 1
    else:
        b["targets"] = np.roll(ids, -1, axis=-1)
        b["loss_mask"] = np.ones(ids.shape, np.float32)
    return b


def _step(cfg: DecoderConfig, params, head: str):
    mesh = make_mesh(devices=jax.devices()[:1])
    tc = TrainConfig(lr=1e-2, warmup_steps=0, weight_decay=0.0)
    tx = make_optimizer(tc, 10)
    before = jax.tree.map(np.asarray, params)
    state, shard = create_state(cfg, tx, mesh, params)
    step = jax.jit(make_train_step(cfg, LossConfig(), tx, 2, lr_schedule(tc, 10), mesh), donate_argnums=0)
    new, m = step(state, _batch(head))
    assert bool(m["ok"])
    return before, new


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
@pytest.mark.parametrize("head", ["reward", "lm"])
def test_lora_step_updates_only_adapters_and_head(head, scan):
    mesh = make_mesh(devices=jax.devices()[:1])
    base_cfg = DecoderConfig(**ARCH, head=head, scan_layers=scan)
    cfg = base_cfg.replace(lora_rank=4)
    params = cast_frozen(cfg, add_adapters(init_params(base_cfg, mesh, 1), cfg, mesh, 2), "bfloat16")
    before, new = _step(cfg, params, head)

    trainable = set()
    for path, old in jax.tree_util.tree_flatten_with_path(before)[0]:
        keys = tuple(str(k.key) for k in path)
        now = new["params"]
        for k in keys:
            now = now[k]
        now = np.asarray(now)
        assert now.dtype == old.dtype, keys  # the base stays in its storage dtype
        if is_trainable(cfg, keys):
            trainable.add(keys)
            if keys[-1].endswith("_lora_b") or keys[-1] == "head_kernel":
                assert not np.array_equal(now, old), keys  # B and the head get a gradient at once (A: once B != 0)
        else:
            assert np.array_equal(now, old), keys
    want_head = {("head_kernel",)} if head == "reward" else set()
    assert {k for k in trainable if "_lora_" not in k[-1]} == want_head
    # Adam's moments exist for the trainable leaves only (mu and nu: twice their count).
    moments = [x for x in jax.tree.leaves(new["opt_state"]) if x.ndim > 0]
    assert len(moments) == 2 * len(trainable)


def test_full_finetune_still_updates_everything():
    mesh = make_mesh(devices=jax.devices()[:1])
    cfg = DecoderConfig(**ARCH)
    before, new = _step(cfg, init_params(cfg, mesh, 1), "reward")
    changed = [
        not np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(before))
    ]
    assert all(changed) and jnp.dtype(jax.tree.leaves(new["params"])[0].dtype) == jnp.float32


def _state_bytes(state) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "dtype"))


def test_bfloat16_optimizer_state():
    """train.optimizer_state_dtype=bfloat16: moments stored in bf16 (half the bytes); the arithmetic is float32,
    so the first step (moments from zero) is the float32 step exactly and later steps stay close."""
    mesh = make_mesh(devices=jax.devices()[:1])
    cfg = DecoderConfig(**ARCH)
    out = {}
    for dt in ("float32", "bfloat16"):
        tc = TrainConfig(lr=1e-2, warmup_steps=0, optimizer_state_dtype=dt)
        tx = make_optimizer(tc, 10)
        state, _ = create_state(cfg, tx, mesh, init_params(cfg, mesh, 1))
        step = jax.jit(make_train_step(cfg, LossConfig(), tx, 2, lr_schedule(tc, 10), mesh))
        s1, _ = step(state, _batch("reward"))
        s2, _ = step(s1, _batch("reward"))
        out[dt] = (s1, s2)
    moments = [x for x in jax.tree.leaves(out["bfloat16"][0]["opt_state"]) if x.ndim > 0]
    assert moments and {x.dtype for x in moments} == {jnp.dtype(jnp.bfloat16)}
    assert _state_bytes(out["bfloat16"][0]["opt_state"]) * 2 == pytest.approx(
        _state_bytes(out["float32"][0]["opt_state"]), rel=0.01
    )
    for a, b in zip(jax.tree.leaves(out["bfloat16"][0]["params"]), jax.tree.leaves(out["float32"][0]["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    p0 = jax.tree.leaves(init_params(cfg, mesh, 1))
    for a, b, z in zip(jax.tree.leaves(out["bfloat16"][1]["params"]), jax.tree.leaves(out["float32"][1]["params"]), p0):
        step_size = np.abs(np.asarray(b) - np.asarray(z)).max()
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 0.02 * step_size + 1e-7


def _adam_trajectory(dtype: str, steps: int = 3000, n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-step updates and second moments of train.optimizer=adamw with b2 = 0.999 (the PyTorch / HF default) on a
    synthetic gradient stream: gradients of scale 1 for 300 steps, then 0.05, so nu must decay by ~0.1% a step."""
    tc = TrainConfig(lr=1e-3, warmup_steps=0, b2=0.999, clip_norm=0.0, optimizer_state_dtype=dtype, seed=seed)
    tx = make_optimizer(tc, steps)
    scale = jnp.where(jnp.arange(steps) < 300, 1.0, 0.05)[:, None]
    grads = jax.random.normal(jax.random.PRNGKey(1), (steps, n)) * scale
    params = jnp.zeros(n)

    def body(carry, g):
        p, s = carry
        u, s = tx.update(g, s, p)
        nu = [x for x in jax.tree.leaves(s) if x.ndim == 1][-1]  # adam's state is (count, mu, nu)
        return (p + u, s), (u, nu.astype(jnp.float32))

    _, (u, nu) = jax.jit(lambda g: jax.lax.scan(body, (params, tx.init(params)), g))(grads)
    return np.asarray(u), np.asarray(nu)


def test_bfloat16_moments_follow_float32_over_3000_steps():
    """bfloat16 moments with b2 = 0.999: stochastic rounding keeps nu and the update on the float32 run's path.
    Round-to-nearest cannot store a 0.1% decay: its nu stays ~13x too large and its updates ~0.27x too small,
    failing every bound here by a wide margin. Bounds (docs/training.md) are ~3x the measured drift."""
    u32, nu32 = _adam_trajectory("float32")
    u16, nu16 = _adam_trajectory("bfloat16")
    assert np.isfinite(u16).all() and np.isfinite(nu16).all()
    nu_ratio = nu16.mean(1) / nu32.mean(1)  # mean over the 256 elements, at every step
    assert np.abs(nu_ratio - 1).max() < 0.02, (nu_ratio.min(), nu_ratio.max())
    per_element = np.median(np.abs(nu16 / nu32 - 1), axis=1)
    assert per_element.max() < 0.12, per_element.max()
    size_ratio = np.abs(u16).mean(1) / np.abs(u32).mean(1)
    assert np.abs(size_ratio - 1).max() < 0.03, (size_ratio.min(), size_ratio.max())
    rel = np.linalg.norm(u16 - u32, axis=1) / np.linalg.norm(u32, axis=1)
    assert rel.max() < 0.10, rel.max()


def test_bfloat16_moments_reproducible_and_keyed_by_seed():
    """The rounding bits are a function of (train.seed, update count): the same seed gives the same run bit for
    bit, another seed other bits; and an unbiased rounding: the mean of many roundings of 1 + 2^-10 (1/8 of a
    bfloat16 spacing, which round-to-nearest always drops) is 1 + 2^-10."""
    a, b, c = (_adam_trajectory("bfloat16", steps=50, seed=s)[1] for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    x = jnp.full((200_000,), 1 + 2.0**-10, jnp.float32)
    r = np.asarray(round_stochastic(x, jax.random.PRNGKey(0)), np.float64)
    assert set(np.unique(r)) == {1.0, 1 + 2.0**-7}
    assert r.mean() == pytest.approx(1 + 2.0**-10, abs=2e-5)  # ~3.4 std of the mean (5.8e-6)


def test_adafactor():
    """train.optimizer=adafactor: factored second moments (a 256 x 512 matrix keeps 256 + 512 numbers, not
    its size in moments), and a few steps on one batch lower the loss."""
    tx = make_optimizer(TrainConfig(optimizer="adafactor", lr=1e-2), 10)
    assert _state_bytes(tx.init({"w": jnp.zeros((256, 512))})) < 0.05 * 256 * 512 * 4
    mesh = make_mesh(devices=jax.devices()[:1])
    cfg = DecoderConfig(**ARCH)
    tc = TrainConfig(lr=3e-3, warmup_steps=0, optimizer="adafactor")
    tx = make_optimizer(tc, 10)
    state, _ = create_state(cfg, tx, mesh, init_params(cfg, mesh, 1))
    step = jax.jit(make_train_step(cfg, LossConfig(), tx, 2, lr_schedule(tc, 10), mesh))
    losses = []
    for _ in range(5):
        state, m = step(state, _batch("reward"))
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.8 * losses[0]


# ---------------------------------------------------------------- train.optimizer_state_memory=host


class _Device:
    """A device of a backend whose memory spaces are ``kinds`` (None: it has no memory-space API)."""

    platform = "fakeaccel"

    def __init__(self, kinds):
        self.kinds = kinds

    def addressable_memories(self):
        if self.kinds is None:
            raise NotImplementedError("no memories")
        return [SimpleNamespace(kind=k) for k in self.kinds]


def test_check_host_memory_names_what_the_backend_offers():
    check_host_memory([_Device(["device", "pinned_host"])] * 2)
    for devices, offered in (
        ([_Device(["device", "pinned_host"]), _Device(["device", "unpinned_host"])], "device, unpinned_host"),
        ([_Device(None)], "none"),
    ):
        with pytest.raises(ConfigError) as e:
            check_host_memory(devices)
        assert str(e.value) == (
            "train.optimizer_state_memory=host needs a backend with a 'pinned_host' memory kind; fakeaccel "
            f"devices offer {offered}; use device, or train.optimizer_state_dtype=bfloat16 / "
            "train.optimizer=adafactor to save memory"
        )


def _has_pinned_host() -> bool:
    return all("pinned_host" in [m.kind for m in d.addressable_memories()] for d in jax.devices())


needs_pinned_host = pytest.mark.skipif(not _has_pinned_host(), reason="this backend has no pinned_host memory")


def _kinds(tree) -> set:
    return {x.sharding.memory_kind for x in jax.tree.leaves(tree)}


@needs_pinned_host
def test_optimizer_state_in_host_memory_trains_as_on_the_device():
    """train.optimizer_state_memory=host: the moments live in pinned host memory between steps (partitioned as
    on the device), the parameters and the step counter on the device, and two float32 steps give the same
    parameters and losses as with the state on the device. The step moves the state itself: traced without
    out_shardings it still returns the state in host memory."""
    mesh = make_mesh(data=1, fsdp=2, tensor=1, devices=jax.devices()[:2]) if jax.device_count() >= 2 else None
    mesh = mesh or make_mesh(devices=jax.devices()[:1])
    cfg = DecoderConfig(**ARCH)
    tc = TrainConfig(lr=1e-2, warmup_steps=0)
    tx = make_optimizer(tc, 10)
    out = {}
    for memory in ("device", "host"):
        state, shard = create_state(cfg, tx, mesh, init_params(cfg, mesh, 1), memory)
        host = shard["opt_state"] if memory == "host" else None
        fn = make_train_step(cfg, LossConfig(), tx, 2, lr_schedule(tc, 10), mesh, host)
        step = jax.jit(fn, in_shardings=(shard, None), out_shardings=(shard, replicated(mesh)), donate_argnums=0)
        losses = []
        for _ in range(2):
            state, m = step(state, _batch("reward"))
            losses.append(float(m["loss"]))
        out[memory] = state, shard, losses, fn
    dev, host = out["device"], out["host"]
    assert _kinds(host[0]["opt_state"]) == {"pinned_host"} and _kinds(dev[0]["opt_state"]) == {"device"}
    assert _kinds(host[0]["params"]) == {"device"} and _kinds(host[0]["step"]) == {"device"}
    assert [s.spec for s in jax.tree.leaves(host[1]["opt_state"])] == [
        s.spec for s in jax.tree.leaves(dev[1]["opt_state"])
    ]
    assert host[2] == pytest.approx(dev[2], rel=1e-6) and host[2][1] != host[2][0]
    for a, b in zip(jax.tree.leaves(host[0]), jax.tree.leaves(dev[0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    traced = jax.jit(host[3]).trace(host[0], _batch("reward"))  # no out_shardings: where the step itself puts it
    new, _ = jax.tree.unflatten(traced.out_tree, traced.jaxpr.out_avals)
    assert {a.memory_space for a in jax.tree.leaves(new["opt_state"])} == {jax.memory.Space.Host}
    assert {a.memory_space for a in jax.tree.leaves(new["params"])} == {jax.memory.Space.Device}


# ---------------------------------------------------------------- LoRA dropout


def test_dropout_keys_depend_on_seed_step_and_micro_batch():
    def keys(seed, step, n=2):
        return np.asarray(jax.random.key_data(dropout_keys(seed, step, n)))

    a = keys(0, 3)
    assert a.shape[0] == 2 and not np.array_equal(a[0], a[1])  # each micro-batch draws its own masks
    np.testing.assert_array_equal(keys(0, 3), a)  # the same (seed, step): a resumed step draws the same masks
    np.testing.assert_array_equal(keys(0, jnp.asarray(3, jnp.int32)), a)  # the step number as the step has it
    assert not np.array_equal(keys(0, 4), a) and not np.array_equal(keys(1, 3), a)


def _two_micro_batches(head: str) -> dict:
    """Two identical micro-batches (grad accumulation 2): only their dropout masks can tell them apart."""
    one = {k: v[:, :2] for k, v in _batch(head).items()}
    return {k: np.concatenate([v, v]) for k, v in one.items()}


def _lora_dropout_runner(head: str, rate: float):
    """(cfg, run): run(seed, step) is one train step at state step ``step`` from the same fresh LoRA state, giving
    (updated trainable leaves, grad_norm); each seed's step is compiled once (again with ``recompile``)."""
    mesh = make_mesh(devices=jax.devices()[:1])
    base_cfg = DecoderConfig(**ARCH, head=head)
    cfg = base_cfg.replace(lora_rank=4, lora_dropout=rate)
    host = jax.device_get(add_adapters(init_params(base_cfg, mesh, 1), cfg, mesh, 2))
    tc = TrainConfig(lr=1e-2, warmup_steps=0)
    tx = make_optimizer(tc, 10)
    batch = _two_micro_batches(head)
    steps: dict = {}

    def run(seed: int, step: int = 0, recompile: bool = False):
        if seed not in steps or recompile:
            steps[seed] = jax.jit(make_train_step(cfg, LossConfig(), tx, 2, lr_schedule(tc, 10), mesh, seed=seed))
        state, _ = create_state(cfg, tx, mesh, jax.device_put(host))
        state["step"] = jnp.asarray(step, jnp.int32)
        new, m = steps[seed](state, batch)
        assert bool(m["ok"])
        leaves = [np.asarray(x) for x in jax.tree.leaves(split_trainable(cfg, new["params"])[0])]
        return leaves, float(m["grad_norm"])

    return cfg, run


def _same(a, b) -> bool:
    return a[1] == b[1] and all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))


@pytest.mark.parametrize("head", ["reward", "lm"])
def test_a_dropout_step_is_a_function_of_seed_and_step(head):
    """The same seed and step give the same update (a resumed run's step is the uninterrupted one's); another
    seed or another step number draw other masks, so another update."""
    _, run = _lora_dropout_runner(head, 0.5)
    first = run(0)
    assert _same(run(0), first)
    assert not _same(run(1), first)
    assert not _same(run(0, step=5), first)


def test_each_micro_batch_draws_its_own_masks(monkeypatch):
    """Two identical micro-batches: with one key per micro-batch their gradients differ, so the step differs from
    one where both micro-batches were given the first key."""
    import rm_jax.engine.train_step as ts

    _, run = _lora_dropout_runner("reward", 0.5)
    real = run(0)
    keys = ts.dropout_keys
    monkeypatch.setattr(ts, "dropout_keys", lambda seed, step, n: jnp.repeat(keys(seed, step, n)[:1], n, axis=0))
    assert not _same(run(0, recompile=True), real)


def test_rate_zero_draws_no_random_numbers():
    """lora.dropout 0 (the default): the step has no rng ops and ignores the seed, i.e. it is the step without
    dropout; a rate > 0 draws its masks in the step."""
    mesh = make_mesh(devices=jax.devices()[:1])
    tc = TrainConfig(warmup_steps=0)
    tx = make_optimizer(tc, 10)
    batch = _two_micro_batches("reward")
    base_cfg = DecoderConfig(**ARCH)

    def lowered(rate: float, seed: int) -> str:
        cfg = base_cfg.replace(lora_rank=4, lora_dropout=rate)
        params = jax.eval_shape(lambda: add_adapters(init_params(base_cfg, mesh, 1), cfg, mesh, 2))
        state = jax.eval_shape(lambda p: init_state(cfg, tx, p), params)
        step = make_train_step(cfg, LossConfig(), tx, 2, lr_schedule(tc, 10), mesh, seed=seed)
        return jax.jit(step).lower(state, batch).as_text()

    plain = lowered(0.0, 0)
    assert "threefry" not in plain and "rng" not in plain
    assert lowered(0.0, 9) == plain
    assert "threefry" in lowered(0.1, 0)
