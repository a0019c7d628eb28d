"""Orbax checkpoints of the train state plus the data loader's position.

Keeps the latest N and the best N by validation loss (a checkpoint saved with metrics). Saves
are async and atomic (Orbax writes a temporary folder and renames it), so a process killed
mid-save leaves the previous checkpoint usable. A checkpoint whose files are damaged after the
fact (a flipped byte, a truncated copy) is reported by step and file; :meth:`Checkpointer.first_readable`
falls back to the next older one and moves the damaged folder aside (never deletes it).
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import re
import shutil
import sys
import time
import traceback
import warnings
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TypeVar

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from rm_jax.core.config import CheckpointConfig
from rm_jax.core.errors import CheckpointError, ModelLoadError
from rm_jax.models.lora import combine, fill_base, has_adapters, is_checkpointed, partition

T = TypeVar("T")
# <checkpoint folder>.unreadable/ beside it: damaged steps moved out of Orbax's way (the folder's name
# comes from above: rm_jax.runs.layout)
UNREADABLE_SUFFIX = ".unreadable"


def _neg_val_loss(metrics: Any) -> float:
    return -float(metrics["val_loss"])


class Checkpointer:
    def __init__(self, directory: str, cfg: CheckpointConfig):
        policies = [cm.LatestN(n=max(cfg.keep_latest, 1))]
        if cfg.keep_best > 0:
            policies.append(
                cm.BestN(get_metric_fn=_neg_val_loss, n=cfg.keep_best, keep_checkpoints_without_metrics=False)
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=cm.AnyPreservationPolicy(policies),
            # Orbax stores per-step metrics only when best_fn is set.
            best_fn=lambda m: float(m["val_loss"]),
            best_mode="min",
            enable_async_checkpointing=cfg.async_save,
            create=True,
        )
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

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

    @property
    def run_dir(self) -> str:
        return os.path.dirname(self.directory)

    def save(self, step: int, state: Any, data_state: dict, metrics: Optional[dict] = None) -> None:
        """With LoRA adapters in the parameters, only they and the head are saved (with their optimizer
        state): the frozen base is identified by the run folder's lora_base.json and re-read on restore."""
        if _lora_state(state):
            state = {**state, "params": partition(state["params"], is_checkpointed)[0]}
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, abstract_state: Any, base: Optional[Any] = None) -> tuple[Any, dict]:
        """(train state, data loader position) of ``step``. A LoRA run's frozen base comes from ``base`` when
        given (:func:`frozen_base` of a state of this run: the same base, already on the mesh), else it is
        re-read from the folder the run's lora_base.json names."""
        lora = _lora_state(abstract_state)
        if lora:
            full = abstract_state["params"]
            abstract_state = {**abstract_state, "params": partition(full, is_checkpointed)[0]}
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        )
        state = out["state"]
        if lora:
            saved = state["params"]
            params = combine(saved, base) if base is not None else fill_base(self.run_dir, full, saved)
            state = {**state, "params": params}
        return state, out["data"]

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the parameters (e.g. to initialise a new run from this one); a LoRA run's frozen base
        is re-read from the folder its lora_base.json names."""
        if has_adapters(abstract_params):
            saved = self._restore_saved_params(step, partition(abstract_params, is_checkpointed)[0])
            return fill_base(self.run_dir, abstract_params, saved)
        return self._restore_saved_params(step, abstract_params)

    def _restore_saved_params(self, step: int, abstract_params: Any) -> Any:
        target = {"params": abstract_params}
        ckptr = ocp.PyTreeCheckpointer()
        out = ckptr.restore(
            os.path.join(self.directory, str(step), "state"),
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
            ),
        )
        return out["params"]

    def first_readable(
        self,
        steps: Sequence[int],
        restore: Callable[[int], T],
        log: Callable[[str], None] = lambda m: None,
        quarantine: bool = True,
    ) -> tuple[int, T]:
        """``restore(step)`` for the first of ``steps`` that can be read; each unreadable one is reported
        through ``log`` (run folder, step, file, reason). With ``quarantine``, once a readable step is
        found the unreadable newer ones are moved to ``checkpoints.unreadable/`` (kept, never deleted),
        so a run resumed from the older step can save those step numbers again. If none is readable,
        nothing is moved and a :class:`CheckpointError` names them all."""
        run = os.path.dirname(self.directory)
        failed: list[tuple[int, str]] = []
        last: Optional[BaseException] = None
        for step in steps:
            try:
                with _quiet_failure():
                    out = restore(step)
            except ModelLoadError:  # a LoRA run's base is missing or changed: not damage to this checkpoint
                raise
            except Exception as e:  # Orbax/TensorStore raise many types for damaged files
                last = e
                problem = describe_failure(e, os.path.join(self.directory, str(step)))
                failed.append((step, problem))
                log(f"checkpoint step {step} in {run} is unreadable: {problem}")
                continue
            last = None
            for bad, _ in failed:
                if quarantine:
                    log(f"moved the unreadable step {bad} to {self.quarantine(bad)}")
            if failed:
                log(f"using the previous readable checkpoint, step {step}")
            return step, out
        if not failed:
            raise CheckpointError(f"{run}: has no checkpoint")
        raise CheckpointError(
            f"{run}: no readable checkpoint: "
            + "; ".join(f"step {s}: {p}" for s, p in failed)
            + ". Move or delete its checkpoints/ folder to start over"
        ) from last

    def quarantine(self, step: int) -> str:
        """Move a damaged step folder next to the checkpoints (kept for inspection, out of Orbax's listing)."""
        src = os.path.join(self.directory, str(step))
        aside = os.path.normpath(self.directory) + UNREADABLE_SUFFIX
        dst = os.path.join(aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0 and os.path.isdir(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.move(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"rm_jax quarantine {step}")
        self.manager.reload()
        return dst

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def frozen_base(state: Any) -> Optional[dict]:
    """A LoRA train state's frozen base (the parameters its checkpoints leave out); None without LoRA."""
    return partition(state["params"], is_checkpointed)[1] if _lora_state(state) else None


def _lora_state(state: Any) -> bool:
    """A train state whose parameters carry LoRA adapters (its base is frozen and not saved)."""
    return isinstance(state, Mapping) and isinstance(state.get("params"), Mapping) and has_adapters(state["params"])


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


@contextlib.contextmanager
def _quiet_failure() -> Iterator[None]:
    """A failed Orbax read leaves hundreds of lines on stderr (its TensorStore callbacks hitting a closed
    event loop, and its unawaited read coroutines when they are finalised, possibly much later) that
    bury the real cause. Hold stderr while restoring: on success pass on what was written, on failure
    drop it (the caller reports the cause); and from the first failure on, drop the unraisable-exception
    reports of those reads (:func:`_filter_failed_reads`)."""
    held, real = io.StringIO(), sys.stderr
    sys.stderr = held
    ok = False
    try:
        yield
        ok = True
    finally:
        if not ok:
            _filter_failed_reads()
            gc.collect()
            time.sleep(0.2)  # let the failed read's threads run their callbacks while stderr is held
        sys.stderr = real
        if ok and held.getvalue():
            real.write(held.getvalue())


_ORBAX_READ = "_read_array_index_and_device_put"
_ORBAX_SERIALIZATION = os.path.join("orbax", "checkpoint", "_src", "serialization")


# What the abandoned reads of a damaged checkpoint say when asyncio finalises them (at exit, often): the
# Task's coroutine path, or for bare Futures and gathers only the TensorStore error inside them.
_FAILED_READ_MARKS = (_ORBAX_SERIALIZATION, _ORBAX_READ, "in OCDBT database", "while reading array index")


class _FailedReadNoise(logging.Filter):
    """asyncio's '... exception was never retrieved' (Task, Future, _GatheringFuture) for the reads of a
    checkpoint already reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "never retrieved" not in msg:
            return True
        text = msg
        if record.exc_info and record.exc_info[1] is not None:
            text += "".join(traceback.format_exception(*record.exc_info))
        return not any(mark in text for mark in _FAILED_READ_MARKS)


def _filter_failed_reads() -> None:
    """From the first failed restore on, drop the reports its abandoned read tasks make when they are
    finalised (the failure itself is reported once, by :meth:`Checkpointer.first_readable`)."""
    previous = sys.unraisablehook
    if getattr(previous, "_rm_jax_filter", False):
        return

    def hook(unraisable: Any) -> None:
        if getattr(unraisable.object, "__qualname__", "") == _ORBAX_READ:
            return
        previous(unraisable)

    hook._rm_jax_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_FailedReadNoise())
    warnings.filterwarnings("ignore", message=f"coroutine '{_ORBAX_READ}' was never awaited", category=RuntimeWarning)


_PATH = re.compile(r'(/[^\s"\'<>]+)')


def describe_failure(error: BaseException, step_dir: str) -> str:
    """One line for a failed restore: the innermost cause (TensorStore's names the array and the
    OCDBT folder: 'Error reading "params.w/0.0" ... ZSTD ... Data corruption detected') plus the
    first file or folder under the step that any message in the chain names."""
    chain, e = [], error
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    root = next((c for c in reversed(chain) if str(c).strip()), error)
    msg = str(root).strip().splitlines()[0]
    msg = re.sub(r"^[A-Z_]+: ", "", msg)  # absl status prefix, e.g. FAILED_PRECONDITION
    if len(msg) > 300:
        msg = msg[:297] + "..."
    paths = [m for c in chain for m in _PATH.findall(str(c)) if m.startswith(step_dir)]
    where = paths[0].rstrip(".:,") if paths else step_dir
    return f"{where}: {type(root).__name__}: {msg}" if where not in msg else f"{type(root).__name__}: {msg}"
