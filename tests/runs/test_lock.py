"""One writer per run folder (rm_jax.runs.lock): another process holding the folder is named and refused,
or waited for; a holder that died leaves a record that is taken over and reported; release empties it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from rm_jax.core.errors import RunLockError
from rm_jax.runs import lock
from tests.helpers import ROOT

HOLDER = """
import sys, time
from rm_jax.runs.lock import acquire, release
acquire(sys.argv[1])
print("held", flush=True)
sys.stdin.read()  # hold until the test closes stdin (or kills us)
release(sys.argv[1])
"""


def _holder(run_dir: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, run_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_is_refused_with_the_holder_named(tmp_path):
    run = str(tmp_path / "run")
    p = _holder(run)
    try:
        rec = lock.read_holder(run)
        assert rec["pid"] == p.pid and rec["host"] == socket.gethostname() and rec["started"]
        with pytest.raises(RunLockError) as e:
            lock.acquire(run)
        msg = str(e.value)
        assert f"pid {p.pid} on host {socket.gethostname()}" in msg and "--wait" in msg and run in msg
        assert "\n" not in msg
        assert run not in {os.path.dirname(k) for k in lock._HELD}  # the refused process holds nothing
    finally:
        p.stdin.close()
        p.wait()
    assert lock.read_holder(run) is None  # released cleanly: an empty record


def test_wait_blocks_until_the_holder_releases(tmp_path):
    run = str(tmp_path / "run")
    p = _holder(run)
    logged = []
    t0 = time.time()
    threading.Timer(1.5, p.stdin.close).start()
    try:
        lock.acquire(run, wait=True, log=logged.append)
        waited = time.time() - t0
        assert waited >= 1.4, f"did not wait for the holder ({waited:.2f} s)"
        assert p.wait(timeout=10) == 0
        assert any(f"in use by pid {p.pid}" in m and "waiting" in m for m in logged), logged
        assert not any("taking over" in m for m in logged), logged  # a clean release is not a takeover
        assert lock.read_holder(run)["pid"] == os.getpid()
    finally:
        lock.release(run)
        p.wait()


def test_a_killed_holder_is_taken_over_and_said_so(tmp_path):
    run = str(tmp_path / "run")
    p = _holder(run)
    p.send_signal(signal.SIGKILL)
    p.wait()
    logged = []
    with lock.hold_run_folder(run, log=logged.append):
        assert lock.read_holder(run)["pid"] == os.getpid()
    assert len(logged) == 1 and f"pid {p.pid}" in logged[0] and "no longer running" in logged[0], logged
    assert lock.read_holder(run) is None


def test_records_that_cannot_be_checked_are_reported_not_trusted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    other = {"host": "elsewhere-" + socket.gethostname(), "pid": 1, "started": "2026-01-01T00:00:00+00:00"}
    (run / "LOCK").write_text(json.dumps(other) + "\n")
    logged = []
    with lock.hold_run_folder(str(run), log=logged.append):
        pass
    assert "another host" in logged[0] and "elsewhere-" in logged[0], logged
    # pid 1 runs on this host but does not hold the lock: said as such, not as "no longer running".
    (run / "LOCK").write_text(json.dumps({**other, "host": socket.gethostname()}) + "\n")
    logged.clear()
    with lock.hold_run_folder(str(run), log=logged.append):
        pass
    assert "does not hold the lock" in logged[0], logged


def test_reentrant_within_a_process_and_released_by_the_outermost(tmp_path):
    run = str(tmp_path / "run")
    with lock.hold_run_folder(run, log=pytest.fail):
        with lock.hold_run_folder(run, log=pytest.fail):  # the sweep member, then its training
            pass
        assert lock.read_holder(run)["pid"] == os.getpid()  # still held after the inner block
        p = subprocess.run(
            [sys.executable, "-c", "import sys; from rm_jax.runs.lock import acquire; acquire(sys.argv[1])", run],
            env={**os.environ, "PYTHONPATH": ROOT},
            capture_output=True,
            text=True,
        )
        assert p.returncode != 0 and "RunLockError" in p.stderr and f"pid {os.getpid()}" in p.stderr
    assert lock.read_holder(run) is None and not lock._HELD


def test_other_processes_of_a_multi_host_run_take_nothing(tmp_path):
    run = tmp_path / "run"
    with lock.hold_run_folder(str(run), enabled=False):
        assert not (run / "LOCK").exists()


# ---------------------------------------------------------------- several JAX processes agree


class FakeClient:
    """jax.distributed's key-value store as hold_run_folder_agreed uses it: a missing key times out."""

    def __init__(self):
        self.store = {}
        self.barriers = []

    def key_value_set(self, key, value):
        assert key not in self.store  # each decision has its own key
        self.store[key] = value

    def blocking_key_value_get(self, key, timeout_ms):
        if key not in self.store:
            raise RuntimeError(f"DEADLINE_EXCEEDED: {key} not found")
        return self.store[key]

    def wait_at_barrier(self, barrier_id, timeout_ms):
        self.barriers.append(barrier_id)


def _as_process(monkeypatch, pid: int, client: FakeClient) -> str:
    monkeypatch.setattr(lock, "_distributed_client", lambda: (client, pid, 2))
    return f"rm_jax/run_lock/{lock._rounds[0] + 1}"  # the key of the next decision


def test_a_refused_process_0_tells_the_others_the_same_line(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    p = _holder(run)
    try:
        client = FakeClient()
        key = _as_process(monkeypatch, 0, client)
        with pytest.raises(RunLockError) as e0:
            with lock.hold_run_folder_agreed(run):
                pytest.fail("process 0 went on without the lock")
        assert f"pid {p.pid}" in str(e0.value)
        assert client.store == {key: "refused " + str(e0.value)} and client.barriers == [key + "/read"]
        # Process 1 of the same run, reading process 0's word: the same error, and nothing taken.
        other = FakeClient()
        other.store[_as_process(monkeypatch, 1, other)] = client.store[key]
        with pytest.raises(RunLockError) as e1:
            with lock.hold_run_folder_agreed(run):
                pytest.fail("process 1 went on after process 0 was refused")
        assert str(e1.value) == str(e0.value) and len(other.barriers) == 1
    finally:
        p.stdin.close()
        p.wait()


def test_process_0_holds_and_tells_whether_the_folder_is_finished(tmp_path, monkeypatch):
    run = tmp_path / "run"
    for done in (False, True):
        if done:
            (run / "DONE").write_text("{}\n")
        client = FakeClient()
        key = _as_process(monkeypatch, 0, client)
        with lock.hold_run_folder_agreed(str(run)) as finished:
            assert lock.read_holder(str(run))["pid"] == os.getpid()
            assert finished is done and client.store == {key: "held done" if done else "held"}
        assert lock.read_holder(str(run)) is None and not lock._HELD
        # Process 1 takes nothing and gets process 0's answer.
        other, word = tmp_path / "other", FakeClient()
        word.store[_as_process(monkeypatch, 1, word)] = client.store[key]
        with lock.hold_run_folder_agreed(str(other)) as finished:
            assert finished is done and not other.exists()


def test_without_word_from_process_0_the_others_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "AGREE_TIMEOUT_S", 0.0)
    _as_process(monkeypatch, 1, FakeClient())
    with pytest.raises(RunLockError, match="process 0 did not say within 0 s"):
        with lock.hold_run_folder_agreed(str(tmp_path / "run")):
            pytest.fail("went on without process 0's word")
