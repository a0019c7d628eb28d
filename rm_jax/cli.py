"""``rm-jax``: train, sweep, report, score, eval, export, data stats."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

USAGE = """rm-jax COMMAND ...

  train CONFIG.yaml [key=value ...]       train (or resume) one run
  sweep EXPERIMENT.yaml [--task-index I] [--dry-run]
  report SWEEP_DIR                         rebuild results.csv / results.md / plots
  score --model DIR --input IN.jsonl --output OUT.jsonl [--weights PRESET|w1,..,w5]
  eval --model DIR [--helpsteer SRC] [--rewardbench SRC] [--weights ...] [--output results.json]
  export RUN_DIR --out HF_DIR
  data stats FILE|HUB_ID [--json] [--tokenizer DIR]
"""


def _train(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax train")
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="key=value, e.g. train.lr=1e-4 mesh.fsdp=-1")
    a = ap.parse_args(argv)
    from rm_jax.config import load_config
    cfg = load_config(a.config, a.overrides)
    from rm_jax.train import train
    run_dir = train(cfg)
    print(f"run folder: {run_dir}")
    return 0


def _export(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax export")
    ap.add_argument("run_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the kept/best one)")
    a = ap.parse_args(argv)
    from rm_jax.runs import export_run
    print(f"exported -> {export_run(a.run_dir, a.out, a.step)}")
    return 0


def _data(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="rm-jax data")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stats", help="the HelpSteer2 paper's Table 2 for any HelpSteer2-format data")
    st.add_argument("source", help="file, folder, hub id, or 'bundled'")
    st.add_argument("--split", default="train")
    st.add_argument("--json", action="store_true")
    st.add_argument("--tokenizer", default=None, help="also report token lengths with this tokenizer")
    st.add_argument("--template", default=None)
    st.add_argument("--on-bad-row", default="error", choices=["error", "skip"])
    a = ap.parse_args(argv)
    from rm_jax.data.pipeline import resolve_source
    from rm_jax.data.sources import load_helpsteer
    from rm_jax.data.stats import format_stats_table, helpsteer_stats, token_length_stats
    res = load_helpsteer(resolve_source(a.source), a.split, on_bad_row=a.on_bad_row)
    stats = helpsteer_stats(res.rows)
    if a.tokenizer:
        from rm_jax.conversation import encode, row_to_messages
        from rm_jax.hf_io import load_tokenizer
        tok = load_tokenizer(a.tokenizer)
        lengths = [len(x) for x in encode(tok, [row_to_messages(r) for r in res.rows], a.template)]
        stats["tokens"] = token_length_stats(lengths)
    if res.skipped:
        stats["skipped_rows"] = len(res.skipped)
    if a.json:
        print(json.dumps(stats))
    else:
        print(format_stats_table(stats))
        if "tokens" in stats:
            print("tokens per conversation: " + ", ".join(f"{k} {v:.1f}" for k, v in stats["tokens"].items()))
        if res.skipped:
            print(f"skipped {len(res.skipped)} bad rows")
    return 0


def _delegate(module: str, fn: str, argv: Sequence[str]) -> int:
    import importlib
    return int(getattr(importlib.import_module(module), fn)(list(argv)) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    handlers = {
        "train": lambda: _train(rest),
        "export": lambda: _export(rest),
        "data": lambda: _data(rest),
        "score": lambda: _delegate("rm_jax.score_cmd", "main", rest),
        "eval": lambda: _delegate("rm_jax.evaluate", "main", rest),
        "sweep": lambda: _delegate("rm_jax.sweep", "sweep_main", rest),
        "report": lambda: _delegate("rm_jax.sweep", "report_main", rest),
    }
    if cmd not in handlers:
        print(f"rm-jax: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    from rm_jax.config import ConfigError
    from rm_jax.conversation import ConversationError
    from rm_jax.data.sources import DataError
    from rm_jax.hf_io import ModelLoadError
    from rm_jax.score_cmd import InputError
    try:
        return handlers[cmd]()
    except (ConfigError, DataError, ModelLoadError, InputError, ConversationError, FileNotFoundError) as e:
        print(f"rm-jax {cmd}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
