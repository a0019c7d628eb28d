"""Task objects: which config gets which task, their step-metric records, validation metrics against their
definitions written plainly, their stderr summaries, and the data each reads."""

import gzip
import json
import math

import numpy as np
import pytest

from rm_jax.core.config import load_config
from rm_jax.core.errors import ConfigError
from rm_jax.data.pipeline import Encoded, bundled_tokenizer_path, resolve_source
from rm_jax.models.hf_io import load_tokenizer
from rm_jax.training.tasks import (
    LOOP_KEYS,
    PairsTask,
    RegressionTask,
    SftTask,
    SteerLM2Task,
    Task,
    plain_metric,
    task_for,
)
from tests.helpers import TINY

TASKS = {
    "rm": ([], RegressionTask),
    "pairs": (["data.kind=pairs", "loss.type=bt"], PairsTask),
    "sft": (["task=sft"], SftTask),
    "steerlm2": (["task=steerlm2", "model.path=/nonexistent/policy"], SteerLM2Task),
}


def cfg_for(*overrides):
    return load_config(TINY, ["run_dir=/tmp/unused", *overrides])


def step_metrics(**extra):
    base = {
        "loss": np.float32(0.5),
        "lr": np.float32(1e-3),
        "grad_norm": np.float32(2.0),
        "ok": np.bool_(True),
        "real_tokens": np.int32(100),
    }
    return {**base, **extra}


@pytest.mark.parametrize("name", list(TASKS))
def test_task_contract(name):
    """Every task: picked from its config, the step's loss config, a record without the loop's own keys
    that keeps any key it does not know, a kept-checkpoint line naming step and validation loss."""
    overrides, cls = TASKS[name]
    cfg = cfg_for(*overrides)
    task = task_for(cfg)
    assert type(task) is cls and task.name == name and isinstance(task, Task)
    assert task.loss is cfg.loss
    rec = task.train_metrics(step_metrics(new_diagnostic=np.float32(0.25), new_count=np.int32(7)))
    assert not set(rec) & set(LOOP_KEYS)
    assert rec["new_diagnostic"] == 0.25 and rec["new_count"] == 7 and isinstance(rec["new_count"], int)
    val = {"val_loss": 0.123456, "val_perplexity": 1.13}
    assert task.kept_line(12, val).startswith("kept checkpoint: step 12, val_loss 0.1235")
    for method in ("load_split", "encode", "validator", "train_metrics", "kept_line"):
        assert callable(getattr(task, method))


def test_each_task_formats_its_own_step_metrics():
    attrs = cfg_for().model.attributes
    rm = task_for(cfg_for()).train_metrics(step_metrics(attr_mse=np.array([0.5, 1, 2, 3, 4], np.float32)))
    assert rm == {f"train_mse_{a}": v for a, v in zip(attrs, [0.5, 1.0, 2.0, 3.0, 4.0])}
    pairs_task = task_for(cfg_for("data.kind=pairs", "loss.type=bt"))
    pairs = pairs_task.train_metrics(step_metrics(pair_accuracy=np.float32(0.75)))
    assert pairs == {"train_pair_accuracy": 0.75}
    sft = task_for(cfg_for("task=sft")).train_metrics(step_metrics(loss_tokens=np.float32(336.0)))
    assert sft == {"loss_tokens": 336} and isinstance(sft["loss_tokens"], int)
    steer = task_for(cfg_for("task=steerlm2", "model.path=/nonexistent/policy")).train_metrics(
        step_metrics(kl_w_b=np.float32(1.5))
    )
    assert steer == {"kl_w_b": 1.5}


def test_plain_metric():
    assert plain_metric("a", np.float32(0.5)) == {"a": 0.5}
    assert plain_metric("b", np.int64(3)) == {"b": 3} and isinstance(plain_metric("b", np.int64(3))["b"], int)
    assert plain_metric("c", np.array([1.0, 2.0], np.float32)) == {"c": [1.0, 2.0]}


def _enc(labels, mask, strength=None):
    n = len(labels)
    return Encoded(
        ids=[np.arange(1, 4)] * n,
        labels=np.asarray(labels, np.float32),
        label_mask=np.asarray(mask, np.float32),
        units=[(2 * k, 2 * k + 1) for k in range(n // 2)] if strength is not None else [(k,) for k in range(n)],
        source_rows=np.arange(n),
        group=np.arange(n),
        strength=None if strength is None else np.asarray(strength, np.float32),
    )


def test_regression_validation_metrics_follow_their_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(6, 5)).astype(float)
    mask = (rng.random((6, 5)) > 0.3).astype(float)
    mask[:, 2] = 0  # an attribute with no labels
    pred = rng.normal(2, 1, size=(6, 5)).astype(np.float32)
    w = [1.0, 0.5, 1.0, 0.0, 2.0]
    cfg = cfg_for(f"loss.attribute_weights={w}")
    out = task_for(cfg).metrics(pred, _enc(labels, mask))
    num = sum(w[a] * (pred[i, a] - labels[i, a]) ** 2 for i in range(6) for a in range(5) if mask[i, a])
    den = sum(w[a] for i in range(6) for a in range(5) if mask[i, a])
    assert out["val_loss"] == pytest.approx(num / den, rel=1e-6)
    for a, name in enumerate(cfg.model.attributes):
        rows = [i for i in range(6) if mask[i, a]]
        want = None if not rows else sum((pred[i, a] - labels[i, a]) ** 2 for i in rows) / len(rows)
        assert out[f"val_mse_{name}"] == (None if want is None else pytest.approx(want, rel=1e-6))
    assert list(out)[0] == "val_loss"


@pytest.mark.parametrize("kind", ["bt", "scaled_bt"])
def test_pairs_validation_metrics_follow_their_definition(kind):
    rng = np.random.default_rng(1)
    n = 5
    pred = rng.normal(size=(2 * n, 5)).astype(np.float32)
    strength = [1.0, 2.0, 3.0, 1.0, 2.0]
    cfg = cfg_for("data.kind=pairs", f"loss.type={kind}", "loss.reward_weights=helpfulness-only")
    out = task_for(cfg).metrics(pred, _enc(np.zeros((2 * n, 5)), np.zeros((2 * n, 5)), strength))
    r = pred[:, 0]  # helpfulness-only
    d = [float(r[2 * k] - r[2 * k + 1]) for k in range(n)]
    m = [1.0] * n if kind == "bt" else strength
    want = sum(mk * math.log1p(math.exp(-dk)) for mk, dk in zip(m, d)) / n
    assert out["val_loss"] == pytest.approx(want, rel=1e-5)
    assert out["val_pair_accuracy"] == pytest.approx(sum(dk > 0 for dk in d) / n)


def test_lm_validation_metrics_follow_their_definition():
    sft = SftTask(cfg_for("task=sft")).metrics({"num": 30.0, "den": 12.0})
    assert sft == {"val_loss": 2.5, "val_perplexity": pytest.approx(math.exp(2.5)), "val_tokens": 12}
    assert math.isnan(SftTask(cfg_for("task=sft")).metrics({"num": 0.0, "den": 0.0})["val_loss"])
    steer = SteerLM2Task(cfg_for("task=steerlm2", "model.path=/nonexistent/policy")).metrics(
        {"num": 3.0, "den": 4.0, "kl_sum": 1.2, "groups": 3.0}
    )
    assert steer == {"val_loss": 0.75, "val_kl_w_b": pytest.approx(0.4), "val_groups": 3}


def test_kept_lines():
    val = {"val_loss": 6.04501, "val_perplexity": 422.0149}
    sft = task_for(cfg_for("task=sft")).kept_line(12, val)
    assert sft == "kept checkpoint: step 12, val_loss 6.0450, perplexity 422.01"
    assert task_for(cfg_for()).kept_line(3, val) == "kept checkpoint: step 3, val_loss 6.0450"


def test_regression_and_sft_read_the_same_rows_into_their_own_encodings(tmp_path):
    with gzip.open(f"{resolve_source('bundled')}/validation.jsonl.gz", "rt") as f:
        rows = [json.loads(x) for _, x in zip(range(12), f)]
    rows[3]["helpfulness"] = "lots"  # a bad row, skipped on request and reported
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_tokenizer(bundled_tokenizer_path())
    common = ["data.on_bad_row=skip", "data.seq_len=128"]
    enc, rep = task_for(cfg_for(*common)).load_split(str(path), "train", tok, subset=False)
    assert rep["rows_read"] == 12 and rep["rows_skipped"] == 1 and rep["rows_used"] == 11
    assert rep["skipped"][0][1:3] == [4, "helpfulness"]  # the bad row is named: file, row, field, reason
    assert list(rep) == [
        "source",
        "split",
        "rows_read",
        "rows_skipped",
        "rows_used",
        "truncated",
        "dropped_overlength",
        "examples",
        "skipped",
    ]
    assert enc.labels.shape == (len(enc.ids), 5) and len(enc.ids) == 11
    sft_enc, sft_rep = task_for(cfg_for("task=sft", *common)).load_split(str(path), "train", tok, subset=False)
    assert sft_rep["rows_used"] == 11 and sft_enc.response_start is not None and enc.response_start is None


def test_helpsteer3_rows_train_as_scaled_bt_pairs_with_ties_reported():
    """data.kind=helpsteer3: a pairs task; the strength |overall_preference| reaches the encoding; ties and
    filtered rows are counted in the split's report; the domain filter keeps only its domain."""
    tok = load_tokenizer(bundled_tokenizer_path())
    cfg = cfg_for("data.kind=helpsteer3", "loss.type=scaled_bt", "data.seq_len=128")
    task = task_for(cfg)
    assert isinstance(task, PairsTask)
    enc, rep = task.load_split("bundled", "validation", tok, subset=False)
    hs3 = rep["helpsteer3"]
    assert hs3["ties_left_out"] > 0 and rep["rows_read"] == rep["rows_used"] + hs3["ties_left_out"]
    assert len(enc.units) == rep["rows_used"] and set(np.unique(enc.strength)) <= {1.0, 2.0, 3.0}
    code = task_for(cfg_for("data.kind=helpsteer3", "loss.type=bt", "data.domains=[code]", "data.seq_len=128"))
    _, rep_code = code.load_split("bundled", "validation", tok, subset=False)
    assert rep_code["helpsteer3"]["domains"] == {"code": rep_code["rows_used"]}
    assert rep_code["helpsteer3"]["filtered_out"] > 0
    with pytest.raises(ConfigError, match="data.domains"):
        cfg_for("data.domains=[code]")
    with pytest.raises(ConfigError, match="pair loss"):
        cfg_for("data.kind=helpsteer3")


def test_eval_report_is_the_regression_tasks_own():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, size=(8, 5)).astype(np.float32)
    enc = _enc(labels, np.ones((8, 5)))
    enc.group = np.repeat(np.arange(4), 2)  # two responses per prompt: four pairs
    pred = labels + rng.normal(0, 0.1, size=labels.shape).astype(np.float32)  # ranks every pair right
    rep = task_for(cfg_for()).eval_report(enc, pred)
    assert set(rep) == {"per_attribute", "pairwise"}
    assert set(rep["per_attribute"]) == set(cfg_for().model.attributes)
    assert set(rep["pairwise"]) == {str(w) for w in cfg_for().eval.reward_weights}
    assert task_for(cfg_for("data.kind=pairs", "loss.type=bt")).eval_report(enc, pred) == {}
    assert task_for(cfg_for("task=sft")).eval_report(enc, None) == {}
