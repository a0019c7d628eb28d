"""The serving side of fitted weights: ``--weights W.json`` becomes the server's default and ``/info``
names it; a request can not make the server read a file; ``--weights GATE_DIR`` weighs each /score row by the
gate on its prompt and /get_reward refuses it."""

import json

import numpy as np
import pytest

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.errors import InputError
from rm_jax.serving.protocol import BadRequest, parse_weights


def _wait_ready(svc, seconds: float = 300) -> None:
    """Until the service has compiled its batch shapes."""
    import time

    deadline = time.monotonic() + seconds
    while svc.state != "ready":
        assert time.monotonic() < deadline, f"the service did not become ready ({svc.state})"
        time.sleep(0.05)


def test_service_info_reports_fitted_weights_and_their_file(tmp_path):
    from rm_jax.runs.read import load_scoring_model
    from rm_jax.serving.service import RewardService
    from rm_jax.serving.settings import ServeConfig
    from tests.helpers import make_hf_rm_with_tokenizer

    make_hf_rm_with_tokenizer("llama", str(tmp_path / "rm"))
    w = {a: 0.1 * (i + 1) for i, a in enumerate(ATTRIBUTES)}
    (tmp_path / "W.json").write_text(json.dumps({"weights": w, "heldout_accuracy": {"mean": 0.7}}))
    model = load_scoring_model(str(tmp_path / "rm"))
    cfg = ServeConfig(weights=str(tmp_path / "W.json"), seq_len=128, max_batch_tokens=256)
    svc = RewardService(model, cfg, str(tmp_path))
    info = svc.info()["weights"]
    assert info["spec"] == str(tmp_path / "W.json") and info["source"] == f"file {tmp_path / 'W.json'}"
    np.testing.assert_allclose(info["values"], [w[a] for a in ATTRIBUTES])
    assert "zero_unnamed" not in info
    # a W.json naming a subset: the rest weigh 0, and /info says so
    (tmp_path / "short.json").write_text(json.dumps({"weights": {"correctness": 1.0}}))
    info = RewardService(model, ServeConfig(weights=str(tmp_path / "short.json")), str(tmp_path)).info()["weights"]
    assert info["by_attribute"] == {a: float(a == "correctness") for a in ATTRIBUTES}
    assert info["zero_unnamed"] == [a for a in ATTRIBUTES if a != "correctness"]
    (tmp_path / "other.json").write_text(json.dumps({"weights": {"helpfulness": 1.0, "safety": 1.0}}))
    with pytest.raises(InputError, match="--weights: .*name safety, which the model does not predict"):
        RewardService(model, ServeConfig(weights=str(tmp_path / "other.json")), str(tmp_path))


def test_request_weights_never_read_a_file(tmp_path):
    (tmp_path / "W.json").write_text(json.dumps({"weights": {a: 1.0 for a in ATTRIBUTES}}))
    with pytest.raises(BadRequest, match="unknown reward-weight preset"):
        parse_weights({"weights": str(tmp_path / "W.json")}, ATTRIBUTES)
    np.testing.assert_array_equal(parse_weights({"weights": [1, 0, 0, 0, 0]}, ATTRIBUTES), [1, 0, 0, 0, 0])


def test_request_weights_by_name_follow_the_model_attributes():
    reordered = ["correctness", "helpfulness", "coherence", "complexity", "verbosity"]
    np.testing.assert_array_equal(parse_weights({"weights": {"helpfulness": 2}}, reordered), [0, 2, 0, 0, 0])
    np.testing.assert_array_equal(parse_weights({"weights": "helpfulness-only"}, reordered), [0, 1, 0, 0, 0])
    with pytest.raises(BadRequest, match="weights: .*name safety"):
        parse_weights({"weights": {"safety": 1}}, reordered)
    with pytest.raises(BadRequest, match="map attribute names to numbers"):
        parse_weights({"weights": {"helpfulness": "1"}}, reordered)


def test_serve_config_checks_weights_before_the_model_loads():
    from rm_jax.serving.settings import ServeConfig

    with pytest.raises(InputError, match="--weights: unknown reward-weight preset 'goodnes'"):
        ServeConfig(weights="goodnes").check()


def _head_model(tmp_path, kind: str):
    """A tiny rm_jax export with a ``kind`` head (random weights, the bundled tokenizer), loaded to score."""
    import jax

    from rm_jax.models import init_params
    from rm_jax.models.hf_io import export_hf
    from rm_jax.models.llama import DecoderConfig
    from rm_jax.models.sharding import make_mesh
    from rm_jax.runs.read import load_scoring_model
    from tests.helpers import TINY_DECODER, bundled_tokenizer

    tok = bundled_tokenizer()
    cfg = DecoderConfig(
        **{**TINY_DECODER, "vocab_size": len(tok), "max_position_embeddings": 256}, num_labels=5, attribute_head=kind
    )
    params = init_params(cfg, make_mesh(devices=jax.devices()[:1]), 7)
    return load_scoring_model(export_hf(cfg, params, str(tmp_path / kind), ATTRIBUTES, tok))


ROWS = [
    {"prompt": "What is 2+2?", "response": "4"},
    {"prompt": "Name a colour.", "response": "Blue, like the sky on a clear day."},
]


def test_score_probs_on_a_categorical_model_match_rm_jax_score_and_info_names_the_head(tmp_path):
    import threading

    from rm_jax.engine.scoring import score_rows
    from rm_jax.serving.service import RewardService
    from rm_jax.serving.settings import ServeConfig

    model = _head_model(tmp_path, "categorical")
    svc = RewardService(model, ServeConfig(seq_len=128, max_batch_tokens=256, min_batch_tokens=128), str(tmp_path))
    info = svc.info()
    assert info["head"] == {"kind": "categorical", "label_levels": 5, "probs": True, "reward_head": False}
    svc.start()
    try:
        _wait_ready(svc)
        prepared = svc._prepare("score", json.dumps({"rows": ROWS, "probs": True}).encode())
        done = threading.Event()
        job = svc.submit(prepared, lambda exc: done.set())
        assert done.wait(300), "the batcher did not score the request"
        results = svc.answer(prepared, job)["results"]
    finally:
        svc.close()
    pred, _, probs = score_rows(model, ROWS, progress=False, probs=True)
    for i, r in enumerate(results):
        got = np.asarray([r["probs"][a] for a in ATTRIBUTES])
        np.testing.assert_allclose(got, probs[i], atol=1e-5)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose([r["attributes"][a] for a in ATTRIBUTES], got @ np.arange(5), atol=1e-5)
        np.testing.assert_allclose([r["attributes"][a] for a in ATTRIBUTES], pred[i], atol=1e-5)


def test_score_probs_on_a_regression_model_is_a_400_naming_probs(tmp_path):
    from rm_jax.serving.service import RewardService
    from rm_jax.serving.settings import ServeConfig

    svc = RewardService(_head_model(tmp_path, "regression"), ServeConfig(seq_len=128), str(tmp_path))
    assert svc.info()["head"]["kind"] == "regression" and svc.info()["head"]["probs"] is False
    with pytest.raises(BadRequest) as e:
        svc._prepare("score", json.dumps({"rows": ROWS, "probs": True}).encode())
    assert e.value.status == 400 and e.value.body()["field"] == "probs"
    assert "regression head" in str(e.value)


def _random_gate(path, hidden_size: int, emb=None, seed: int = 0) -> str:
    """A gate folder with a random one-layer MLP (no fitting), its features standardised over ``emb`` as a
    fit does: prompts get clearly different weights."""
    from rm_jax.evaluation.gate import GateConfig
    from rm_jax.evaluation.gate_fit import save_gate

    rng, h, a = np.random.default_rng(seed), 8, len(ATTRIBUTES)
    mean, std = (np.zeros(hidden_size), np.ones(hidden_size)) if emb is None else (emb.mean(0), emb.std(0) + 1e-3)
    t = {"feature_mean": mean, "feature_std": std,
         "hidden0.kernel": rng.normal(0, 1 / np.sqrt(hidden_size), (hidden_size, h)), "hidden0.bias": np.zeros(h),
         "out.kernel": rng.normal(0, 1, (h, a)), "out.bias": np.zeros(a), "log_scale": np.array(0.0),
         "orientation": np.array([1.0, 1, 1, 1, -1]), "attribute_scale": np.full(a, 0.5)}  # fmt: skip
    save_gate(str(path), {"attributes": list(ATTRIBUTES), "gate": {**GateConfig(hidden=h, layers=1).__dict__,
              "temperature": 1.0}}, t)  # fmt: skip
    return str(path)


GATE_ROWS = [
    {"prompt": "What is 2+2?", "response": "4"},
    {"prompt": "Name a colour.", "response": "Blue, like the sky on a clear day."},
    {"prompt": "What is 2+2?", "response": "Four, I think."},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "No."}]},
]  # fmt: skip


def test_serve_with_a_prompt_gate_weighs_each_score_row_by_its_prompt(tmp_path):
    """--weights GATE_DIR: /score rows carry the gate's weights for their prompt (checked against the gate in
    numpy on transformers' hidden state at the prompt's last token) and reward = weights . attributes (as
    rm-jax score); a request's own weights win; /get_reward refuses the gate (400 naming the endpoint)
    unless the request brings weights; /info says the weighting is a gate."""
    import threading

    import torch

    from rm_jax.data.conversation import encode_prompts, row_to_messages
    from rm_jax.engine.scoring import score_rows
    from rm_jax.evaluation.gate import GateConfig, gate_weights, load_gate
    from rm_jax.runs.read import load_scoring_model
    from rm_jax.serving.service import RewardService
    from rm_jax.serving.settings import ServeConfig
    from tests.helpers import make_hf_rm_with_tokenizer

    hf, _ = make_hf_rm_with_tokenizer("llama", str(tmp_path / "rm"), seed=3)
    model = load_scoring_model(str(tmp_path / "rm"))
    ids = encode_prompts(model.tokenizer, [row_to_messages(r)[:-1] for r in GATE_ROWS], model.template)
    with torch.no_grad():  # the reference embedding: HF's last hidden state at the prompt's last token
        emb = np.stack(
            [hf(torch.tensor(x[None]).long(), output_hidden_states=True).hidden_states[-1][0, -1].numpy() for x in ids]
        )
    gate_dir = _random_gate(tmp_path / "G", model.cfg.hidden_size, emb)
    cfg = ServeConfig(weights=gate_dir, seq_len=128, max_batch_tokens=256, min_batch_tokens=128).check()
    svc = RewardService(model, cfg, str(tmp_path / "rm"))
    info = svc.info()["weights"]
    assert info["kind"] == "gate" and info["label"] == "G" and info["values"] is None
    assert "get_reward" in info["endpoints"]
    with pytest.raises(BadRequest) as e:
        svc._prepare("get_reward", json.dumps({"query": ["some text"]}).encode())
    assert e.value.status == 400 and e.value.body()["field"] == "weights" and "get_reward" in str(e.value)
    assert svc._prepare("get_reward", json.dumps({"query": ["x"], "weights": "helpfulness-only"}).encode())

    def score(body):
        prepared = svc._prepare("score", json.dumps(body).encode())
        done = threading.Event()
        job = svc.submit(prepared, lambda exc: done.set())
        assert done.wait(300), "the batcher did not score the request"
        return svc.answer(prepared, job)["results"]

    svc.start()
    try:
        _wait_ready(svc)
        results = score({"rows": GATE_ROWS})
        own = score({"rows": GATE_ROWS, "weights": "helpfulness-only"})
    finally:
        svc.close()
    gate = load_gate(gate_dir)
    want_w = gate_weights(gate.tensors, emb, GateConfig(**gate.meta["gate"]))
    assert np.abs(want_w[0] - want_w[1]).max() > 0.1 * np.abs(want_w).max()  # prompts weigh differently
    got_w = np.array([[r["weights"][a] for a in ATTRIBUTES] for r in results])
    np.testing.assert_allclose(got_w, want_w, rtol=2e-3, atol=1e-6)
    pred, reward = score_rows(model, GATE_ROWS, progress=False, row_weights=got_w)
    np.testing.assert_allclose([r["reward"] for r in results], reward, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([[r["attributes"][a] for a in ATTRIBUTES] for r in results], pred, atol=1e-5)
    assert all("weights" not in r for r in own)
    np.testing.assert_allclose([r["reward"] for r in own], pred[:, 0], atol=1e-5)


def test_serve_gate_folder_is_checked_before_and_against_the_model(tmp_path):
    from rm_jax.runs.read import load_scoring_model
    from rm_jax.serving.service import RewardService
    from rm_jax.serving.settings import ServeConfig
    from tests.helpers import make_hf_rm_with_tokenizer

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "gate.json").write_text("{}")
    with pytest.raises(InputError, match="--weights .*broken: not a readable gate folder"):
        ServeConfig(weights=str(tmp_path / "broken")).check()
    make_hf_rm_with_tokenizer("llama", str(tmp_path / "rm"))
    model = load_scoring_model(str(tmp_path / "rm"))
    wrong = _random_gate(tmp_path / "wide", model.cfg.hidden_size + 4)
    with pytest.raises(InputError, match="wide prompt embeddings; this model's are"):
        RewardService(model, ServeConfig(weights=wrong, seq_len=128), str(tmp_path))


def test_largest_batch_defaults_to_one_cpu_row_and_16k_slots_on_an_accelerator():
    from rm_jax.engine.scoring import CPU_TOKENS_PER_PASS
    from rm_jax.serving.buckets import ladder
    from rm_jax.serving.settings import ACCELERATOR_MAX_BATCH_TOKENS, ServeConfig

    cfg = ServeConfig().check()
    assert cfg.resolve_max_batch_tokens(4096, "cpu") == 4096  # one row of the longest conversation
    assert cfg.resolve_max_batch_tokens(512, "cpu") == CPU_TOKENS_PER_PASS
    assert cfg.resolve_max_batch_tokens(4096, "gpu") == ACCELERATOR_MAX_BATCH_TOKENS
    assert ServeConfig(max_batch_tokens=8192).resolve_max_batch_tokens(4096, "cpu") == 8192  # asked for: kept
    assert max(b.tokens for b in ladder(4096, cfg.resolve_max_batch_tokens(4096, "cpu"))) == 4096
    assert cfg.resolve_seq_len(8192) == 4096  # no explicit limit: nothing to clash with
    with pytest.raises(InputError, match="--max-batch-tokens 1024 is less than --seq-len 4096"):
        ServeConfig(max_batch_tokens=1024).resolve_seq_len(8192)
    with pytest.raises(InputError, match="--max-batch-tokens"):
        ServeConfig(max_batch_tokens=0).check()


SHARE_PROMPT = "Write a short poem about the sea and the wind, with four lines and a rhyme."
SHARE_ROWS = [{"prompt": SHARE_PROMPT, "response": f"Sample {i}: waves."} for i in range(6)] + [
    # the same user message after a system message: another prompt, which must not join the six
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": SHARE_PROMPT},
                  {"role": "assistant", "content": "Sample 0: waves."}]},
    {"prompt": "Hi", "response": "Hello!"},
]  # fmt: skip


def _serve_once(model, tmp_path, rows, **cfg):
    """(/score results, /info, the service's Prometheus registry) of one request to a fresh service."""
    import threading

    from rm_jax.serving.service import RewardService
    from rm_jax.serving.settings import ServeConfig

    svc = RewardService(model, ServeConfig(seq_len=128, max_batch_tokens=256, min_batch_tokens=128, **cfg), "rm")
    svc.start()
    try:
        _wait_ready(svc)
        prepared = svc._prepare("score", json.dumps({"rows": rows}).encode())
        done = threading.Event()
        job = svc.submit(prepared, lambda exc: done.set())
        assert done.wait(300), "the batcher did not score the request"
        return svc.answer(prepared, job)["results"], svc.info(), svc.metrics.registry
    finally:
        svc.close()


def test_serve_share_prompts_scores_n_samples_of_one_prompt_as_unshared(tmp_path):
    """--share-prompts: six samples of one prompt in one /score request are laid out after one copy of their
    prompt (a row with the same user message after a system message is another prompt): every attribute equals
    --no-share-prompts' within 1e-5 float32, the saved tokens are 5 x the six rows' common token prefix (counted
    in /metrics), fewer batches run under the same --max-batch-tokens, and /info names the setting."""
    from rm_jax.data.conversation import encode, row_to_messages
    from rm_jax.data.prefix_sharing import common_prefix_len
    from rm_jax.runs.read import load_scoring_model
    from tests.helpers import make_hf_rm_with_tokenizer

    make_hf_rm_with_tokenizer("llama", str(tmp_path / "rm"), seed=5)
    model = load_scoring_model(str(tmp_path / "rm"))
    ids = encode(model.tokenizer, [row_to_messages(r) for r in SHARE_ROWS], model.template)
    p = common_prefix_len(ids[:6])
    assert p > 30 and p + sum(len(x) - p for x in ids[:6]) <= 128  # one unit in one 128-token row
    got = {s: _serve_once(model, tmp_path, SHARE_ROWS, share_prompts=s) for s in (True, False)}
    attrs = {s: np.array([[r["attributes"][a] for a in ATTRIBUTES] for r in got[s][0]]) for s in got}
    np.testing.assert_allclose(attrs[True], attrs[False], atol=1e-5, rtol=0)
    np.testing.assert_allclose([r["reward"] for r in got[True][0]], [r["reward"] for r in got[False][0]], atol=1e-5)
    reg = {s: got[s][2] for s in got}
    assert reg[True].get_sample_value("rm_serve_prompt_tokens_saved_total") == 5 * p
    assert reg[False].get_sample_value("rm_serve_prompt_tokens_saved_total") == 0
    tokens = {s: reg[s].get_sample_value("rm_serve_tokens_total") for s in got}
    assert tokens[False] == sum(len(x) for x in ids) and tokens[True] == tokens[False] - 5 * p
    batches = {s: reg[s].get_sample_value("rm_serve_batch_seconds_count") for s in got}
    assert batches[True] == 1 < batches[False]
    assert got[True][1]["share_prompts"] == {"setting": True, "on": True}
    assert got[False][1]["share_prompts"] == {"setting": False, "on": False}
