"""LoRA end to end on the bundled sample: a rank-4 run from a tiny random HF reward model; its merged export
differs from the base by rank <= 4 on the adapted matrices and in the score head only; transformers on the
merged export, ``peft.PeftModel`` on the adapter export and ``rm-jax score`` on the run folder agree within
1e-4; checkpoints hold only the adapters and head; resuming on another base stops, naming both.
The same for a policy (task sft) from a tiny causal LM, adapter export loaded by peft."""

from __future__ import annotations

import ast
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from rm_jax.cli import main
from tests.helpers import TINY, make_hf_causal_lm_with_tokenizer, make_hf_rm_with_tokenizer

pytestmark = pytest.mark.slow

ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COMMON = ["model.arch={}", "train.lr=1e-2", "logging.progress=false", "mesh.num_devices=1", "train.warmup_steps=0"]
ROWS = [
    {"prompt": "What is 2 plus 2?", "response": "2 plus 2 equals 4."},
    {"prompt": "Name a red fruit.", "response": "An apple is a red fruit, and so is a cherry."},
    {"prompt": "Say hi", "response": "hello there"},
]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, data_files):
    d = tmp_path_factory.mktemp("lora")
    base = str(d / "base")
    make_hf_rm_with_tokenizer("llama", base)
    run = str(d / "run")
    args = [f"run_dir={run}", f"model.path={base}", "lora.rank=4", "lora.dropout=0.1", "train.max_steps=8"]
    args += ["train.eval_every=4"]
    args += [f"data.train={data_files['train']}", f"data.validation={data_files['validation']}"]
    assert main(["train", TINY, *args, *COMMON, "checkpoint.every_steps=4"]) == 0
    merged, adapter = str(d / "merged"), str(d / "adapter")
    assert main(["export", run, "--out", merged]) == 0
    assert main(["export", run, "--out", adapter, "--adapter"]) == 0
    return {"dir": d, "base": base, "run": run, "merged": merged, "adapter": adapter, "args": args}


def test_merged_export_differs_by_low_rank(lora_run):
    base = load_file(os.path.join(lora_run["base"], "model.safetensors"))
    merged = load_file(os.path.join(lora_run["merged"], "model.safetensors"))
    assert set(base) == set(merged)
    adapted = 0
    for name, w0 in base.items():
        delta = merged[name].astype(np.float64) - w0.astype(np.float64)
        if name.endswith(tuple(f"{m}.weight" for m in ADAPTED)):
            r = np.linalg.matrix_rank(delta, tol=1e-6 * max(np.abs(w0).max(), 1))
            assert r <= 4, (name, r)
            adapted += r > 0
        elif name == "score.weight":
            assert np.abs(delta).max() > 1e-4  # the head trained
        else:  # embeddings, norms: frozen
            assert np.array_equal(delta, 0 * delta), name
    assert adapted == 7 * 2  # every adapted matrix of both layers moved (rank > 0)


def _tokenize(tok, rows):
    from rm_jax.data.conversation import row_to_messages

    return [np.asarray(tok.apply_chat_template(row_to_messages(r), tokenize=True, return_dict=False)) for r in rows]


def _torch_scores(model, ids_list):
    import torch

    with torch.no_grad():
        return np.stack([model(torch.as_tensor(x[None])).logits[0].float().numpy() for x in ids_list])


def test_scores_agree_merged_peft_and_run_folder(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg = json.load(open(os.path.join(lora_run["adapter"], "adapter_config.json")))
    assert cfg["r"] == 4 and cfg["modules_to_save"] == ["score"] and set(cfg["target_modules"]) == set(ADAPTED)
    assert cfg["lora_dropout"] == 0.1  # the run's rate (peft applies it only in training: eval scores agree)
    keys = set(load_file(os.path.join(lora_run["adapter"], "adapter_model.safetensors")))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.score.weight" in keys and len(keys) == 2 * 7 * 2 + 1

    tok = AutoTokenizer.from_pretrained(lora_run["merged"])
    ids = _tokenize(tok, ROWS)
    merged = AutoModelForSequenceClassification.from_pretrained(lora_run["merged"]).float().eval()
    want = _torch_scores(merged, ids)
    base = AutoModelForSequenceClassification.from_pretrained(lora_run["base"]).float().eval()
    base_scores = _torch_scores(base, ids)
    assert np.abs(want - base_scores).max() > 1e-3  # training changed the scores
    peft_model = PeftModel.from_pretrained(base, lora_run["adapter"]).eval()
    np.testing.assert_allclose(_torch_scores(peft_model, ids), want, atol=1e-4, rtol=0)

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert main(["score", "--model", lora_run["run"], "--input", str(inp), "--output", str(out), "--no-progress"]) == 0
    ours = np.asarray([list(json.loads(x)["attributes"].values()) for x in open(out)])
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)


def test_adapter_export_loads_as_the_docs_show(lora_run, tmp_path, monkeypatch, capsys):
    """`rm-jax export --adapter` of a run from a reward-model base: the folder carries the tokenizer (chat
    template), config.json with the attribute names, and the run's model.path as base_model_name_or_path;
    docs/lora.md's loading lines, run exactly as written, give the merged export's scores within 1e-4.
    (The causal-LM base: tests/models/test_lora.py.)"""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rm_jax.core.attributes import ATTRIBUTES
    from tests.models.test_lora import run_docs_snippet

    adapter = lora_run["adapter"]
    assert {"config.json", "tokenizer_config.json"} <= set(os.listdir(adapter))
    pc = json.load(open(os.path.join(adapter, "adapter_config.json")))
    assert pc["base_model_name_or_path"] == lora_run["base"]  # the run's model.path, as given
    (tmp_path / "runs").mkdir()
    os.symlink(adapter, tmp_path / "runs" / "tiny-lora-adapter")
    scope = run_docs_snippet(tmp_path, monkeypatch, capsys)
    merged = AutoModelForSequenceClassification.from_pretrained(lora_run["merged"]).float().eval()
    with torch.no_grad():
        want, got = merged(scope["ids"]).logits.numpy(), scope["model"](scope["ids"]).logits.numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert list(ast.literal_eval(scope["printed"])) == list(ATTRIBUTES)


def test_checkpoints_hold_adapters_and_head_only(lora_run):
    import orbax.checkpoint as ocp

    ck = os.path.join(lora_run["run"], "checkpoints")
    step = max(int(s) for s in os.listdir(ck) if s.isdigit())
    meta = ocp.PyTreeCheckpointer().metadata(os.path.join(ck, str(step), "state"))
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    names = set()

    def walk(t, path=()):
        if isinstance(t, dict):
            for k, v in t.items():
                walk(v, path + (k,))
        else:
            names.add(path)

    walk(dict(tree["params"]))
    leaves = {p[-1] for p in names}
    assert leaves == {f"{t}_lora_{x}" for t in "q k v o gate up down".split() for x in "ab"} | {"head_kernel"}
    base = json.load(open(os.path.join(lora_run["run"], "lora_base.json")))
    assert base["path"] == os.path.abspath(lora_run["base"]) and len(base["sha256"]) == 64


def test_resume_on_another_base_stops(lora_run, capsys):
    other = str(lora_run["dir"] / "other_base")
    make_hf_rm_with_tokenizer("llama", other, seed=5)
    args = [a for a in lora_run["args"] if not a.startswith(("model.path=", "train.max_steps="))]
    rc = main(["train", TINY, *args, *COMMON, f"model.path={other}", "train.max_steps=12"])
    err = capsys.readouterr().err
    assert rc == 1
    assert os.path.abspath(lora_run["base"]) in err and other in err


def test_policy_lora_sft_and_peft(tmp_path, data_files):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = str(tmp_path / "lm")
    make_hf_causal_lm_with_tokenizer("qwen2", base)
    run = str(tmp_path / "sft")
    args = [f"run_dir={run}", f"model.path={base}", "task=sft", "lora.rank=2", "lora.targets=[q,v,down]"]
    args += ["lora.dropout=0.05"]
    args += [f"data.train={data_files['train']}", f"data.validation={data_files['validation']}"]
    assert main(["train", TINY, *args, *COMMON, "train.max_steps=4", "train.eval_every=4"]) == 0
    merged, adapter = str(tmp_path / "merged"), str(tmp_path / "adapter")
    assert main(["export", run, "--out", merged]) == 0
    assert main(["export", run, "--out", adapter, "--adapter"]) == 0
    x = torch.as_tensor(np.random.default_rng(0).integers(1, 900, size=(1, 20)))
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(merged).float().eval()(x).logits.numpy()
        lm = AutoModelForCausalLM.from_pretrained(base).float().eval()
        before = lm(x).logits.numpy()
        got = PeftModel.from_pretrained(lm, adapter).eval()(x).logits.numpy()
    assert np.abs(want - before).max() > 1e-4
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    b0, m0 = load_file(os.path.join(base, "model.safetensors")), load_file(os.path.join(merged, "model.safetensors"))
    moved = [k for k in b0 if not np.array_equal(b0[k], m0[k])]
    assert moved and all(k.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight")) for k in moved)


def test_import_a_peft_adapter(tmp_path, data_files):
    """An adapter trained elsewhere (made here by peft itself, random B and head): `rm-jax score` on the adapter
    folder gives peft's scores, and `model.adapter` continues from it (with lr 0 the run scores the same)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = str(tmp_path / "base")
    make_hf_rm_with_tokenizer("llama", base, seed=3)
    model = AutoModelForSequenceClassification.from_pretrained(base).float().eval()
    pm = get_peft_model(
        model,
        LoraConfig(
            r=3, lora_alpha=6, lora_dropout=0.05, target_modules=["q_proj", "v_proj", "up_proj"], task_type="SEQ_CLS"
        ),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0, 0.2)
    adapter = str(tmp_path / "peft_adapter")
    pm.save_pretrained(adapter)
    pm.eval()
    ids = _tokenize(AutoTokenizer.from_pretrained(base), ROWS)
    want = _torch_scores(pm, ids)
    assert (
        np.abs(want - _torch_scores(AutoModelForSequenceClassification.from_pretrained(base).eval(), ids)).max() > 1e-2
    )

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in ROWS))

    def score(model_dir):
        out = tmp_path / "out.jsonl"
        assert main(["score", "--model", model_dir, "--input", str(inp), "--output", str(out), "--no-progress"]) == 0
        return np.asarray([list(json.loads(x)["attributes"].values()) for x in open(out)])

    np.testing.assert_allclose(score(adapter), want, atol=1e-4, rtol=0)
    run = str(tmp_path / "cont")
    args = [f"run_dir={run}", f"model.path={base}", f"model.adapter={adapter}", "train.max_steps=1", "train.lr=1e-12"]
    args += [f"data.train={data_files['train']}", f"data.validation={data_files['validation']}", "train.eval_every=1"]
    assert main(["train", TINY, *args, *COMMON[:1], *COMMON[2:], "train.weight_decay=0.0"]) == 0
    np.testing.assert_allclose(score(run), want, atol=1e-4, rtol=0)
    # it trained at the adapter's own lora_dropout (the run set no lora.dropout)
    assert json.load(open(os.path.join(run, "model_meta.json")))["decoder"]["lora_dropout"] == 0.05
