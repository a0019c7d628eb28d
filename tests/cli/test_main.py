"""``rm_jax.cli.main``'s process-level duties beyond dispatch (exit codes are in tests/integration)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT

# A KeyboardInterrupt raised inside a gc callback, as a Ctrl-C does when it lands during jax's
# _xla_gc_callback: Python prints "Exception ignored" and drops it, so a training run went on and exited 0.
SWALLOWED = """
import gc, time
from rm_jax.cli import _deliver_swallowed_interrupts
if INSTALL:
    _deliver_swallowed_interrupts()
def cb(phase, info):
    if phase == "start":
        gc.callbacks.remove(cb)
        raise KeyboardInterrupt
gc.callbacks.append(cb)
try:
    gc.collect()
    for _ in range(3000):
        time.sleep(0.001)
    print("lost")
except KeyboardInterrupt:
    print("delivered")
"""


def _run(install: bool) -> subprocess.CompletedProcess:
    code = SWALLOWED.replace("INSTALL", str(install))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_an_interrupt_swallowed_in_a_gc_callback_is_delivered_again():
    got = _run(install=True)
    assert got.stdout.strip() == "delivered" and "Exception ignored" not in got.stderr, got.stderr


def test_without_the_hook_python_drops_it():
    """The control: the failure the hook exists for is real on this Python."""
    got = _run(install=False)
    assert got.stdout.strip() == "lost" and "Exception ignored" in got.stderr
