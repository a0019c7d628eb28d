"""The step loop in the shape of Levanter's ``Trainer``: :meth:`Trainer.training_steps` runs the jitted
step and yields a :class:`StepInfo` per step; :meth:`Trainer.train` runs the registered hooks on each.

A hook registered with ``add_hook(fn, every=n)`` runs after steps n, 2n, ... (counted from 0, not from
a resumed start), after the final step always, after the first step of this session when ``first=True``,
and wherever its ``when(info)`` says so (``every=0``: only the final step and those). Hooks run in the
order they were added; a hook may leave results in ``info.results`` for later hooks of the same step.
Nothing here knows the task, the config or the metric names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol

from rm_jax.core.errors import TrainingError

# (state, host batch) -> (new state, the step's metrics on the host)
StepFn = Callable[[Any, dict], tuple[Any, dict]]


class StepLoader(Protocol):
    epoch: int

    def next_step(self, accum: int) -> dict: ...

    def get_state(self) -> dict: ...


@dataclass
class StepInfo:
    """One finished optimizer step."""

    step: int  # steps done, counting those before a resume (1 after the first step)
    total: int  # the run's last step
    first: bool  # the first step of this session (after a fresh start or a resume)
    loss: float
    lr: float
    metrics: dict  # the step's metrics dict, on the host, every key it returned
    tokens: int  # batch positions of this step, padding included
    real_tokens: int
    seconds: float  # wall time of this step, batch assembly included
    epoch: int  # the loader's epoch after this step
    state: Any  # the train state after this step (donated to the next step: read it inside the hook)
    loader: StepLoader
    results: dict = field(default_factory=dict)  # what earlier hooks of this step left (e.g. "val")

    @property
    def final(self) -> bool:
        return self.step == self.total


Hook = Callable[[StepInfo], None]


@dataclass
class _Registered:
    fn: Hook
    every: int
    first: bool
    when: Optional[Callable[[StepInfo], bool]]
    name: str

    def due(self, info: StepInfo) -> bool:
        return (
            bool(self.every and info.step % self.every == 0)
            or info.final
            or (self.first and info.first)
            or bool(self.when is not None and self.when(info))
        )


class Trainer:
    """Runs ``step_fn`` on the loader's batches and the hooks after each step."""

    def __init__(self, step_fn: StepFn, loader: StepLoader, accum: int, checkpoint_dir: str):
        self.step_fn, self.loader, self.accum = step_fn, loader, accum
        self.checkpoint_dir = checkpoint_dir  # named when a step is not finite
        self.hooks: list[_Registered] = []

    def add_hook(
        self,
        fn: Hook,
        every: int = 1,
        first: bool = False,
        when: Optional[Callable[[StepInfo], bool]] = None,
        name: Optional[str] = None,
    ) -> None:
        if every < 0:
            raise ValueError(f"hook {name or fn!r}: every must be >= 0, got {every}")
        self.hooks.append(_Registered(fn, every, first, when, name or getattr(fn, "__name__", type(fn).__name__)))

    def training_steps(self, state: Any, start: int, total: int) -> Iterator[StepInfo]:
        """Steps ``start + 1`` .. ``total``; a non-finite loss or gradient stops the run (the step left the
        state unchanged)."""
        for step in range(start, total):
            t0 = time.perf_counter()
            host = self.loader.next_step(self.accum)
            host.pop("example_index", None)
            state, m = self.step_fn(state, host)
            if not bool(m["ok"]):
                raise TrainingError(
                    f"non-finite loss or gradient at step {step + 1} (loss={float(m['loss'])}, "
                    f"grad_norm={float(m['grad_norm'])}); the update was not applied and the last good checkpoint "
                    f"is kept in {self.checkpoint_dir}. Lower train.lr or check the data."
                )
            yield StepInfo(
                step=step + 1,
                total=total,
                first=step == start,
                loss=float(m["loss"]),
                lr=float(m["lr"]),
                metrics=m,
                tokens=int(host["segment_ids"].size),
                real_tokens=int(m["real_tokens"]),
                seconds=time.perf_counter() - t0,
                epoch=self.loader.epoch,
                state=state,
                loader=self.loader,
            )

    def run_hooks(self, info: StepInfo) -> None:
        for h in self.hooks:
            if h.due(info):
                h.fn(info)

    def train(self, state: Any, start: int, total: int) -> Any:
        """All steps with their hooks; the final state."""
        for info in self.training_steps(state, start, total):
            self.run_hooks(info)
            state = info.state
        return state
