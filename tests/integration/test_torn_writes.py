"""A process killed (SIGKILL) while it writes a predictions file leaves the old file or the new one, never a
torn one: ``rm-jax score`` output (rm_jax.engine.scoring.write_scored) rewritten in a loop by a real
process, killed at random moments. The evaluation predictions and results.csv / results.md go through the
same writer (rm_jax.core.files.write_text)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

ROWS = 40_000  # about 8 MB: a write takes long enough that a kill lands inside one when it is not atomic
WRITER = """
import sys
import numpy as np
from rm_jax.engine.scoring import write_scored

path, n = sys.argv[1], int(sys.argv[2])
rows = [{"prompt": "p" * 40, "response": "r" * 80, "i": i} for i in range(n)]
attrs = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
for k in range(10**6):
    v = float(k % 2)
    write_scored(path, rows, attrs, np.full((n, 5), v), np.full(n, v))
    if k == 0:
        print("ready", flush=True)
"""


def _check(path: str) -> float:
    """The whole file parses, every row is there, and all rows come from one write (one version)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) == ROWS, f"torn: {len(lines)} of {ROWS} lines"
    rewards = {json.loads(ln)["reward"] for ln in lines}  # raises on a half-written line
    assert len(rewards) == 1, f"rows of two writes mixed: {rewards}"
    return rewards.pop()


def test_sigkill_during_a_predictions_write_leaves_old_or_new(tmp_path):
    path = str(tmp_path / "scored.jsonl")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
    rng = random.Random(0)
    seen = set()
    for _ in range(6):
        p = subprocess.Popen(
            [sys.executable, "-c", WRITER, path, str(ROWS)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait()
        seen.add(_check(path))
        leftovers = [n for n in os.listdir(tmp_path) if n != "scored.jsonl"]
        for n in leftovers:  # a killed writer may leave its temporary file; never the target half-written
            assert n.startswith("scored.jsonl.tmp"), leftovers
            os.remove(tmp_path / n)
    assert seen <= {0.0, 1.0}
