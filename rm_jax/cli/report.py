"""``rm-jax report SWEEP_DIR``: rebuild a sweep's results table and plots from its finished runs."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="rm-jax report",
        description="Rebuild results.csv, results.md and the plots of a sweep folder from its finished runs.",
    )
    ap.add_argument("sweep_dir")
    a = ap.parse_args(list(argv))
    from rm_jax.sweeps.report import build_report, print_report

    print_report(build_report(a.sweep_dir), sys.stdout)
    return 0
