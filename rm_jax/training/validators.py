"""How a validation split is scored for given parameters, before a task turns the result into metrics:
a reward model's predictions [N, A] (:class:`RewardPredictions`) or a causal LM's summed training
objective over fixed-shape batches (:class:`LossSums`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import jax
import numpy as np

from rm_jax.core.config import RunConfig
from rm_jax.data.pipeline import Encoded, eval_batches
from rm_jax.engine.scoring import Scorer
from rm_jax.engine.train_step import batch_shardings, make_eval_sums_fn, put_batch
from rm_jax.models.sharding import replicated


@dataclass
class ModelParts:
    """The model a run trains, as validation and the step need it."""

    dcfg: Any  # DecoderConfig
    mesh: Any
    pad_id: int
    kernel: str  # the attention kernel in use


class Validator(Protocol):
    def __call__(self, params: Any) -> tuple[dict, Optional[np.ndarray]]: ...


class RewardPredictions:
    """Predictions of the whole split by a reward model, then ``metrics(pred, enc)``."""

    def __init__(
        self,
        cfg: RunConfig,
        parts: ModelParts,
        enc: Encoded,
        metrics: Callable[..., dict],
        levels: bool = False,
    ):
        """``levels``: also the level probabilities of a distributional head, passed to ``metrics`` as a third
        argument and kept in ``self.probs`` (eval.json's nll / ece)."""
        self.cfg, self.enc, self.metrics, self.levels = cfg, enc, metrics, levels
        self.scorer = Scorer(parts.dcfg, None, parts.mesh, parts.pad_id)
        self.probs: Optional[np.ndarray] = None

    def __call__(self, params: Any) -> tuple[dict, Optional[np.ndarray]]:
        d, rows = self.cfg.data, self.cfg.train.eval_rows
        self.scorer.params = params
        out = self.scorer.predict(
            self.enc.ids, d.seq_len, rows, d.max_segments, d.packing, False, "validation", probs=self.levels
        )
        # metrics see every output column (a separate reward too); predictions are the attributes'
        n = len(self.cfg.model.attributes)
        if not self.levels:
            return self.metrics(out, self.enc), out[:, :n]
        pred, self.probs = out
        return self.metrics(pred, self.enc, self.probs), pred[:, :n]


def validation_function(cfg: RunConfig, dcfg: Any, mesh: Any) -> Callable:
    """The jitted ``(params, batch) -> ...`` validation calls on each batch of ``train.eval_rows`` rows: a reward
    model's scores (the Scorer's own function) or a causal LM's loss sums. ``rm-jax plan`` compiles it too."""
    ms = cfg.data.max_segments if cfg.data.packing else 1
    if dcfg.head == "reward":
        return Scorer(dcfg, None, mesh)._fn(ms)  # the very function Scorer.predict calls
    return jax.jit(make_eval_sums_fn(dcfg, cfg.loss, ms, mesh, cfg.model.attributes), out_shardings=replicated(mesh))


class LossSums:
    """A causal LM's training objective summed over the whole split, then ``metrics(sums)``. One compiled
    function for the split's fixed-shape batches; no predictions."""

    def __init__(self, cfg: RunConfig, parts: ModelParts, enc: Encoded, metrics: Callable[[dict], dict]):
        d = cfg.data
        self.batches = [
            {k: v for k, v in b.items() if k != "example_index"}
            for b in eval_batches(enc, d.seq_len, d.max_segments, cfg.train.eval_rows, parts.pad_id, d.packing)
        ]
        self.mesh, self.shardings, self.metrics = parts.mesh, None, metrics
        self.fn = validation_function(cfg, parts.dcfg, parts.mesh)

    def __call__(self, params: Any) -> tuple[dict, Optional[np.ndarray]]:
        total: dict[str, float] = {}
        for b in self.batches:
            if self.shardings is None:
                self.shardings = batch_shardings(self.mesh, b, accum=False)
            for k, v in jax.device_get(self.fn(params, put_batch(b, self.shardings))).items():
                total[k] = total.get(k, 0.0) + float(v)
        return self.metrics(total), None
