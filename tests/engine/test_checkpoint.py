"""Retention: the latest and the best-by-validation-loss checkpoints survive, across reopening."""

import jax.numpy as jnp
import numpy as np

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
