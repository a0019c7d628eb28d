"""Loading HF folders (single file, sharded index, onto a mesh) and exporting them back."""

import json
import os

import jax
import numpy as np
import pytest

from rm_jax.data.packing import build_batch
from rm_jax.models import apply_model
from rm_jax.models.hf_io import ModelLoadError, export_hf, load_hf_reward_model
from rm_jax.models.sharding import make_mesh
from tests.helpers import PAD, make_hf_model, random_conversations, requires_devices, torch_scores


def _scores(lm, convs, mesh=None):
    b = build_batch(
        convs,
        np.zeros((len(convs), 5), np.float32),
        np.ones((len(convs), 5), np.float32),
        [[i] for i in range(len(convs))],
        24,
        1,
        PAD,
    )
    return np.asarray(apply_model(lm.cfg, lm.params, b, 1, mesh))[:, 0]


@requires_devices(8)
def test_sharded_index_loads_onto_an_fsdp_tensor_mesh(tmp_path):
    tm = make_hf_model("llama", str(tmp_path), max_shard_size="20KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    lm = load_hf_reward_model(str(tmp_path), mesh)
    q = lm.params["layers_0"]["attn"]["q_kernel"]  # [48, 4, 16]: embed/fsdp, heads/tensor
    assert {s.data.shape for s in q.addressable_shards} == {(12, 2, 16)}
    gate = lm.params["layers_1"]["mlp"]["gate_kernel"]  # [48, 96]: embed/fsdp, mlp/tensor
    assert {s.data.shape for s in gate.addressable_shards} == {(12, 48)}
    emb = lm.params["embedding"]  # [97, 48]: vocab 97 is not divisible by 2 -> replicated on tensor
    assert {s.data.shape for s in emb.addressable_shards} == {(97, 12)}
    convs = random_conversations(4, 3, 20, seed=7)
    # batch of 4 rows over data x fsdp = 4 devices
    np.testing.assert_allclose(_scores(lm, convs, mesh), torch_scores(tm, convs), atol=1e-4)


@requires_devices(8)
def test_one_kv_head_on_a_tensor_axis_is_replicated(tmp_path):
    tm = make_hf_model("mistral", str(tmp_path))
    mesh = make_mesh(data=1, fsdp=2, tensor=4)
    lm = load_hf_reward_model(str(tmp_path), mesh)
    k = lm.params["layers_0"]["attn"]["k_kernel"]  # [32, 1, 8]
    assert {s.data.shape for s in k.addressable_shards} == {(16, 1, 8)}
    convs = random_conversations(2, 3, 10, seed=8)
    np.testing.assert_allclose(_scores(lm, convs, mesh), torch_scores(tm, convs), atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_export_round_trip_through_transformers(tmp_path, family):
    from transformers import AutoModelForSequenceClassification

    make_hf_model(family, str(tmp_path / "src"))
    lm = load_hf_reward_model(str(tmp_path / "src"))
    out = export_hf(lm.cfg, lm.params, str(tmp_path / "out"), lm.attribute_names, base_hf_config=lm.hf_config)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["num_labels"] == 5 and cfg["id2label"]["4"] == "verbosity" and cfg["pad_token_id"] == PAD
    assert cfg["architectures"][0].endswith("ForSequenceClassification")
    reloaded = AutoModelForSequenceClassification.from_pretrained(out, attn_implementation="eager").float().eval()
    convs = random_conversations(3, 3, 18, seed=9)
    np.testing.assert_allclose(torch_scores(reloaded, convs), _scores(lm, convs), atol=1e-4)
    again = load_hf_reward_model(out)
    for a, b in zip(jax.tree.leaves(lm.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_export_and_reload(tmp_path):
    make_hf_model("qwen2", str(tmp_path / "src"))
    lm = load_hf_reward_model(str(tmp_path / "src"))
    out = export_hf(lm.cfg, lm.params, str(tmp_path / "out"), lm.attribute_names, max_shard_bytes=30_000)
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
    convs = random_conversations(2, 3, 12, seed=1)
    np.testing.assert_allclose(_scores(load_hf_reward_model(out), convs), _scores(lm, convs), atol=0)


def test_bad_model_folders(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_hf_reward_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_hf_reward_model(str(tmp_path / "empty"))
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelLoadError, match="unsupported model_type 'gpt2'"):
        load_hf_reward_model(str(bad))
    pickled = tmp_path / "pickled"
    make_hf_model("llama", str(pickled))
    os.remove(pickled / "model.safetensors")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="pickled weights are never loaded"):
        load_hf_reward_model(str(pickled))
    broken = tmp_path / "broken"
    make_hf_model("llama", str(broken))
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="unreadable safetensors"):
        load_hf_reward_model(str(broken))


def test_hub_ids_go_through_the_same_loader_and_fail_clearly_offline(monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(ModelLoadError, match="downloading it from the Hugging Face hub failed"):
        load_hf_reward_model("meta-llama/Llama-3.2-1B")
    assert calls and calls[0][0] == "meta-llama/Llama-3.2-1B" and "*.safetensors" in calls[0][1]
    assert not any(p.endswith((".bin", ".pt")) for p in calls[0][1])


def test_hub_download_result_is_loaded_like_a_folder(tmp_path, monkeypatch):
    import huggingface_hub

    tm = make_hf_model("qwen3", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, allow_patterns=None: str(tmp_path))
    lm = load_hf_reward_model("Qwen/Qwen3-tiny")
    convs = random_conversations(2, 3, 10, seed=2)
    np.testing.assert_allclose(_scores(lm, convs), torch_scores(tm, convs), atol=1e-4)


# ---------------------------------------------------------------- a separate reward output (loss.pair_target)


def _reward_head_export(tmp_path, kind: str, seed: int = 3):
    from rm_jax.core.attributes import ATTRIBUTES
    from rm_jax.models import init_params
    from rm_jax.models.llama import DecoderConfig
    from tests.helpers import TINY_DECODER, bundled_tokenizer

    tok = bundled_tokenizer()
    arch = {**TINY_DECODER, "vocab_size": len(tok), "max_position_embeddings": 256}
    cfg = DecoderConfig(**arch, num_labels=5, attribute_head=kind, reward_head=True)
    params = init_params(cfg, make_mesh(devices=jax.devices()[:1]), seed)
    return cfg, params, export_hf(cfg, params, str(tmp_path / f"hf-{kind}"), ATTRIBUTES, tok)


@pytest.mark.parametrize("kind", ["regression", "ordinal"])
def test_reward_head_is_the_last_logit_and_scores_as_weights_reward_head(kind, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    from rm_jax.core.attributes import REWARD_PRESETS
    from rm_jax.data.conversation import encode, row_to_messages
    from rm_jax.engine.scoring import score_rows
    from rm_jax.runs.read import load_scoring_model

    _, params, out = _reward_head_export(tmp_path, kind)
    hf = json.load(open(os.path.join(out, "config.json")))
    width = 1 if kind == "regression" else 4
    assert hf["num_labels"] == 5 * width + 1 and hf["id2label"][str(5 * width)] == "reward_head"
    assert hf["rm_jax"]["reward_head"] is True

    model = load_scoring_model(out)
    assert model.attributes[-1] == "reward_head" and model.cfg.reward_head
    np.testing.assert_array_equal(np.asarray(model.params["reward_head_kernel"]), params["reward_head_kernel"])
    rows = [
        {"prompt": "What is 2+2?", "response": "4"},
        {"prompt": "Name a colour.", "response": "Blue, like the sky on a clear day."},
        {"prompt": "Say hi.", "response": "Hello there!"},
    ]
    pred, reward = score_rows(model, rows, weights="reward_head", progress=False)
    np.testing.assert_array_equal(reward, pred[:, 5])
    torch_model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    ids = encode(model.tokenizer, [row_to_messages(r) for r in rows], model.template)
    with torch.no_grad():
        logits = np.concatenate([torch_model(input_ids=torch.tensor(x)[None]).logits.numpy() for x in ids])
    np.testing.assert_allclose(logits[:, -1], reward, atol=1e-4)
    attrs = logits[:, :-1]
    if kind == "ordinal":  # docs/heads.md's formula on the attribute logits
        z = attrs.reshape(-1, 5, 4) - np.asarray(hf["rm_jax"]["thresholds"])
        attrs = (1 / (1 + np.exp(-z))).sum(-1)
    np.testing.assert_allclose(attrs, pred[:, :5], atol=1e-4)
    # Any other weighting reads the attributes only (the reward_head column weighs 0).
    _, default = score_rows(model, rows, progress=False)
    np.testing.assert_allclose(default, pred[:, :5] @ np.asarray(REWARD_PRESETS["70b-rewardbench"]), atol=1e-9)


def test_reward_head_import_keeps_drops_or_starts_the_row(tmp_path):
    _, params, out = _reward_head_export(tmp_path, "regression")
    kept = load_hf_reward_model(out)
    assert kept.cfg.reward_head and kept.head_loaded and not kept.notes
    np.testing.assert_array_equal(np.asarray(kept.params["head_kernel"]), params["head_kernel"])
    dropped = load_hf_reward_model(out, reward_head=False)
    assert not dropped.cfg.reward_head and "reward_head_kernel" not in dropped.params
    np.testing.assert_array_equal(np.asarray(dropped.params["head_kernel"]), params["head_kernel"])
    assert any("left out" in n for n in dropped.notes)
    # A folder without the row, asked for one: the attribute head is read, the reward output starts new.
    plain = export_hf(dropped.cfg, dropped.params, str(tmp_path / "plain"), kept.attribute_names)
    started = load_hf_reward_model(plain, reward_head=True)
    assert started.cfg.reward_head and any("reward_head initialised" in n for n in started.notes)
    np.testing.assert_array_equal(np.asarray(started.params["head_kernel"]), params["head_kernel"])


def test_reward_head_row_count_is_checked(tmp_path):
    _, _, out = _reward_head_export(tmp_path, "regression")
    path = os.path.join(out, "config.json")
    hf = json.load(open(path))
    hf["rm_jax"]["reward_head"] = False  # 6 logits, 5 attributes, no reward row: a wrong folder
    json.dump(hf, open(path, "w"))
    with pytest.raises(ModelLoadError, match="num_labels 6 is not 5 attributes x 1"):
        load_hf_reward_model(out)
    hf["rm_jax"]["reward_head"] = "yes"
    json.dump(hf, open(path, "w"))
    with pytest.raises(ModelLoadError, match="rm_jax.reward_head must be true or false"):
        load_hf_reward_model(out)


def _ordinal_export(tmp_path):
    from rm_jax.core.attributes import ATTRIBUTES
    from rm_jax.models import init_params
    from rm_jax.models.llama import DecoderConfig
    from tests.helpers import TINY_DECODER

    cfg = DecoderConfig(**TINY_DECODER, num_labels=5, attribute_head="ordinal")
    params = init_params(cfg, make_mesh(devices=jax.devices()[:1]), 2)
    return export_hf(cfg, params, str(tmp_path / "ord"), ATTRIBUTES)


def test_ordinal_import_rejects_score_rows_that_are_not_copies(tmp_path):
    from safetensors.numpy import load_file, save_file

    out = _ordinal_export(tmp_path)
    load_hf_reward_model(out)  # the export itself loads
    path = os.path.join(out, "model.safetensors")
    tensors = load_file(path)
    tensors["score.weight"][6] += 0.01  # attribute 1's second copy
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="the 4 rows of each attribute differ"):
        load_hf_reward_model(out)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("head", "softmax", "rm_jax.head 'softmax' is not one of regression, categorical, ordinal"),
        ("attributes", [], "rm_jax.attributes must be a non-empty list of names"),
        ("label_levels", 1, "rm_jax.label_levels must be an integer >= 2, got 1"),
        ("label_levels", 6, "num_labels 20 is not 5 attributes x 5 \\(ordinal head\\)"),
        ("thresholds", [[0.0, 1.0, 0.5, 2.0]] * 5, "rm_jax.thresholds: ordinal thresholds must strictly increase"),
        ("thresholds", [[0.0, 1.0]] * 5, "rm_jax.thresholds: expected 5 x 4 finite numbers"),
    ],
)
def test_bad_rm_jax_fields_are_one_line_errors_naming_the_field(tmp_path, field, value, message):
    out = _ordinal_export(tmp_path)
    path = os.path.join(out, "config.json")
    hf = json.load(open(path))
    hf["rm_jax"][field] = value
    json.dump(hf, open(path, "w"))
    with pytest.raises(ModelLoadError, match=message) as e:
        load_hf_reward_model(out)
    assert "\n" not in str(e.value) and str(e.value).startswith(path)
