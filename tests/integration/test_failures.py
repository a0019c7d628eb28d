"""Failures reach users as one clear line: a damaged checkpoint (resume falls back to the previous
one and says so; with none readable, one message naming the run folder, the steps and the file), and
the other expected failures (missing files, bad configs, truncated downloads) as a message and an
exit code, no traceback unless --debug."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from rm_jax.cli import main
from rm_jax.core.errors import ModelLoadError
from tests.helpers import ROOT, TINY, make_hf_rm_with_tokenizer

pytestmark = pytest.mark.slow  # end to end: trains or spawns processes

ARGS = [
    "model.arch.hidden_size=32",
    "model.arch.intermediate_size=64",
    "train.log_every=1",
    "logging.progress=false",
    "mesh.num_devices=1",
    "mesh.data=1",
    "train.max_steps=6",
    "train.eval_every=0",
    "checkpoint.every_steps=2",
    "checkpoint.async_save=true",
]


@pytest.fixture
def cli_train(subprocess_cache_env, data_files):
    """``rm-jax [flags] train`` in a subprocess, on the small train / validation files (reading and
    scoring the bundled 3000 + 400 rows in each of the four processes bought nothing here)."""
    env = subprocess_cache_env
    data = [f"data.train={data_files['train']}", f"data.validation={data_files['validation']}"]

    def run(run_dir, *flags):
        cmd = [sys.executable, "-m", "rm_jax.cli", *flags, "train", TINY, f"run_dir={run_dir}", *ARGS, *data]
        return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)

    return run


def _flip_bytes(step_dir):
    """What a bad disk or an interrupted copy does: damage every array data file of the step."""
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
    assert files, f"no array data files under {step_dir}"
    for f in files:
        b = bytearray(open(f, "rb").read())
        for i in range(8, len(b), 5):
            b[i] ^= 0xFF
        open(f, "wb").write(bytes(b))


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_then_none_readable_is_one_line(tmp_path, cli_train):
    run = tmp_path / "run"
    first = cli_train(run)
    assert first.returncode == 0, first.stderr[-3000:]
    reference = _losses(run)
    assert sorted(os.listdir(run / "checkpoints")) == ["4", "6"]  # keep_latest defaults to 2

    # 1. The latest is damaged: resume from step 4, say so, retrain steps 5-6 exactly as before.
    _flip_bytes(run / "checkpoints" / "6")
    os.remove(run / "DONE")
    again = cli_train(run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr and "Event loop is closed" not in again.stderr
    err = again.stderr
    assert f"checkpoint step 6 in {run} is unreadable" in err and str(run / "checkpoints" / "6") in err
    assert "ZSTD_decompressStream() failed" in err  # the real cause, not a wrapper's
    assert "using the previous readable checkpoint, step 4" in err and "resumed from step 4" in err
    moved = glob.glob(str(tmp_path / "run" / "checkpoints.unreadable" / "6-*"))
    assert len(moved) == 1 and os.path.isdir(os.path.join(moved[0], "state"))  # kept for inspection
    assert sorted(os.listdir(run / "checkpoints")) == ["4", "6"]
    resumed = _losses(run)
    assert resumed[5] == pytest.approx(reference[5], rel=1e-6) and resumed[6] == pytest.approx(reference[6], rel=1e-6)
    assert (run / "DONE").exists() and (run / "eval.json").exists()

    # 2. Nothing readable: one error line naming the run folder, both steps and the damaged folder.
    for step in ("4", "6"):
        _flip_bytes(run / "checkpoints" / step)
    os.remove(run / "DONE")
    failed = cli_train(run)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr and "Event loop is closed" not in failed.stderr
    errors = [ln for ln in failed.stderr.splitlines() if ln.startswith("rm-jax train: error:")]
    assert len(errors) == 1, failed.stderr[-3000:]
    assert f"{run}: no readable checkpoint: step 6: " in errors[0] and str(run / "checkpoints" / "6") in errors[0]
    assert "step 4:" in errors[0] and "ZSTD_decompressStream() failed" in errors[0]
    assert sorted(os.listdir(run / "checkpoints")) == ["4", "6"]  # nothing moved when nothing is readable

    # 3. --debug shows the traceback of the same failure.
    debug = cli_train(run, "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr


def _one_line(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert len(err) == 1 and err[0].startswith(f"rm-jax {argv[0]}: error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])


def test_expected_failures_are_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing.yaml")
    _one_line(capsys, ["train", missing], "missing.yaml", "not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    _one_line(capsys, ["train", str(bad)], "bad.yaml", "invalid YAML")
    _one_line(capsys, ["train", TINY, "train.lrr=1"], "unknown config key 'train.lrr'")
    _one_line(
        capsys,
        ["train", TINY, f"run_dir={tmp_path / 'r'}", "data.train=/nonexistent/train.jsonl"],
        "/nonexistent/train.jsonl",
        "no such file",
    )
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"prompt": "hi", "response": "there"}\n')
    _one_line(
        capsys,
        ["score", "--model", str(tmp_path / "nope"), "--input", str(rows), "--output", str(tmp_path / "o.jsonl")],
        "nope",
        "does not exist",
    )
    _one_line(
        capsys,
        [
            "score",
            "--model",
            str(tmp_path),
            "--input",
            str(tmp_path / "none.jsonl"),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        "none.jsonl",
        "cannot open",
    )
    _one_line(capsys, ["export", str(tmp_path), "--out", str(tmp_path / "hf")], "not an rm_jax run folder")


def test_truncated_download_is_one_line(tmp_path, capsys):
    """A model.safetensors cut short (an interrupted download) is named, not a safetensors traceback."""
    d = tmp_path / "model"
    make_hf_rm_with_tokenizer("llama", str(d))
    capsys.readouterr()
    st = d / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"prompt": "hi", "response": "there"}\n')
    _one_line(
        capsys, ["score", "--model", str(d), "--input", str(rows), "--output", str(tmp_path / "o.jsonl")], str(st)
    )
    # --debug re-raises the typed error itself (with its traceback), not whatever else went wrong.
    with pytest.raises(ModelLoadError, match="unreadable safetensors file") as e:
        main(["--debug", "score", "--model", str(d), "--input", str(rows), "--output", str(tmp_path / "o.jsonl")])
    assert str(e.value).startswith(str(st))
