"""The joint objective of ``task: rm`` (loss.pair_weight = lambda > 0): the first step's loss equals the
pointwise part plus lambda times Bradley-Terry on the responses to one prompt, both recomputed here in numpy
(float64) from the same forward outputs, with the pairs found again from the batch's labels and groups; the
logged pair loss and pair accuracy are those numbers too. Two micro-batches, so the step-wide normalisation
of both parts is checked as well."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from rm_jax.core.attributes import ATTRIBUTES, resolve_reward_weights
from rm_jax.core.config import LossConfig, TrainConfig
from rm_jax.data.pipeline import Encoded, Loader, prompt_pair_units
from rm_jax.engine.train_step import create_state, lr_schedule, make_optimizer, make_train_step, step_inputs
from rm_jax.models import init_params
from rm_jax.models.llama import DecoderConfig, RewardModel
from rm_jax.models.sharding import make_mesh
from tests.helpers import TINY_DECODER

LAMBDA = 0.7
MAX_SEGMENTS = 8


def _encoded() -> Encoded:
    """Prompts of 2 responses (some tied on helpfulness, one with it missing), one of 3 and one of 1."""
    rng = np.random.default_rng(3)
    sizes = [2, 2, 3, 2, 1, 2, 2, 2]
    group = np.repeat(np.arange(len(sizes)), sizes)
    n = len(group)
    labels = rng.integers(0, 5, size=(n, 5)).astype(np.float32)
    labels[:, 0] = [4, 1, 2, 2, 0, 3, 1, 2, 4, 3, 1, 3, 0, 4, 2, 1]  # prompt 1 is a tie: no pair
    mask = np.ones_like(labels)
    mask[10, 0] = 0.0  # helpfulness missing: prompt 5 has no pair
    mask[11, 3] = 0.0
    ids = [rng.integers(1, 97, size=int(rng.integers(5, 14))).astype(np.int32) for _ in range(n)]
    enc = Encoded(
        ids=ids,
        labels=labels,
        label_mask=mask,
        units=[(i,) for i in range(n)],
        source_rows=np.arange(n),
        group=group,
        strength=np.ones(n, np.float32),
    )
    return prompt_pair_units(enc, 0)


def _log_levels(raw: np.ndarray, kind: str) -> np.ndarray:
    if kind == "categorical":
        x = raw - raw.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    s = 1.0 / (1.0 + np.exp(-raw))  # P(y > k)
    p = np.concatenate([1.0 - s[..., :1], s[..., :-1] - s[..., 1:], s[..., -1:]], axis=-1)
    return np.log(p)


def _expected(raw: np.ndarray, kind: str) -> np.ndarray:
    if kind == "regression":
        return raw
    return (np.exp(_log_levels(raw, kind)) * np.arange(5)).sum(-1)


def _reference(cfg: DecoderConfig, params, batch: dict, enc: Encoded, separate: bool) -> dict:
    """Pointwise loss, BT and accuracy of the whole step, in numpy from RewardModel's outputs."""
    kind = cfg.attribute_head
    w_attr = np.ones(5)
    w_reward = resolve_reward_weights("helpfulness-only", ATTRIBUTES)
    point_num = point_den = 0.0
    bt, correct = [], []
    for m in range(batch["input_ids"].shape[0]):
        raw, reward = RewardModel(cfg).apply(
            {"params": params},
            batch["input_ids"][m],
            batch["segment_ids"][m],
            batch["positions"][m],
            max_segments=MAX_SEGMENTS,
            output="raw_reward",
        )
        raw = np.asarray(raw, np.float64)
        y, mask = batch["labels"][m].astype(np.float64), batch["label_mask"][m].astype(np.float64)
        if kind == "regression":
            per = (raw - y) ** 2
        else:
            per = -np.take_along_axis(_log_levels(raw, kind), y.astype(int)[..., None], -1)[..., 0]
        point_num += (per * mask * w_attr).sum()
        point_den += (mask * w_attr).sum()
        r = np.asarray(reward, np.float64) if separate else _expected(raw, kind) @ w_reward
        # Pairs found again: two slots of this micro-batch holding responses to one prompt, helpfulness known
        # on both and different; the higher label is chosen.
        idx = batch["example_index"][m].reshape(-1)
        r, slots = r.reshape(-1), np.flatnonzero(idx >= 0)
        for a in slots:
            for b in slots:
                ea, eb = idx[a], idx[b]
                if enc.group[ea] != enc.group[eb] or not (enc.label_mask[ea, 0] and enc.label_mask[eb, 0]):
                    continue
                if enc.labels[ea, 0] > enc.labels[eb, 0]:
                    d = r[a] - r[b]
                    bt.append(np.log1p(np.exp(-d)))
                    correct.append(d > 0)
    point = point_num / point_den
    return {"point": point, "bt": float(np.mean(bt)), "acc": float(np.mean(correct)), "pairs": len(bt)}


@pytest.mark.parametrize(
    "kind,target",
    [("categorical", "attributes"), ("ordinal", "separate")],  # E[y] @ reward_weights / the separate output
)
def test_first_step_loss_is_pointwise_plus_lambda_bt(kind, target):
    separate = target == "separate"
    cfg = DecoderConfig(**TINY_DECODER, num_labels=5, attribute_head=kind, reward_head=separate)
    mesh = make_mesh(devices=jax.devices()[:1])
    params = init_params(cfg, mesh, 4)
    ref_params = jax.tree.map(np.asarray, params)  # the state below takes (donates) params
    enc = _encoded()
    loader = Loader(enc, 64, MAX_SEGMENTS, 2, pad_id=0, seed=1)
    batch = loader.next_step(2)  # two micro-batches of 2 rows
    ref = _reference(cfg, ref_params, batch, enc, separate)
    assert ref["pairs"] >= 3 and int(batch["pair_mask"].sum()) == ref["pairs"]

    tc = TrainConfig(lr=1e-3, warmup_steps=0)
    tx = make_optimizer(tc, 10)
    state, _ = create_state(cfg, tx, mesh, params)
    loss_cfg = LossConfig(pair_weight=LAMBDA, pair_target=target)
    step = jax.jit(make_train_step(cfg, loss_cfg, tx, MAX_SEGMENTS, lr_schedule(tc, 10), mesh, attributes=ATTRIBUTES))
    _, m = step(state, step_inputs(batch))
    assert bool(m["ok"])
    np.testing.assert_allclose(float(m["loss"]), ref["point"] + LAMBDA * ref["bt"], rtol=1e-5)
    np.testing.assert_allclose(float(m["pointwise_loss"]), ref["point"], rtol=1e-5)
    np.testing.assert_allclose(float(m["pair_loss"]), ref["bt"], rtol=1e-5)
    np.testing.assert_allclose(float(m["pair_accuracy"]), ref["acc"], atol=1e-6)
    assert int(m["pairs"]) == ref["pairs"]


def test_separate_reward_is_a_last_output_column():
    cfg = DecoderConfig(**TINY_DECODER, num_labels=5, attribute_head="categorical", reward_head=True)
    params = init_params(cfg, make_mesh(devices=jax.devices()[:1]), 0)
    batch = Loader(_encoded(), 64, MAX_SEGMENTS, 2, pad_id=0).next_step(1)
    args = (batch["input_ids"][0], batch["segment_ids"][0], batch["positions"][0])
    attrs = np.asarray(RewardModel(cfg).apply({"params": params}, *args, max_segments=MAX_SEGMENTS))
    raw, reward = RewardModel(cfg).apply({"params": params}, *args, max_segments=MAX_SEGMENTS, output="raw_reward")
    here = batch["example_index"][0] >= 0
    assert attrs.shape[-1] == 6
    np.testing.assert_allclose(attrs[..., 5], np.asarray(reward), atol=1e-6)
    ey = _expected(np.asarray(raw, np.float64), "categorical")
    np.testing.assert_allclose(attrs[here][:, :5], ey[here], atol=1e-5)
