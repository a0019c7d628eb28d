"""One writer per run folder: an advisory lock on ``RUN_DIR/LOCK`` held for the life of a training run, a
sweep member or a pipeline step.

The lock is ``fcntl.flock`` on the file; the file's content says who holds it (host, pid, start time) so
that a refused process can name the holder. The kernel drops a flock when its holder dies (SIGKILL included),
so a lock can never be "stuck"; what a dead holder leaves is its record, which the next holder reports (a
takeover) and overwrites. The lock file is never renamed or deleted: flock belongs
to the inode, and replacing the file would let two processes each lock a different inode. The record is
therefore rewritten in place with a single ``write`` of about a hundred bytes, and a reader that catches it
mid-write retries briefly instead of reporting a torn record.

Locks are re-entrant within a process (a sweep member holds its folder, then the training it runs takes
the same lock), and are taken only by the process that asks. A run of several JAX processes (multi-host) uses
:func:`hold_run_folder_agreed`: process 0 takes the lock and tells the others the outcome, so a refusal stops
every process with the same line instead of leaving the others to time out in a collective.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from rm_jax.core.console import get_logger
from rm_jax.core.errors import RunLockError
from rm_jax.runs import layout

LOCK_FILE = layout.LOCK
logger = get_logger("runs")

# realpath of the lock file -> [fd, depth]: a process holds each folder once, however often it asks.
_HELD: dict[str, list[int]] = {}


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_FILE)


def read_holder(run_dir: str, retries: int = 20) -> Optional[dict]:
    """The record in the lock file, or None when it is empty (released cleanly, or never written)."""
    path = lock_path(run_dir)
    for _ in range(retries):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        if not text.strip():
            return None
        try:
            rec = json.loads(text)
            if isinstance(rec, dict):
                return rec
        except json.JSONDecodeError:
            pass
        time.sleep(0.05)  # caught between the truncate and the write of a new holder
    return {"unreadable": text[:200]}


def describe(rec: Optional[dict]) -> str:
    if not rec:
        return "an unknown process (no holder record)"
    if "unreadable" in rec:
        return f"an unknown process (unreadable record {rec['unreadable']!r})"
    return f"pid {rec.get('pid')} on host {rec.get('host')} since {rec.get('started')}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _stale_note(run_dir: str, rec: dict) -> str:
    """What to say when the lock was free but a record was left behind (its holder did not release)."""
    who = describe(rec)
    if "unreadable" in rec:
        return f"{run_dir}: taking over a lock left with {who}"
    if rec.get("host") != socket.gethostname():
        # flock is per host on some network file systems; a record from another host cannot be checked here.
        return (
            f"{run_dir}: taking over the lock record of {who}; it is from another host, so whether that "
            "process still runs cannot be checked from here"
        )
    pid = rec.get("pid")
    if isinstance(pid, int) and _pid_alive(pid):
        return f"{run_dir}: taking over the lock record of {who}; pid {pid} runs but does not hold the lock (reused)"
    return f"{run_dir}: taking over the lock of {who}, which is no longer running"


def _write_record(fd: int) -> None:
    rec = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    data = (json.dumps(rec) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)  # one write: a reader sees nothing or the whole record (see read_holder)
    os.fsync(fd)


def acquire(run_dir: str, wait: bool = False, log: Optional[Callable[[str], None]] = None) -> None:
    """Hold ``run_dir`` for this process, or raise RunLockError naming the holder (``wait``: block
    until it is released). ``log``: where take-overs and waits are said (default: the runs logger)."""
    log = log or logger.info
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.realpath(lock_path(run_dir))
    if path in _HELD:
        _HELD[path][1] += 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = describe(read_holder(run_dir))
            if not wait:
                raise RunLockError(
                    f"{run_dir} is in use by {holder}; one process writes a run folder at a time "
                    "(wait for it, or pass --wait)"
                ) from None
            log(f"{run_dir} is in use by {holder}; waiting for it to finish (--wait)")
            t0 = time.time()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log(f"{run_dir}: lock released after {time.time() - t0:.0f} s; continuing")
        left = read_holder(run_dir)
        if left:
            log(_stale_note(run_dir, left))
        _write_record(fd)
    except BaseException:
        os.close(fd)
        raise
    _HELD[path] = [fd, 1]


def release(run_dir: str) -> None:
    path = os.path.realpath(lock_path(run_dir))
    held = _HELD.get(path)
    if held is None:
        return
    held[1] -= 1
    if held[1]:
        return
    del _HELD[path]
    fd = held[0]
    try:
        os.ftruncate(fd, 0)  # an empty record: released cleanly, nothing to take over
    finally:
        os.close(fd)  # closing the last descriptor drops the flock


@contextmanager
def hold_run_folder(
    run_dir: str, wait: bool = False, enabled: bool = True, log: Optional[Callable[[str], None]] = None
) -> Iterator[None]:
    """``with hold_run_folder(run_dir):`` the folder is this process's until the block ends.
    ``enabled=False`` (processes other than 0 of a multi-host run) takes nothing."""
    if not enabled:
        yield
        return
    acquire(run_dir, wait, log)
    try:
        yield
    finally:
        release(run_dir)


# ---------------------------------------------------------------- several JAX processes

# How long processes other than 0 wait for its word when it does not --wait itself: it tries the lock without
# blocking right after distributed initialisation, which already lined the processes up.
AGREE_TIMEOUT_S = 300.0
_POLL_MS = 10_000
_HELD_MSG, _DONE_MSG, _REFUSED_MSG = "held", "held done", "refused "
_rounds = [0]  # every process asks in the same order (one per run), so the n-th key names the same question


def _distributed_client() -> tuple[Any, int, int]:
    """(client, process id, process count) of jax.distributed, or (None, 0, 1) when it is not initialised."""
    if "jax" not in sys.modules:
        return None, 0, 1
    from jax._src import distributed  # the client jax.distributed.initialize made (Orbax reads it the same way)

    st = distributed.global_state
    if st.client is None or st.num_processes <= 1:
        return None, 0, 1
    return st.client, st.process_id, st.num_processes


def _receive(client: Any, key: str, wait: bool, log: Callable[[str], None]) -> str:
    deadline = None if wait else time.time() + AGREE_TIMEOUT_S
    said = False
    while True:
        try:
            return client.blocking_key_value_get(key, _POLL_MS)
        except Exception as e:  # JaxRuntimeError "DEADLINE_EXCEEDED: GetKeyValue() timed out ..." is worth another try
            if "DEADLINE_EXCEEDED" not in str(e):
                raise
        if deadline is not None and time.time() > deadline:
            raise RunLockError(
                f"process 0 did not say within {AGREE_TIMEOUT_S:.0f} s whether it holds the run folder; stopping"
            )
        if wait and not said:
            log("waiting for process 0 to take the run folder (--wait)")
            said = True


@contextmanager
def hold_run_folder_agreed(
    run_dir: str, wait: bool = False, log: Optional[Callable[[str], None]] = None
) -> Iterator[bool]:
    """``with hold_run_folder_agreed(run_dir) as finished:`` :func:`hold_run_folder` for a run of one or more
    JAX processes. Process 0 takes the lock (``wait``: waits for it) and, holding it, reads whether the folder
    is finished (``DONE``); every process gets that answer from the ``with``, or the same RunLockError when
    process 0 is refused. The outcome travels through jax.distributed's key-value store, not a device
    collective: nothing is compiled, and processes waiting while process 0 waits for the lock (``--wait``, maybe
    hours) are not subject to a collective's timeout."""
    log = log or logger.info
    client, pid, _ = _distributed_client()
    if client is None:
        with hold_run_folder(run_dir, wait, log=log):
            yield layout.is_done(run_dir)
        return
    _rounds[0] += 1
    key = f"rm_jax/run_lock/{_rounds[0]}"
    if pid != 0:
        msg = _receive(client, key, wait, log)
        if msg.startswith(_REFUSED_MSG):
            _read_barrier(client, key)
            raise RunLockError(msg[len(_REFUSED_MSG) :])
        yield msg == _DONE_MSG
        return
    try:
        acquire(run_dir, wait, log)
    except BaseException as e:
        text = str(e) if isinstance(e, RunLockError) else f"process 0 could not lock {run_dir}: {e}"
        client.key_value_set(key, _REFUSED_MSG + text)
        _read_barrier(client, key)  # process 0 runs the coordination service: the others read before it exits
        raise
    try:
        finished = layout.is_done(run_dir)
        client.key_value_set(key, _DONE_MSG if finished else _HELD_MSG)
        yield finished
    finally:
        release(run_dir)


def _read_barrier(client: Any, key: str) -> None:
    try:
        client.wait_at_barrier(key + "/read", 60_000)
    except Exception:  # a process that already died cannot read it anyway; the refusal is raised regardless
        pass
