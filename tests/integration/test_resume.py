"""Pre-emption: SIGKILL after a checkpoint, or during a save, then the same command again."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rm_jax.models.llama import DecoderConfig
from rm_jax.models.sharding import make_mesh
from rm_jax.runs.read import read_meta, restore_run_params
from tests.helpers import TINY, WORKER

ARGS = [
    "model.arch.hidden_size=32",
    "model.arch.intermediate_size=64",
    "train.log_every=1",
    "logging.progress=false",
    "mesh.num_devices=1",
    "mesh.data=1",
    "train.eval_every=20",
    "checkpoint.every_steps=5",
    "train.max_steps=60",
    "checkpoint.async_save=true",
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(subprocess_cache_env):
    """The killed and resumed runs load the reference run's compiled programs (their start-up and
    compiles, not the 60 tiny steps, are where the time goes)."""
    return subprocess_cache_env


def _cmd(run_dir, *extra):
    return [sys.executable, WORKER, "1", TINY, f"run_dir={run_dir}", *ARGS, *extra]


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        recs = [json.loads(x) for x in f]
    out = {}
    for r in recs:
        if "loss" in r:
            assert r["step"] not in out, f"step {r['step']} logged twice"
            out[r["step"]] = r["loss"]
    return out


def _params(run_dir, step):
    meta = read_meta(run_dir)
    return restore_run_params(
        run_dir, DecoderConfig(**meta["decoder"]), make_mesh(devices=__import__("jax").devices()[:1]), step
    )


def _finished_steps(ckpt_dir):
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def _kill_when(run_dir, env, predicate, timeout=240):
    p = subprocess.Popen(_cmd(run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            p.send_signal(signal.SIGKILL)
            p.wait()
            return
        if p.poll() is not None:
            pytest.fail("training finished before it could be killed: " + p.stderr.read().decode()[-2000:])
        time.sleep(0.01)
    p.kill()
    pytest.fail("timed out waiting to kill")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    run = str(tmp_path_factory.mktemp("ref"))
    subprocess.run(_cmd(run), env=env, check=True, capture_output=True)
    return run


def test_sigkill_after_checkpoint_resumes_exactly(reference, env, tmp_path):
    run = str(tmp_path)
    ck = os.path.join(run, "checkpoints")
    _kill_when(run, env, lambda: 20 in _finished_steps(ck) and not os.path.exists(os.path.join(run, "DONE")))
    assert not os.path.exists(os.path.join(run, "DONE"))
    subprocess.run(_cmd(run), env=env, check=True, capture_output=True)
    a, b = _losses(reference), _losses(run)
    assert sorted(a) == sorted(b) == list(range(1, 61))
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-6, abs=0), s
    pa, pb = _params(reference, 60), _params(run, 60)
    diff = max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max())
        for x, y in zip(__import__("jax").tree.leaves(pa), __import__("jax").tree.leaves(pb))
    )
    assert diff <= 1e-6
    ea = json.load(open(os.path.join(reference, "eval.json")))
    eb = json.load(open(os.path.join(run, "eval.json")))
    assert ea["step"] == eb["step"] and ea["val_loss"] == pytest.approx(eb["val_loss"], rel=1e-6)


def test_kill_during_save_keeps_previous_checkpoint(reference, env, tmp_path):
    run = str(tmp_path)
    ck = os.path.join(run, "checkpoints")

    def saving():  # an unfinished (temporary) step folder exists next to a finished one
        if not os.path.isdir(ck):
            return False
        names = os.listdir(ck)
        return any(not n.isdigit() and n.split(".")[0].isdigit() for n in names) and _finished_steps(ck)

    _kill_when(run, env, saving)
    done_before = _finished_steps(ck)
    assert done_before, "no finished checkpoint before the kill"
    # The same command resumes from the last finished checkpoint and ends where the reference ends.
    subprocess.run(_cmd(run), env=env, check=True, capture_output=True)
    a, b = _losses(reference), _losses(run)
    assert sorted(b) == list(range(1, 61))
    assert all(a[s] == pytest.approx(b[s], rel=1e-6, abs=0) for s in a)
