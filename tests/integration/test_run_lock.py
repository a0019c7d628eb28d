"""One writer per run folder, with real processes: the same sweep task started three times at once (as a
requeued array job does) leaves one clean run. The first process trains; a second is refused with one line
naming the first; a third with --wait waits, then finds the member finished and trains nothing. A two-process
(multi-host) run whose process 0 is refused stops both processes at once with the same line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rm_jax.runs import lock
from tests.helpers import TINY, tiny_base, worker_env

pytestmark = pytest.mark.slow

STEPS = 60  # long enough that the later processes reach the lock while the first still trains


def _sweep(exp: str, sd: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rm_jax.cli", "sweep", exp, f"sweep_dir={sd}", "--task-index", "0", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_same_sweep_task_twice_at_once_leaves_one_clean_run(data_files, subprocess_cache_env, tmp_path):
    base = tiny_base(data_files, steps=STEPS, every=10)
    base["train"]["log_every"] = 1
    exp = tmp_path / "one.yaml"
    exp.write_text(yaml.safe_dump({**base, "run_dir": "unused"}))
    sd = tmp_path / "sweep"
    member = sd / "one"

    first = _sweep(str(exp), sd, subprocess_cache_env)
    deadline = time.time() + 300
    # The second and third start once the first is training in the folder (config.yaml written, not done).
    while not (member / "config.yaml").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first process ended before the others could start: " + first.stderr.read()
    refused = _sweep(str(exp), sd, subprocess_cache_env)
    waiting = _sweep(str(exp), sd, subprocess_cache_env, "--wait")
    outs = {
        name: p.communicate(timeout=600) for name, p in (("first", first), ("refused", refused), ("waiting", waiting))
    }
    err = {k: v[1] for k, v in outs.items()}

    assert first.returncode == 0, err["first"][-3000:]
    assert refused.returncode == 1, err["refused"][-3000:]
    lines = [ln for ln in err["refused"].splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in err["refused"], err["refused"][-3000:]
    assert f"is in use by pid {first.pid} on host" in lines[0] and str(member) in lines[0], lines
    assert waiting.returncode == 0, err["waiting"][-3000:]
    assert f"in use by pid {first.pid}" in err["waiting"] and "waiting for it to finish" in err["waiting"]
    assert "resumed from step" not in err["waiting"]  # it found the member finished: nothing trained twice

    # One clean run: each step logged once, in order, checkpoints of one training, released lock.
    recs = [json.loads(x) for x in (member / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_steps = [r["step"] for r in recs if "loss" in r]
    assert train_steps == list(range(1, STEPS + 1)), train_steps
    val_steps = [r["step"] for r in recs if "val_loss" in r]
    assert len(val_steps) == len(set(val_steps)), val_steps
    assert json.loads((member / "DONE").read_text())["steps"] == STEPS
    assert (member / "LOCK").read_text() == ""  # released cleanly by the last holder
    assert err["first"].count("[rm_jax] train:") == 1 and "[rm_jax] train:" not in err["waiting"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_process_0_stops_every_process_of_a_multihost_run(tmp_path):
    """Process 0 of a two-process run finds the folder held (by this test) and is refused; process 1, which
    takes no lock itself, learns that from process 0 and stops with the same one-line error, promptly, instead
    of going on into the run and timing out in a collective with a process that has gone."""
    run = str(tmp_path / "run")
    lock.acquire(run)  # the holder: this test's process
    port = _free_port()
    procs = []
    try:
        for i in range(2):
            cmd = [sys.executable, "-m", "rm_jax.cli", "train", TINY, f"run_dir={run}", "distributed.enabled=true"]
            cmd += [f"distributed.coordinator_address=127.0.0.1:{port}", "distributed.num_processes=2"]
            procs.append(
                subprocess.Popen(
                    [*cmd, f"distributed.process_id={i}"],
                    env=worker_env(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        t0 = time.time()
        outs = [p.communicate(timeout=240) for p in procs]
        took = time.time() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        lock.release(run)
    errs = [e for _, e in outs]
    assert [p.returncode for p in procs] == [1, 1], [e[-3000:] for e in errs]
    lines = [[ln for ln in e.splitlines() if "error:" in ln] for e in errs]
    assert len(lines[0]) == 1 and lines[0] == lines[1], lines
    assert f"{run} is in use by pid {os.getpid()} on host {socket.gethostname()}" in lines[0][0], lines
    assert all("Traceback" not in e for e in errs), errs
    assert took < 120, took  # start-up and distributed initialisation; nothing waits for a timeout
    assert sorted(os.listdir(run)) == ["LOCK"]  # neither process wrote anything into the held folder
