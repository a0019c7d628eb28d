"""``rm-jax plan CONFIG [key=value ...] [--devices N] [--device-memory 80GiB] [--json]``: per-device memory of
the config's setup, train step and validation forward, whether it fits, and the largest train.batch_rows that
does (rm_jax.training.plan).

The step is compiled for CPU devices faked before JAX starts (``jax_num_cpu_devices``), so nothing needs a
GPU, the network or the weights."""

from __future__ import annotations

import argparse
import os
from typing import Sequence


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax plan")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. lora.rank=16 train.batch_rows=32")
    ap.add_argument("--devices", type=int, default=8, help="devices of the mesh (default 8: one node)")
    ap.add_argument("--device-memory", default="80GiB", help="memory of one device (default 80GiB)")
    ap.add_argument("--no-search", action="store_true", help="skip the largest-batch search (one compile)")
    ap.add_argument("--max-rows", type=int, default=4096, help="upper end of the batch search")
    ap.add_argument("--json", action="store_true", help="print the plan as one JSON object (docs/plan.md: schema)")
    a = ap.parse_intermixed_args(list(argv))
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    try:  # before JAX's backends start; in a process where they already run, plan checks the count
        jax.config.update("jax_num_cpu_devices", a.devices)
    except RuntimeError:
        pass
    from rm_jax.core.config import load_config
    from rm_jax.training.plan import format_plan, parse_bytes, plan, plan_json

    cfg = load_config(a.config, a.overrides)
    rep = plan(cfg, a.devices, parse_bytes(a.device_memory), search=not a.no_search, max_rows=a.max_rows)
    if a.json:
        import json

        print(json.dumps(plan_json(rep, a.config), indent=1))
    else:
        print(format_plan(rep, a.config))
    return 0
