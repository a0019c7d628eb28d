"""Launching training runs in subprocesses (own jax device count, no inherited XLA_FLAGS)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.yaml")
WORKER = os.path.join(ROOT, "tests", "run_worker.py")


def worker_env() -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the worker sets its own CPU device count
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env
