"""Attribute heads (rm_jax.models.heads): ordering, E[y], level probabilities, targets, and the level loss,
each against a plain numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from rm_jax.engine.losses import level_sums
from rm_jax.models import heads, init_params
from rm_jax.models.llama import DecoderConfig, RewardModel
from rm_jax.models.sharding import make_mesh

K = 5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_ordinal_thresholds_increase_for_any_free_parameters():
    raw = np.random.default_rng(0).normal(0, 3, (50, K - 1)).astype(np.float32)
    theta = np.asarray(heads.ordinal_thresholds(jnp.asarray(raw)))
    assert np.all(np.diff(theta, axis=-1) > 0)
    np.testing.assert_allclose(heads.thresholds_to_raw(theta), raw, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="strictly increase"):
        heads.thresholds_to_raw(np.array([[0.0, 1.0, 1.0, 2.0]]))


def test_ordinal_model_rows_are_non_increasing_and_probabilities_match():
    """P(y > k) never increases with k on any row of a model whose thresholds are random (not the init)."""
    cfg = DecoderConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, attribute_head="ordinal", initializer_range=0.5,
    )  # fmt: skip
    params = dict(init_params(cfg, make_mesh(devices=jax.devices()[:1])))
    params["head_thresholds"] = jnp.asarray(np.random.default_rng(1).normal(0, 2, (5, K - 1)), jnp.float32)
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 64, (6, 12)), jnp.int32)
    seg, pos = jnp.ones_like(ids), jnp.broadcast_to(jnp.arange(12), ids.shape)
    m = RewardModel(cfg)
    z = np.asarray(m.apply({"params": params}, ids, seg, pos, output="raw"))[:, 0]  # [6, A, K-1]
    s = _sigmoid(z.astype(np.float64))
    assert np.all(np.diff(s, axis=-1) <= 0), "P(y > k) increased with k"
    attrs, probs = (np.asarray(x)[:, 0] for x in m.apply({"params": params}, ids, seg, pos, output="levels"))
    ref = np.concatenate([1 - s[..., :1], s[..., :-1] - s[..., 1:], s[..., -1:]], axis=-1)
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    np.testing.assert_allclose(attrs, s.sum(-1), atol=1e-5)
    np.testing.assert_allclose(attrs, (ref * np.arange(K)).sum(-1), atol=1e-5)  # E[y] = sum_k k p_k too


def test_categorical_expected_level_is_sum_k_pk():
    logits = np.random.default_rng(3).normal(0, 2, (7, 5, K))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ey = np.asarray(heads.expected_level(jnp.asarray(logits, jnp.float32), "categorical"))
    np.testing.assert_allclose(ey, (p * np.arange(K)).sum(-1), atol=1e-5)
    np.testing.assert_allclose(np.asarray(heads.level_probs(jnp.asarray(logits), "categorical")), p, atol=1e-6)


@pytest.mark.parametrize("kind", ["categorical", "ordinal"])
def test_log_level_probs_is_log_of_level_probs(kind):
    w = K if kind == "categorical" else K - 1
    raw = np.random.default_rng(4).normal(0, 3, (9, 5, w)).astype(np.float32)
    if kind == "ordinal":
        raw = np.sort(raw, axis=-1)[..., ::-1].copy()  # ordered z as the head makes them
    lp = np.asarray(heads.log_level_probs(jnp.asarray(raw), kind))
    np.testing.assert_allclose(np.exp(lp), np.asarray(heads.level_probs(jnp.asarray(raw), kind)), atol=1e-6)
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, atol=1e-5)


def test_target_distribution_splits_smooths_and_discretises_a_gaussian():
    q = np.asarray(heads.target_distribution(jnp.asarray([2.0, 2.3, 4.0, 7.0, -1.0]), K))
    np.testing.assert_allclose(q[0], [0, 0, 1, 0, 0])
    np.testing.assert_allclose(q[1], [0, 0, 0.7, 0.3, 0], atol=1e-6)  # non-integer: split between neighbours
    np.testing.assert_allclose(q[2], [0, 0, 0, 0, 1])
    np.testing.assert_allclose(q[3], q[2])  # clipped to the top level
    np.testing.assert_allclose(q[4], [1, 0, 0, 0, 0])
    sm = np.asarray(heads.target_distribution(jnp.asarray([1.0]), K, smoothing=0.1))[0]
    np.testing.assert_allclose(sm, [0.02, 0.92, 0.02, 0.02, 0.02], atol=1e-6)
    g = np.asarray(heads.target_distribution(jnp.asarray([1.4]), K, soft="gaussian", sigma=0.7))[0]
    edges = np.array([-np.inf, 0.5, 1.5, 2.5, 3.5, np.inf])
    np.testing.assert_allclose(g, np.diff(norm.cdf((edges - 1.4) / 0.7)), atol=1e-6)


@pytest.mark.parametrize("kind", ["categorical", "ordinal"])
def test_level_loss_is_the_label_nll(kind):
    rng = np.random.default_rng(5)
    w = K if kind == "categorical" else K - 1
    raw = rng.normal(0, 2, (2, 3, 5, w)).astype(np.float32)
    if kind == "ordinal":
        raw = np.sort(raw, axis=-1)[..., ::-1].copy()
    labels = rng.integers(0, K, (2, 3, 5)).astype(np.float32)
    mask = (rng.random((2, 3, 5)) > 0.3).astype(np.float32)
    aw = np.array([1.0, 0.5, 0.0, 2.0, 1.0], np.float32)
    out = level_sums(jnp.asarray(raw), jnp.asarray(labels), jnp.asarray(mask), jnp.asarray(aw), kind)
    p = np.asarray(heads.level_probs(jnp.asarray(raw), kind), np.float64)
    nll = -np.log(np.take_along_axis(p, labels.astype(int)[..., None], -1)[..., 0])
    np.testing.assert_allclose(float(out["num"]), (nll * mask * aw).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(out["den"]), (mask * aw).sum())
    ey = (p * np.arange(K)).sum(-1)
    np.testing.assert_allclose(np.asarray(out["attr_sq"]), (((ey - labels) ** 2) * mask).sum((0, 1)), rtol=1e-4)
