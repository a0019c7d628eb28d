"""The command line as users run it: the installed ``rm-jax`` console script, and the exit codes of the
real process: 0 done, 1 expected failure (one line), 2 usage, 130 Ctrl-C (SIGINT) with one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, TINY, worker_env

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = worker_env()  # this tree first on PYTHONPATH: the script's editable install may point elsewhere
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _script() -> str:
    path = shutil.which("rm-jax", path=_env()["PATH"])
    assert path, "the rm-jax console script is not installed next to this Python (pip install -e .)"
    return path


def test_installed_console_script_runs_a_real_command(tmp_path):
    script = _script()
    help_ = subprocess.run([script, "--help"], env=_env(), capture_output=True, text=True)
    assert help_.returncode == 0 and "rm-jax COMMAND" in help_.stdout and "  train CONFIG.yaml" in help_.stdout
    exp = os.path.join(ROOT, "experiments", "demo.yaml")
    p = subprocess.run(
        [script, "sweep", exp, f"sweep_dir={tmp_path / 'never'}", "--dry-run"],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "6 training run(s)" in p.stdout and "nothing was trained (--dry-run)" in p.stdout
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        ([], "rm-jax COMMAND"),  # no command: the usage, exit 2
        (["trian", "x.yaml"], "unknown command 'trian'"),
        (["train"], "the following arguments are required: config"),  # argparse
        (["score", "--model", "m", "--input", "i"], "--output"),
    ],
)
def test_usage_errors_exit_2(argv, needle):
    p = subprocess.run([sys.executable, "-m", "rm_jax.cli", *argv], env=_env(), capture_output=True, text=True)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert needle in p.stdout + p.stderr and "Traceback" not in p.stderr


def test_expected_failure_exits_1_with_one_line(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "rm_jax.cli", "train", str(tmp_path / "missing.yaml")],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0 and "missing.yaml" in p.stderr, p.stderr


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rm_jax.cli",
            "train",
            TINY,
            f"run_dir={run}",
            "mesh.num_devices=1",
            "logging.progress=false",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background jobs (nohup ... &, some CI runners) with SIGINT
        # ignored, and the child would inherit that; a terminal's Ctrl-C reaches a process that handles it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while not (run / "model_meta.json").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "finished before it could be interrupted: " + p.stderr.read()[-2000:]
    # Pressed again while the run goes on, as a user would: a SIGINT landing in jax's gc callback used to be
    # dropped by Python ("Exception ignored"); rm_jax.cli now delivers it again (tests/cli/test_main.py).
    for _ in range(6):
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        p.kill()
        out, err = p.communicate()
    assert p.returncode == 130, (p.returncode, err[-3000:])
    assert err.strip().splitlines()[-1] == "rm-jax train: interrupted" and "Traceback" not in err, err[-3000:]
    assert not (run / "DONE").exists()
