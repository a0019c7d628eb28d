"""Retention: the latest and the best-by-validation-loss checkpoints survive, across reopening; a state with its
optimizer state in host memory restores there."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rm_jax.core.config import CheckpointConfig
from rm_jax.engine.checkpoint import Checkpointer


def test_keeps_latest_and_best_and_remembers_after_reopen(tmp_path):
    cfg = CheckpointConfig(keep_latest=1, keep_best=1, async_save=True)
    ck = Checkpointer(str(tmp_path), cfg)
    for step, loss in zip([10, 20, 30, 40, 50], [3.0, 1.0, 2.0, 0.5, None]):
        state = {"w": jnp.full((4,), float(step))}
        ck.save(step, state, {"epoch": 0, "index": step}, None if loss is None else {"val_loss": loss})
    ck.close()
    again = Checkpointer(str(tmp_path), cfg)
    assert sorted(again.manager.all_steps()) == [40, 50]
    assert again.best_step() == 40 and again.latest_step() == 50
    state, data = again.restore(40, {"w": jnp.zeros((4,))})
    np.testing.assert_array_equal(np.asarray(state["w"]), np.full((4,), 40.0))
    assert data == {"epoch": 0, "index": 40}
    again.close()


@pytest.mark.skipif(
    not all("pinned_host" in [m.kind for m in d.addressable_memories()] for d in jax.devices()),
    reason="this backend has no pinned_host memory",
)
def test_optimizer_state_in_host_memory_saves_and_restores_there(tmp_path):
    """train.optimizer_state_memory=host: a checkpoint of a state whose moments are in pinned host memory is
    written and read back onto the same shardings (moments in host memory, parameters on the device)."""
    from rm_jax.core.config import TrainConfig
    from rm_jax.engine.checkpoint import abstract_with_shardings
    from rm_jax.engine.train_step import create_state, make_optimizer
    from rm_jax.models import init_params
    from rm_jax.models.llama import DecoderConfig
    from rm_jax.models.sharding import make_mesh
    from tests.helpers import TINY_DECODER

    n = 2 if jax.device_count() >= 2 else 1
    mesh = make_mesh(data=1, fsdp=n, tensor=1, devices=jax.devices()[:n])
    cfg = DecoderConfig(**TINY_DECODER, num_labels=5)
    tx = make_optimizer(TrainConfig(), 10)
    state, shard = create_state(cfg, tx, mesh, init_params(cfg, mesh, 0), "host")
    # moments that are not their zero initialisation, so a wrong restore shows
    state = {**state, "opt_state": jax.tree.map(lambda x: x + 0.5, state["opt_state"])}
    saved = jax.tree.map(np.asarray, state)
    abstract = abstract_with_shardings(jax.eval_shape(lambda s: s, state), shard)
    ck = Checkpointer(str(tmp_path), CheckpointConfig(async_save=True))
    ck.save(1, state, {"epoch": 0, "index": 1})
    ck.wait()
    got, data = ck.restore(1, abstract)
    ck.close()
    assert data == {"epoch": 0, "index": 1}
    assert {x.sharding.memory_kind for x in jax.tree.leaves(got["opt_state"])} == {"pinned_host"}
    assert {x.sharding.memory_kind for x in jax.tree.leaves(got["params"])} == {"device"}
    assert [x.sharding for x in jax.tree.leaves(got)] == jax.tree.leaves(shard)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), b)
