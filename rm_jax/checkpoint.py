"""Orbax checkpoints of the train state plus the data loader's position.

Keeps the latest N and the best N by validation loss (a checkpoint saved with metrics). Saves
are async and atomic (Orbax writes a temporary folder and renames it), so a process killed
mid-save leaves the previous checkpoint usable.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from rm_jax.config import CheckpointConfig


def _neg_val_loss(metrics: Any) -> float:
    return -float(metrics["val_loss"])


class Checkpointer:
    def __init__(self, directory: str, cfg: CheckpointConfig):
        policies = [cm.LatestN(n=max(cfg.keep_latest, 1))]
        if cfg.keep_best > 0:
            policies.append(cm.BestN(get_metric_fn=_neg_val_loss, n=cfg.keep_best,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            # Orbax stores per-step metrics only when best_fn is set.
            best_fn=lambda m: float(m["val_loss"]), best_mode="min",
            enable_async_checkpointing=cfg.async_save,
            create=True,
        )
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def best_step(self) -> Optional[int]:
        steps_with_metrics = [s for s in self.manager.all_steps() if self._metrics(s) is not None]
        if not steps_with_metrics:
            return None
        return min(steps_with_metrics, key=lambda s: self._metrics(s)["val_loss"])

    def _metrics(self, step: int) -> Optional[dict]:
        try:
            return self.manager.metrics(step)
        except Exception:  # a step saved without metrics
            return None

    def save(self, step: int, state: Any, data_state: dict, metrics: Optional[dict] = None) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state)),
                          metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                 data=ocp.args.JsonRestore()))
        return out["state"], out["data"]

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the parameters (e.g. to initialise a new run from this one)."""
        target = {"params": abstract_params}
        ckptr = ocp.PyTreeCheckpointer()
        out = ckptr.restore(os.path.join(self.directory, str(step), "state"), args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
        return out["params"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)
