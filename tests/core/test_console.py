"""The one logging set-up: each package's logger prints the one-line messages users know on stderr,
from process 0 only where the old printers checked that, once however often it is set up."""

from __future__ import annotations

import ast
import logging
import os

import jax
import pytest

from rm_jax.core import console
from rm_jax.core.console import get_logger, setup_logging
from tests.helpers import rm_jax_sources


@pytest.mark.parametrize(
    "package,line", [("training", "[rm_jax] resumed"), ("runs", "[rm_jax] resumed"), ("sweeps", "[sweep] resumed")]
)
def test_each_package_prints_one_prefixed_line(package, line, capsys):
    get_logger(package).info("resumed")
    assert capsys.readouterr().err == line + "\n"


def test_the_modules_log_through_their_package_logger(capfd):
    from rm_jax.runs import read
    from rm_jax.sweeps import runner
    from rm_jax.training import logs

    logs.logger.info("from training")
    runner.logger.info("from sweeps")
    read.logger.info("from runs")
    assert capfd.readouterr().err == "[rm_jax] from training\n[sweep] from sweeps\n[rm_jax] from runs\n"
    names = [logs.logger.name, runner.logger.name, read.logger.name]
    assert names == ["rm_jax.training", "rm_jax.sweeps", "rm_jax.runs"]


def test_set_up_twice_prints_once(capsys):
    setup_logging()
    setup_logging()
    get_logger("training").info("once")
    assert capsys.readouterr().err == "[rm_jax] once\n"
    assert sum(isinstance(h, console._CurrentStderr) for h in logging.getLogger("rm_jax").handlers) == 1


def test_only_process_0_prints_except_the_run_folder_reader(capsys, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    get_logger("training").info("t")
    get_logger("sweeps").info("s")
    get_logger("runs").info("r")  # runs.read printed on every process before; it still does
    assert capsys.readouterr().err == "[rm_jax] r\n"


def test_the_cli_sets_it_up_before_a_command(capsys):
    from rm_jax.cli import main

    logging.getLogger("rm_jax").handlers = [
        h for h in logging.getLogger("rm_jax").handlers if not isinstance(h, console._CurrentStderr)
    ]
    assert main(["report", "/nonexistent-sweep"]) == 1
    assert console._installed()


def test_no_private_stderr_printer_is_left():
    """Nothing but core/console.py spells the prefixes, and the private _is_main is gone."""
    found = []
    for path, src in rm_jax_sources().items():
        if path != os.path.join("core", "console.py"):
            for n in ast.walk(ast.parse(src)):
                text = n.value if isinstance(n, ast.Constant) and isinstance(n.value, str) else ""
                if text.startswith(("[rm_jax] ", "[sweep] ")):
                    found.append(f"{path}:{n.lineno}")
        if "_is_main" in src:
            found.append(f"{path}: _is_main")
    assert found == []
