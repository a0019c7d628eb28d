"""Two processes (2 CPU devices each, gloo collectives) train like one process with 4 devices."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import TINY, WORKER, worker_env

ARGS = [
    "model.arch.hidden_size=32",
    "model.arch.intermediate_size=64",
    "train.log_every=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "train.max_steps=10",
    "train.eval_every=5",
    "mesh.data=2",
    "mesh.fsdp=2",
    "mesh.tensor=1",
    "checkpoint.every_steps=5",
]

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(x) for x in f]


def test_two_processes_match_one_process(tmp_path, data_files):
    # The small train / validation files (10 steps of 8 rows; 60 validation rows, a partial last batch).
    args = [*ARGS, f"data.train={data_files['train']}", f"data.validation={data_files['validation']}"]
    two = str(tmp_path / "two")
    port = _free_port()
    procs = []
    for i in range(2):
        with open(tmp_path / f"process{i}.log", "w") as log:  # a file: no pipe to fill while the test waits
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        WORKER,
                        "2",
                        TINY,
                        f"run_dir={two}",
                        *args,
                        "distributed.enabled=true",
                        f"distributed.coordinator_address=127.0.0.1:{port}",
                        "distributed.num_processes=2",
                        f"distributed.process_id={i}",
                    ],
                    env=worker_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    # The one-process run alongside them: their start-ups and compiles overlap where the pair waits.
    one = str(tmp_path / "one")
    try:
        single = subprocess.run(
            [sys.executable, WORKER, "4", TINY, f"run_dir={one}", *args],
            env=worker_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert single.returncode == 0, single.stderr[-3000:]
    for i, p in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"process{i}.log").read_text()[-3000:]
    a = {r["step"]: r for r in _records(one) if "loss" in r}
    b = {r["step"]: r for r in _records(two) if "loss" in r}
    assert sorted(a) == sorted(b) == list(range(1, 11))
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-5), s
    va = [r["val_loss"] for r in _records(one) if "val_loss" in r]
    vb = [r["val_loss"] for r in _records(two) if "val_loss" in r]
    assert len(va) == 2 and vb == pytest.approx(va, rel=1e-5)
    assert os.path.exists(os.path.join(two, "eval.json"))
