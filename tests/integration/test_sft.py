"""task sft end to end on a slice of the bundled sample: the run folder, the label probe, export to an HF
*ForCausalLM folder that transformers loads with the same logits, and the policy loaded from the run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rm_jax.core.config import load_config
from rm_jax.training.run import train
from tests.helpers import ROOT

pytestmark = pytest.mark.slow  # end to end: trains or spawns processes

DEMO = os.path.join(ROOT, "experiments", "steerlm_sft_demo.yaml")


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    rd = str(tmp_path_factory.mktemp("sft") / "run")
    cfg = load_config(
        DEMO,
        [
            f"run_dir={rd}",
            "train.epochs=1",
            "train.max_steps=24",
            "train.eval_every=12",
            "model.arch.hidden_size=32",
            "model.arch.intermediate_size=64",
            "logging.progress=false",
            "mesh.num_devices=1",
            "mesh.data=1",
            "eval.label_probe.prompts=3",
            "eval.label_probe.max_new_tokens=8",
        ],
    )
    return train(cfg)


@pytest.mark.slow
def test_sft_run_folder(sft_run):
    ev = json.load(open(os.path.join(sft_run, "eval.json")))
    assert ev["val_perplexity"] == pytest.approx(np.exp(ev["val_loss"])) and ev["val_tokens"] > 1000
    probe = ev["label_probe"]
    assert probe["prompts"] == 3 and set(probe["levels"]) == {"0", "4"}
    assert "<extra_id_2>" not in probe["levels"]["0"]["examples"][0]  # a response, not the template
    meta = json.load(open(os.path.join(sft_run, "model_meta.json")))
    assert meta["task"] == "sft" and meta["decoder"]["head"] == "lm"
    recs = [json.loads(x) for x in open(os.path.join(sft_run, "metrics.jsonl"))]
    train_recs = [r for r in recs if "loss" in r]
    assert all(r["loss_tokens"] > 0 for r in train_recs) and train_recs[-1]["loss"] < train_recs[0]["loss"]
    assert not os.path.exists(os.path.join(sft_run, "predictions"))  # no RM predictions for a policy


@pytest.mark.slow
def test_sft_export_and_policy(sft_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from rm_jax.cli import main
    from rm_jax.data.conversation import encode_responses, row_to_messages
    from rm_jax.models import CausalLM
    from rm_jax.policy import load_policy, response_logprobs

    out = str(tmp_path / "hf")
    assert main(["export", sft_run, "--out", out]) == 0
    hf = AutoModelForCausalLM.from_pretrained(out).float().eval()
    pol = load_policy(sft_run)
    conv = row_to_messages(
        {"prompt": "What is 2 plus 2?", "response": "It is 4.", "attributes": "verbosity:1"}, with_attributes=True
    )
    ids, start = encode_responses(pol.tokenizer, [conv])
    x = ids[0][None].astype(np.int32)
    ours = np.asarray(
        CausalLM(pol.cfg).apply({"params": pol.params}, x, np.ones_like(x), np.arange(x.shape[1], dtype=np.int32)[None])
    )
    with torch.no_grad():
        theirs = hf(input_ids=torch.as_tensor(x.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    # The exported folder is a policy too, with the run's chat template: the same log-probs.
    a, _ = response_logprobs(pol, [conv])
    b, _ = response_logprobs(load_policy(out), [conv])
    assert a[0] == pytest.approx(b[0], abs=1e-4)
    with pytest.raises(Exception, match="a policy run"):
        from rm_jax.runs.read import load_scoring_model

        load_scoring_model(sft_run)


def test_a_run_from_another_run_reads_data_with_its_tokenizer_and_template(tmp_path):
    """model.init_from without model.tokenizer / data.template: the parent run's (SteerLM 2.0 groups carry
    log-probs computed with them); settings the config names win."""
    from rm_jax.runs.read import META
    from rm_jax.training.setup import inherit_from_init, tokenizer_path

    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / META).write_text(json.dumps({"tokenizer": "/somewhere/tok", "template": "nemotron"}))
    cfg = inherit_from_init(load_config(DEMO, [f"model.init_from={parent}"]))
    assert tokenizer_path(cfg) == "/somewhere/tok" and cfg.data.template == "nemotron"
    own = inherit_from_init(
        load_config(DEMO, [f"model.init_from={parent}", "model.tokenizer=/mine", "data.template=chatml"])
    )
    assert tokenizer_path(own) == "/mine" and own.data.template == "chatml"
    assert inherit_from_init(load_config(DEMO)).data.template == load_config(DEMO).data.template
