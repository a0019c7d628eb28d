"""The serving side of fitted weights: ``--weights W.json`` becomes the server's default and ``/info``
names it; a request can not make the server read a file."""

import json

import numpy as np
import pytest

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.core.errors import InputError
from rm_jax.serving.protocol import BadRequest, parse_weights


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
