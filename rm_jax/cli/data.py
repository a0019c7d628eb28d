"""``rm-jax data stats FILE|HUB_ID``: the HelpSteer2 paper's Table 2 for any HelpSteer2-format data, or
HelpSteer3-Preference statistics per domain and language (``--kind helpsteer3``)."""

from __future__ import annotations

import argparse
import json
from typing import Sequence, get_args

from rm_jax.core.config import OnBadRow


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax data")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stats", help="the HelpSteer2 paper's Table 2 for any HelpSteer2-format data")
    st.add_argument("source", help="file, folder, hub id, or 'bundled'")
    st.add_argument("--split", default="train")
    st.add_argument("--json", action="store_true")
    st.add_argument("--tokenizer", default=None, help="also report token lengths with this tokenizer")
    st.add_argument("--template", default=None)
    st.add_argument("--on-bad-row", default="error", choices=get_args(OnBadRow))
    st.add_argument(
        "--kind",
        default="helpsteer",
        choices=("helpsteer", "helpsteer3"),
        help="helpsteer: Table 2 of HelpSteer2-format rows; helpsteer3: HelpSteer3-Preference rows per domain and "
        "language (turns, lengths, preference histogram)",
    )
    a = ap.parse_args(list(argv))
    from rm_jax.data.stats import dataset_stats, format_stats_report

    tokenizer = None
    if a.tokenizer:
        from rm_jax.models.hf_io import load_tokenizer

        tokenizer = load_tokenizer(a.tokenizer)
    stats = dataset_stats(a.source, a.split, a.on_bad_row, tokenizer, a.template, a.kind)
    print(json.dumps(stats) if a.json else format_stats_report(stats))
    return 0
