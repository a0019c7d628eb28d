"""What `rm-jax serve` serves for a run folder, in-process: :func:`rm_jax.serving.server.load_service` (the
service `serve` runs) behind the real app (:func:`rm_jax.serving.app.create_app`) on a uvicorn thread, asked
over HTTP. A LoRA run folder (adapters unmerged on its base) and a full fine-tune's run folder each serve the
scores `rm-jax score` writes for the folder and for its HF export, within 1e-4."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Iterator

import numpy as np
import pytest

from rm_jax.cli import main as cli
from rm_jax.serving.client import Client
from rm_jax.serving.settings import ServeConfig
from tests.helpers import TINY

pytestmark = pytest.mark.slow  # trains two runs, serves each (about a minute on two CPU cores)
for _module in ("fastapi", "uvicorn"):  # the server's own dependencies (not on the GPU image)
    pytest.importorskip(_module, reason=f"rm-jax serve needs {_module}")

ROWS = [
    {"prompt": "What is 2 plus 2?", "response": "2 plus 2 equals 4."},
    {"prompt": "Name a red fruit.", "response": "An apple is a red fruit, and so is a cherry."},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello there"},
        ]
    },
]
WEIGHTS = "340b-rewardbench"
TOL = 1e-4  # float32 throughout; packed serving batches vs rm-jax score's rows and the merged weights
SERVE = ServeConfig(port=0, seq_len=128, max_batch_tokens=256, min_batch_tokens=128, max_wait_ms=5, log_level="warning")


@contextlib.contextmanager
def serving(model_dir: str) -> Iterator[Client]:
    """`rm-jax serve` of ``model_dir`` on a free loopback port, in this process; a client once it is ready."""
    import uvicorn

    from rm_jax.serving.app import create_app
    from rm_jax.serving.server import load_service

    config = uvicorn.Config(
        create_app(load_service(model_dir, SERVE)), host="127.0.0.1", port=0, lifespan="on", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)  # not the main thread: no signal handlers
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        client = Client(f"http://127.0.0.1:{port}")
        while client.get("/health").status != 200:  # compiling its batch shapes
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)
        yield client
        client.close()
    finally:
        server.should_exit = True
        thread.join(60)


def served(model_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(attributes [N, 5], rewards [N]) of ROWS from /score."""
    with serving(model_dir) as client:
        results = client.score(ROWS, weights=WEIGHTS)
    return np.array([list(r["attributes"].values()) for r in results]), np.array([r["reward"] for r in results])


def scored(model_dir: str, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """What `rm-jax score` writes for ROWS."""
    inp, out = tmp_path / "rows.jsonl", tmp_path / "scored.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    argv = ["score", "--model", model_dir, "--input", str(inp), "--output", str(out), "--weights", WEIGHTS]
    assert cli([*argv, "--no-progress"]) == 0
    recs = [json.loads(x) for x in open(out)]
    return np.array([list(r["attributes"].values()) for r in recs]), np.array([r["reward"] for r in recs])


def _agree(got: tuple, want: tuple) -> None:
    np.testing.assert_allclose(got[0], want[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(got[1], want[1], atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, lora_rm_run, data_files):
    """A full fine-tune (no LoRA) of the same tiny base, 2 steps, and its export: (run, export)."""
    d = tmp_path_factory.mktemp("full_rm")
    run, export = str(d / "run"), str(d / "export")
    argv = ["train", TINY, f"run_dir={run}", f"model.path={lora_rm_run['base']}", "model.arch={}"]
    argv += [f"data.train={data_files['train']}", f"data.validation={data_files['validation']}"]
    argv += ["train.max_steps=2", "train.eval_every=2", "checkpoint.every_steps=2", "train.lr=1e-2"]
    argv += ["train.warmup_steps=0", "logging.progress=false", "mesh.num_devices=1"]
    assert cli(argv) == 0
    assert cli(["export", run, "--out", export]) == 0
    return run, export


def test_a_lora_run_folder_serves_what_rm_jax_score_and_its_merged_export_give(lora_rm_run, tmp_path):
    got = served(lora_rm_run["run"])
    _agree(got, scored(lora_rm_run["run"], tmp_path))
    merged = scored(lora_rm_run["merged"], tmp_path)
    _agree(got, merged)  # the reference that does not go through the run-folder loader
    assert np.abs(scored(lora_rm_run["base"], tmp_path)[0] - merged[0]).max() > 1e-2  # the training counts


def test_a_full_run_folder_serves_what_rm_jax_score_and_its_export_give(full_run, lora_rm_run, tmp_path):
    run, export = full_run
    got = served(run)
    _agree(got, scored(run, tmp_path))
    _agree(got, scored(export, tmp_path))
    assert np.abs(scored(lora_rm_run["base"], tmp_path)[0] - got[0]).max() > 1e-2
