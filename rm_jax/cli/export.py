"""``rm-jax export RUN_DIR --out HF_DIR``: a run's kept checkpoint -> an HF folder transformers loads."""

from __future__ import annotations

import argparse
from typing import Sequence


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax export")
    ap.add_argument("run_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the kept/best one)")
    ap.add_argument(
        "--adapter", action="store_true", help="a LoRA run as a PEFT adapter folder (default: merged into the base)"
    )
    a = ap.parse_args(list(argv))
    from rm_jax.runs.read import export_run

    print(f"exported -> {export_run(a.run_dir, a.out, a.step, a.adapter)}")
    return 0
