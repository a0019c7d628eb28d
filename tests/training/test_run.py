"""rm_jax.training.run.train: ``--wait`` on a finished run folder (DONE, read under the lock) returns without
training or evaluating again and says so; without ``--wait`` the run is resumed and evaluated as before."""

from __future__ import annotations

import os
import threading

from rm_jax.core.config import RunConfig
from rm_jax.core.console import setup_logging
from rm_jax.runs import layout, lock
from rm_jax.training import run as run_mod
from tests.runs.test_lock import _holder


def _spy(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr(run_mod, "_train", lambda cfg: calls.append(cfg.run_dir) or os.path.abspath(cfg.run_dir))
    return calls


def test_wait_on_a_finished_run_neither_trains_nor_evaluates(tmp_path, monkeypatch, capsys):
    setup_logging()
    calls = _spy(monkeypatch)
    run = str(tmp_path / "run")
    os.makedirs(run)
    layout.mark_done(run, {"steps": 4, "best_step": 4})
    assert run_mod.train(RunConfig(run_dir=run), wait=True) == run
    assert calls == []
    err = capsys.readouterr().err
    assert f"{run} is finished (DONE); nothing to train or evaluate" in err, err
    assert lock.read_holder(run) is None and not lock._HELD  # held while it looked, then released
    run_mod.train(RunConfig(run_dir=run))  # without --wait: resumed and evaluated, as before
    assert calls == [run]


def test_a_process_that_waited_for_the_run_to_finish_does_not_evaluate_it_again(tmp_path, monkeypatch, capsys):
    """The case --wait is for: a second start of a run that is training; the first one finishes (DONE) and
    releases the folder; the waiting one then finds it finished."""
    setup_logging()
    calls = _spy(monkeypatch)
    run = str(tmp_path / "run")
    first = _holder(run)

    def finish() -> None:
        layout.mark_done(run, {"steps": 4, "best_step": 4})
        first.stdin.close()

    threading.Timer(1.0, finish).start()
    try:
        assert run_mod.train(RunConfig(run_dir=run), wait=True) == run
    finally:
        first.wait()
    assert calls == []
    err = capsys.readouterr().err
    assert f"in use by pid {first.pid}" in err and "waiting for it to finish" in err, err
    assert "is finished (DONE); nothing to train or evaluate" in err, err
