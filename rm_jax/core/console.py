"""What a user reads on stderr while rm_jax works: the one logging set-up.

Each package logs through the standard :mod:`logging` module with its own logger
(``logging.getLogger("rm_jax.training")``, ``"rm_jax.sweeps"``, ``"rm_jax.runs"``); one handler on the
``rm_jax`` logger prints every message as one line with the prefix users know (``[rm_jax] ...``, sweeps:
``[sweep] ...``), from process 0 only (the run-folder readers, as before, from every process).
:func:`setup_logging` installs it once; the CLI calls it first, and :func:`get_logger` calls it too, so a
library caller (a notebook, a test) sees the same lines without setting anything up.
"""

from __future__ import annotations

import logging
import sys

ROOT = "rm_jax"
PREFIXES = {"rm_jax.sweeps": "[sweep]"}  # every other package: [rm_jax]
DEFAULT_PREFIX = "[rm_jax]"
EVERY_PROCESS = ("rm_jax.runs",)  # each process reports what it could not read of a run folder


def is_main_process() -> bool:
    """Process 0 of a multi-host job (True before JAX is imported: nothing distributed has started)."""
    if "jax" not in sys.modules:
        return True
    import jax

    return jax.process_index() == 0


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message is emitted, as ``print(file=sys.stderr)`` did:
    pytest's capture and redirections made after the set-up see the lines."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the current stderr wins
        pass


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = next((p for name, p in PREFIXES.items() if _under(record.name, name)), DEFAULT_PREFIX)
        return f"{prefix} {record.getMessage()}"


def _under(logger: str, package: str) -> bool:
    return logger == package or logger.startswith(package + ".")


def _main_process_only(record: logging.LogRecord) -> bool:
    return any(_under(record.name, p) for p in EVERY_PROCESS) or is_main_process()


def setup_logging(level: int = logging.INFO) -> None:
    """Install the stderr handler on the ``rm_jax`` logger (once; later calls only set the level)."""
    root = logging.getLogger(ROOT)
    root.setLevel(level)
    if _installed():
        return
    handler = _CurrentStderr()
    handler.setFormatter(_OneLine())
    handler.addFilter(_main_process_only)
    root.addHandler(handler)
    root.propagate = False  # absl (imported with JAX) puts a handler on the root logger: no second copy


def _installed() -> bool:
    return any(isinstance(h, _CurrentStderr) for h in logging.getLogger(ROOT).handlers)


def get_logger(package: str) -> logging.Logger:
    """The logger of ``rm_jax.<package>``, with the set-up in place."""
    if not _installed():
        setup_logging()
    return logging.getLogger(f"{ROOT}.{package}")
