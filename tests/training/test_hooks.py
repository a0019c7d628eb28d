"""A run's hooks on the model-free Trainer: which steps write which records, checkpoints and lines, in order."""

import numpy as np
import pytest

from rm_jax.core.config import load_config
from rm_jax.training.hooks import CheckpointHook, MetricsHook, ProgressHook, RunHooks, ValidationHook
from rm_jax.training.tasks import task_for
from rm_jax.training.trainer import Trainer
from tests.helpers import TINY
from tests.training.test_trainer import FakeLoader


class Recorder:
    """Stands in for MetricsLog and Checkpointer; all calls in one list, in order."""

    def __init__(self):
        self.calls = []

    def write(self, rec):
        self.calls.append(("write", dict(rec)))

    def save(self, step, state, data_state, metrics):
        self.calls.append(("save", step, state["n"], data_state["index"], metrics))


def step_with_attr_mse(state, host):
    n = state["n"] + 1
    m = {
        "attr_mse": np.arange(5, dtype=np.float32) * n,
        "grad_norm": np.float32(0.5),
        "kl_diag": np.float32(n / 10),  # a key no task knows: logged under its own name
        "loss": np.float32(1.0 / n),
        "lr": np.float32(0.01),
        "ok": np.bool_(True),
        "real_tokens": np.int32((host["segment_ids"] > 0).sum()),
    }
    return {"n": n, "params": n}, m


def run(tmp_path, start, total, *overrides, peak=None, clock=None):
    cfg = load_config(TINY, [f"run_dir={tmp_path}", *overrides])
    rec, lines = Recorder(), []
    progress = ProgressHook(start, total, enabled=False)
    progress.write = lines.append
    validator = lambda params: ({"val_loss": 1.0 / params, "val_other": params}, None)  # noqa: E731
    hooks = RunHooks(
        metrics=MetricsHook(rec, task_for(cfg), 100.0, peak, **({"clock": clock} if clock else {})),
        progress=progress,
        validation=ValidationHook(validator, rec, lines.append),
        checkpoint=CheckpointHook(rec),
    )
    loader = FakeLoader()
    loader.index = start
    t = Trainer(step_with_attr_mse, loader, accum=1, checkpoint_dir=str(tmp_path))
    hooks.register(t, cfg)
    t.train({"n": start, "params": start}, start, total)
    return rec.calls, lines


EVERY = ["train.log_every=4", "train.eval_every=5", "checkpoint.every_steps=3"]


def test_records_checkpoints_and_lines_at_their_steps_in_order(tmp_path):
    calls, lines = run(tmp_path, 0, 10, *EVERY)
    got = [(c[0], c[1]["step"], "val_loss" in c[1]) if c[0] == "write" else (c[0], c[1], c[4]) for c in calls]
    assert got == [
        ("write", 1, False),  # the first step of the session
        ("save", 3, None),
        ("write", 4, False),
        ("write", 5, True),  # validation, then its checkpoint with the validation loss
        ("save", 5, {"val_loss": 1 / 5}),
        ("save", 6, None),
        ("write", 8, False),
        ("save", 9, None),
        ("write", 10, False),  # the final step: train record, validation, checkpoint
        ("write", 10, True),
        ("save", 10, {"val_loss": 1 / 10}),
    ]
    assert lines == ["step 5: val_loss 0.2000", "step 10: val_loss 0.1000"]
    saves = [c for c in calls if c[0] == "save"]
    assert all(c[2] == c[1] and c[3] == c[1] for c in saves)  # the state and loader position of that step


def test_resume_counts_from_the_run_start(tmp_path):
    calls, lines = run(tmp_path, 6, 10, *EVERY)
    steps = [(c[0], c[1]["step"] if c[0] == "write" else c[1]) for c in calls]
    assert steps == [("write", 7), ("write", 8), ("save", 9), ("write", 10), ("write", 10), ("save", 10)]
    assert lines == ["step 10: val_loss 0.1000"]


def test_train_record_keys_values_and_window_throughput(tmp_path):
    ticks = iter(float(x) for x in range(100))
    overrides = ["train.log_every=2", "train.eval_every=0", "checkpoint.every_steps=0"]
    calls, _ = run(tmp_path, 0, 4, *overrides, peak=1e3, clock=lambda: next(ticks))
    recs = [c[1] for c in calls if c[0] == "write" and "loss" in c[1]]
    assert [r["step"] for r in recs] == [1, 2, 4]
    attrs = load_config(TINY, []).model.attributes
    assert list(recs[0]) == [
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "real_tokens_per_s",
        "epoch",
        *[f"train_mse_{a}" for a in attrs],
        "kl_diag",
        "mfu",
    ]
    r = recs[2]
    assert r["loss"] == pytest.approx(0.25) and r["grad_norm"] == 0.5 and r["epoch"] == 1
    assert [r[f"train_mse_{a}"] for a in attrs] == [0.0, 4.0, 8.0, 12.0, 16.0]
    assert r["kl_diag"] == pytest.approx(0.4)
    # The window since step 2 holds steps 3 and 4: 12 positions each, 3 * (3 + 1) + 3 * (4 % 4 + 1) real ones,
    # over one clock tick (the clock ticks once per record and at the start).
    assert r["tokens_per_s"] == 24.0 and r["real_tokens_per_s"] == 15.0
    assert r["mfu"] == pytest.approx(24.0 * 100.0 / (1e3 * __import__("jax").device_count()))


def test_without_validation_checkpoints_carry_no_metrics(tmp_path):
    cfg = load_config(TINY, [f"run_dir={tmp_path}", "checkpoint.every_steps=2"])
    rec = Recorder()
    hooks = RunHooks(MetricsHook(rec, task_for(cfg), 1.0, None), ProgressHook(0, 3, False), None, CheckpointHook(rec))
    t = Trainer(step_with_attr_mse, FakeLoader(), accum=1, checkpoint_dir=str(tmp_path))
    hooks.register(t, cfg)
    t.train({"n": 0, "params": 0}, 0, 3)
    assert [c[1:] for c in rec.calls if c[0] == "save"] == [(2, 2, 2, None), (3, 3, 3, None)]
    assert not any("val_loss" in c[1] for c in rec.calls if c[0] == "write")
