"""``rm-jax train CONFIG.yaml [key=value ...] [--wait]``: one run (or its resumption) -> a run folder."""

from __future__ import annotations

import argparse
from typing import Sequence


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax train")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=1e-4 mesh.fsdp=-1")
    ap.add_argument(
        "--wait",
        action="store_true",
        help="if another process holds the run folder, wait for it instead of failing; "
        "a run folder found finished (DONE) is left as it is (not evaluated again)",
    )
    a = ap.parse_intermixed_args(list(argv))
    from rm_jax.core.config import load_config
    from rm_jax.training.run import train

    run_dir = train(load_config(a.config, a.overrides), wait=a.wait)
    print(f"run folder: {run_dir}")
    return 0
