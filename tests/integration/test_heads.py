"""Acceptance for model.head (docs/heads.md): for each head a tiny run trains on a cut of the bundled sample,
exports, and transformers' logits through the documented formula equal rm-jax score's attributes; the run
folder and the export score alike; eval.json carries nll / ece; ordinal P(y > k) never increases in k."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rm_jax.core.config import build_config
from rm_jax.data.conversation import encode, row_to_messages
from rm_jax.engine.scoring import score_rows
from rm_jax.runs.read import export_run, load_scoring_model
from rm_jax.training.run import train
from tests.helpers import tiny_base

pytestmark = pytest.mark.slow


def formula_attributes(logits: np.ndarray, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """docs/heads.md's formula: (E[y] [N, A], ordinal P(y > k) [N, A, K-1] or None) from HF logits."""
    meta = cfg["rm_jax"]
    a, k = len(meta["attributes"]), meta["label_levels"]
    if meta["head"] == "categorical":
        x = logits.reshape(-1, a, k)
        p = np.exp(x - x.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return (p * np.arange(k)).sum(-1), None
    z = logits.reshape(-1, a, k - 1) - np.asarray(meta["thresholds"])
    s = 1.0 / (1.0 + np.exp(-z))
    return s.sum(-1), s


@pytest.mark.parametrize("head", ["regression", "categorical", "ordinal"])
def test_head_trains_exports_and_transformers_agrees(head, data_files, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    base = tiny_base(data_files, steps=4, every=4)
    base["model"]["head"] = head
    base["run_dir"] = str(tmp_path / "run")
    rd = train(build_config(base))
    ev = json.load(open(os.path.join(rd, "eval.json")))
    per = ev["per_attribute"]["helpfulness"]
    if head == "regression":
        assert "nll" not in per
    else:
        assert per["nll"] > 0 and 0 <= per["ece"] <= 1 and per["qwk"] is not None

    out = export_run(rd, str(tmp_path / "hf"))
    cfg = json.load(open(os.path.join(out, "config.json")))
    k = 5
    width = {"regression": 1, "categorical": k, "ordinal": k - 1}[head]
    assert cfg["num_labels"] == 5 * width and cfg["rm_jax"]["head"] == head

    rows = [json.loads(line) for line in open(data_files["validation"])][:6]
    run_model, hf_model = load_scoring_model(rd), load_scoring_model(out)
    assert hf_model.cfg.attribute_head == head
    pred_run = score_rows(run_model, rows, progress=False)[0]
    pred_hf = score_rows(hf_model, rows, progress=False)[0]
    np.testing.assert_allclose(pred_hf, pred_run, atol=1e-5)  # import reads the export back

    torch_model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    ids = encode(hf_model.tokenizer, [row_to_messages(r) for r in rows], hf_model.template)
    with torch.no_grad():
        logits = np.concatenate(
            [torch_model(input_ids=torch.tensor(x, dtype=torch.long)[None]).logits.numpy() for x in ids]
        ).astype(np.float64)
    if head == "regression":
        np.testing.assert_allclose(logits, pred_run, atol=1e-4)
        return
    attrs, s = formula_attributes(logits, cfg)
    np.testing.assert_allclose(attrs, pred_run, atol=1e-4)
    _, _, probs = score_rows(hf_model, rows, progress=False, probs=True)
    np.testing.assert_allclose((probs * np.arange(k)).sum(-1), pred_run, atol=1e-5)
    if head == "ordinal":
        assert np.all(np.diff(s, axis=-1) <= 0), "ordinal P(y > k) increased with k"
        # the exported rows of an attribute are copies of one score vector
        np.testing.assert_array_equal(np.diff(logits.reshape(-1, 5, k - 1), axis=-1), 0)
