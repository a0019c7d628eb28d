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


def compile_cache_env(cache_dir: str) -> dict:
    """Environment for a subprocess to share a persistent compilation cache: the first run compiles, the
    runs after it load the same programs (short test runs spend their time starting up and compiling)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(cache_dir), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
