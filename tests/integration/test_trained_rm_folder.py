"""A trained reward-model run folder (scanned layers) used as users use it: ``rm-jax export`` ->
transformers, ``rm-jax score`` and ``rm-jax eval`` on the folder itself, each at the kept checkpoint by
default and at any ``--step``. The kept checkpoint is the best by validation loss, not the latest."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from rm_jax.cli import main
from rm_jax.core.config import CheckpointConfig, build_config
from rm_jax.engine.checkpoint import Checkpointer
from rm_jax.training.run import train
from tests.helpers import tiny_base

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_files):
    base = tiny_base(data_files, steps=6, every=3)
    base["model"]["arch"]["num_hidden_layers"] = 2
    base["model"]["scan_layers"] = True
    base["run_dir"] = str(tmp_path_factory.mktemp("scanned") / "run")
    rd = train(build_config(base))
    assert yaml.safe_load(open(os.path.join(rd, "config.yaml")))["model"]["scan_layers"] is True
    return rd


@pytest.fixture(scope="module")
def rows(data_files, tmp_path_factory):
    with open(data_files["validation"]) as f:
        src = [json.loads(next(f)) for _ in range(6)]
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n" for r in src))
    return str(path)


def _steps(rd):
    ck = Checkpointer(os.path.join(rd, "checkpoints"), CheckpointConfig(async_save=False))
    try:
        return ck.all_steps(), ck.best_step()
    finally:
        ck.close()


def _score(rd, rows, out, *extra):
    assert main(["score", "--model", rd, "--input", rows, "--output", str(out), "--no-progress", *extra]) == 0
    recs = [json.loads(x) for x in open(out)]
    return np.array([list(r["attributes"].values()) for r in recs]), np.array([r["reward"] for r in recs])


def _transformers_scores(hf_dir, rows):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    out = []
    for r in map(json.loads, open(rows)):
        msgs = [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
        ids = list(tok.apply_chat_template(msgs, tokenize=True)["input_ids"])
        with torch.no_grad():
            out.append(model(input_ids=torch.as_tensor([ids])).logits[0].numpy())
    return np.stack(out)


def test_score_export_and_eval_at_kept_and_explicit_steps(run, rows, tmp_path, capsys):
    steps, best = _steps(run)
    assert len(steps) >= 2 and best in steps, (steps, best)
    ev = json.load(open(os.path.join(run, "eval.json")))
    assert ev["step"] == best  # the run's own evaluation is of the kept (best) checkpoint

    by_step = {s: _score(run, rows, tmp_path / f"s{s}.jsonl", "--step", str(s)) for s in steps}
    kept_pred, kept_reward = _score(run, rows, tmp_path / "kept.jsonl")
    np.testing.assert_array_equal(kept_pred, by_step[best][0])  # no --step: the best checkpoint
    a, b = by_step[steps[0]][0], by_step[steps[-1]][0]
    assert np.abs(a - b).max() > 1e-3, "--step changed nothing: every step scores the same"

    for s in steps:
        hf = tmp_path / f"hf{s}"
        assert main(["export", run, "--out", str(hf), "--step", str(s)]) == 0
        ref = _transformers_scores(str(hf), rows)
        np.testing.assert_allclose(by_step[s][0], ref, atol=1e-4, rtol=1e-4, err_msg=f"step {s}")


def test_eval_at_a_step_equals_eval_of_its_export(run, data_files, tmp_path, capsys):
    steps, _ = _steps(run)
    s = steps[0]
    hf = tmp_path / "hf"
    assert main(["export", run, "--out", str(hf), "--step", str(s)]) == 0
    results = []
    for model, extra in ((run, ["--step", str(s)]), (str(hf), [])):
        out = tmp_path / f"eval_{len(results)}.json"
        argv = ["eval", "--model", model, "--helpsteer", data_files["validation"], "--output", str(out)]
        assert main([*argv, "--no-progress", *extra]) == 0
        results.append(json.load(open(out)))
    a, b = results
    flat_a, flat_b = _numbers(a.get("helpsteer", a)), _numbers(b.get("helpsteer", b))
    assert flat_a and set(flat_a) == set(flat_b)
    for k in flat_a:
        assert flat_a[k] == pytest.approx(flat_b[k], rel=1e-4, abs=1e-5), k
    kept = tmp_path / "kept.json"
    assert main(["eval", "--model", run, "--helpsteer", data_files["validation"], "--output", str(kept)]) == 0
    if s != _steps(run)[1]:
        assert _numbers(json.load(open(kept)).get("helpsteer", {})) != flat_a  # the default is not step s


def test_a_missing_step_is_named(run, rows, tmp_path, capsys):
    capsys.readouterr()
    assert main(["score", "--model", run, "--input", rows, "--output", str(tmp_path / "o.jsonl"), "--step", "99"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no checkpoint at step 99" in err and run in err, err


def _numbers(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out
