"""Pre-emption: SIGKILL after a checkpoint, or during a save, then the same command again. A resume must be
told apart from a deterministic restart (which ends at the same loss): the re-run says which step it resumed
from, the rows logged before the kill are kept as written (a recomputed row differs in its timings), no step
is logged twice, and every checkpoint after the resume holds the same parameters and optimizer state as the
uninterrupted run's. For rm, pairs and sft runs (steerlm2: tests/integration/test_steer.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import (
    ROOT,
    TINY,
    WORKER,
    assert_resumed_not_restarted,
    assert_states_equal,
    checkpoint_state,
    checkpoint_steps,
    metrics_lines,
)

SMALL = [
    "model.arch.hidden_size=32",
    "model.arch.intermediate_size=64",
    "train.log_every=1",
    "logging.progress=false",
    "logging.tensorboard=false",
    "mesh.num_devices=1",
    "mesh.data=1",
    "checkpoint.every_steps=5",
    "checkpoint.keep_latest=100",  # every step's state stays, to compare with the uninterrupted run
    "checkpoint.async_save=true",
]
# task -> (config, overrides, steps, the checkpoint to kill after)
TASKS = {
    "rm": (TINY, ["train.max_steps=60", "train.eval_every=20"], 60, 20),
    "pairs": (
        TINY,
        ["train.max_steps=30", "train.eval_every=10", "data.kind=pairs", "loss.type=bt", "data.seq_len=320"]
        + ["model.arch.max_position_embeddings=320"],
        30,
        10,
    ),
    "sft": (
        os.path.join(ROOT, "experiments", "steerlm_sft_demo.yaml"),
        ["train.max_steps=30", "train.eval_every=10", "eval.label_probe.prompts=1"]
        + ["eval.label_probe.max_new_tokens=4", "model.arch.max_position_embeddings=192"],
        30,
        10,
    ),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(subprocess_cache_env):
    """The killed and resumed runs load the reference run's compiled programs (their start-up and
    compiles, not the tiny steps, are where the time goes)."""
    return subprocess_cache_env


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    from tests.integration.test_pairs import _preference_file

    path = tmp_path_factory.mktemp("pairs") / "pref.jsonl"
    _preference_file(path)
    return str(path)


def _cmd(task, run_dir, pair_file):
    config, extra, _, _ = TASKS[task]
    data = [f"data.train={pair_file}", f"data.validation={pair_file}"] if task == "pairs" else []
    return [sys.executable, WORKER, "1", config, f"run_dir={run_dir}", *SMALL, *extra, *data]


def _kill_when(cmd, env, predicate, timeout=300):
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


_REFERENCES: dict = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env, pair_file):
    def get(task):
        if task not in _REFERENCES:
            run = str(tmp_path_factory.mktemp(f"ref_{task}"))
            p = subprocess.run(_cmd(task, run, pair_file), env=env, capture_output=True, text=True)
            assert p.returncode == 0, p.stderr[-3000:]
            _REFERENCES[task] = run
        return _REFERENCES[task]

    return get


def _rerun(task, run, env, pair_file):
    before = metrics_lines(run)
    resume_at = max(checkpoint_steps(run))
    p = subprocess.run(_cmd(task, run, pair_file), env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return before, resume_at, p.stderr


@pytest.mark.parametrize("task", list(TASKS))
def test_sigkill_after_checkpoint_resumes_not_restarts(task, reference, env, pair_file, tmp_path):
    ref = reference(task)
    _, _, total, kill_after = TASKS[task]
    run = str(tmp_path)
    done = os.path.join(run, "DONE")
    _kill_when(
        _cmd(task, run, pair_file), env, lambda: kill_after in checkpoint_steps(run) and not os.path.exists(done)
    )
    assert not os.path.exists(done)
    before, resume_at, stderr = _rerun(task, run, env, pair_file)
    assert kill_after <= resume_at < total
    assert_resumed_not_restarted(before, metrics_lines(run), stderr, resume_at, total)

    # The losses and every saved state from the resume on are the uninterrupted run's.
    a = {r["step"]: r["loss"] for r in map(json.loads, metrics_lines(ref)) if "loss" in r}
    b = {r["step"]: r["loss"] for r in map(json.loads, metrics_lines(run)) if "loss" in r}
    assert sorted(a) == sorted(b) == list(range(1, total + 1))
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-6, abs=0), s
    after = [s for s in checkpoint_steps(run) if s >= resume_at]
    assert after[0] == resume_at and after[-1] == total and len(after) >= 2
    for s in after:
        assert_states_equal(checkpoint_state(ref, s), checkpoint_state(run, s), f"{task} step {s}")
    ea = json.load(open(os.path.join(ref, "eval.json")))
    eb = json.load(open(os.path.join(run, "eval.json")))
    assert ea["step"] == eb["step"] and ea["val_loss"] == pytest.approx(eb["val_loss"], rel=1e-6)


def test_kill_during_save_keeps_previous_checkpoint(reference, env, pair_file, tmp_path):
    ref = reference("rm")
    run = str(tmp_path)
    ck = os.path.join(run, "checkpoints")

    def saving():  # an unfinished (temporary) step folder exists next to a finished one
        if not os.path.isdir(ck):
            return False
        names = os.listdir(ck)
        return any(not n.isdigit() and n.split(".")[0].isdigit() for n in names) and checkpoint_steps(run)

    _kill_when(_cmd("rm", run, pair_file), env, saving)
    assert checkpoint_steps(run), "no finished checkpoint before the kill"
    # The same command resumes from the last finished checkpoint and ends where the reference ends.
    before, resume_at, stderr = _rerun("rm", run, env, pair_file)
    assert_resumed_not_restarted(before, metrics_lines(run), stderr, resume_at, 60)
    a = {r["step"]: r["loss"] for r in map(json.loads, metrics_lines(ref)) if "loss" in r}
    b = {r["step"]: r["loss"] for r in map(json.loads, metrics_lines(run)) if "loss" in r}
    assert all(a[s] == pytest.approx(b[s], rel=1e-6, abs=0) for s in a)
    assert_states_equal(checkpoint_state(ref, 60), checkpoint_state(run, 60), "rm step 60")
