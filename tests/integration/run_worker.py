"""Subprocess entry for tests: `python tests/integration/run_worker.py N_CPU_DEVICES CONFIG [key=value ...]`."""

import sys

import jax

jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
jax.config.update("jax_cpu_collectives_implementation", "gloo")

from rm_jax.core.config import load_config  # noqa: E402
from rm_jax.training.run import train  # noqa: E402

train(load_config(sys.argv[2], sys.argv[3:]))
