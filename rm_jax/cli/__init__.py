"""``rm-jax``: the command line. One thin module per command, each parsing its own arguments and
calling the library; this module dispatches and turns expected failures into one line and an exit code.

Nothing below ``rm_jax.cli`` parses argv: library functions return values and raise
:class:`rm_jax.core.errors.RmJaxError` subclasses (and ``OSError`` for the file system), whose message
is printed as ``rm-jax COMMAND: error: ...``. ``--debug`` (anywhere on the line) shows the traceback.
"""

from __future__ import annotations

import _thread
import importlib
import sys
import threading
from typing import Optional, Sequence

# command -> (module under rm_jax.cli, one-line usage)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train CONFIG.yaml [key=value ...] [--wait]   train (or resume) one run"),
    "sweep": ("sweep", "sweep EXPERIMENT.yaml [--task-index I] [--dry-run] [--wait]"),
    "report": ("report", "report SWEEP_DIR                         rebuild results.csv / results.md / plots"),
    "score": ("score", "score --model DIR --input IN.jsonl --output OUT.jsonl [--weights PRESET|w1,..,w5] [--step N]"),
    "eval": ("eval", "eval --model DIR [--helpsteer SRC] [--rewardbench SRC] [--weights ...] [--output results.json]"),
    "weights": ("weights", "weights fit --model DIR (--pairs|--rewardbench2|--helpsteer SRC) --output W.json"),
    "export": ("export", "export RUN_DIR --out HF_DIR [--adapter]"),
    "data": ("data", "data stats FILE|HUB_ID [--json] [--tokenizer DIR]"),
    "lm": ("lm", "lm generate|logprob --model DIR --input IN.jsonl --output OUT.jsonl [--n N] ..."),
    "steer": ("steer", "steer label|eval --policy DIR --rm DIR --input ... (SteerLM 2.0)"),
    "serve": (
        "serve",
        "serve --model DIR [--host H] [--port P] [--weights ...] [--max-batch-tokens N] [--max-wait-ms M]",
    ),
    "plan": ("plan", "plan CONFIG [key=value ...] [--devices N] [--device-memory 80GiB]   memory per device"),
}

# Commands whose compiled programs go to the persistent compilation cache (rm_jax.core.compile_cache).
CACHED_COMMANDS = ("score", "eval", "serve", "weights")


def usage() -> str:
    lines = ["rm-jax COMMAND ...", ""] + [f"  {u}" for _, u in COMMANDS.values()]
    lines += ["", "  --debug   (any command) show the full traceback of a failure"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _deliver_swallowed_interrupts()
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"rm-jax: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from rm_jax.core.console import setup_logging
    from rm_jax.core.errors import RmJaxError

    setup_logging()  # the library's one-line messages on stderr (rm_jax.core.console)
    if cmd in CACHED_COMMANDS:
        from rm_jax.core import compile_cache

        compile_cache.enable()  # a second run of the same command loads its programs (docs/performance.md)
    try:
        module = importlib.import_module(f"rm_jax.cli.{COMMANDS[cmd][0]}")
        return int(module.main(rest) or 0)
    except RmJaxError as e:
        if debug:
            raise
        print(f"rm-jax {cmd}: error: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the file system: a missing file, a full disk, no permission
        if debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"rm-jax {cmd}: error: {_one_line(where + str(e.strerror or e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rm-jax {cmd}: interrupted", file=sys.stderr)
        return 130


def _deliver_swallowed_interrupts() -> None:
    """A Ctrl-C that lands while Python runs a gc callback or a finalizer (jax registers one, run at every
    collection) raises KeyboardInterrupt there, where the interpreter prints it as "Exception ignored" and
    drops it: the run went on and exited 0. Deliver such an interrupt again to the main thread instead."""
    previous = sys.unraisablehook
    if getattr(previous, "_rm_jax", False):
        return

    def hook(unraisable) -> None:  # noqa: ANN001  (sys.UnraisableHookArgs)
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            # Later and from another thread: raised here, in the hook, it would be dropped the same way.
            timer = threading.Timer(0.05, _thread.interrupt_main)  # after this hook has returned
            timer.daemon = True
            timer.start()
            return
        previous(unraisable)

    hook._rm_jax = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _one_line(msg: str) -> str:
    return " ".join(part.strip() for part in msg.strip().splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
