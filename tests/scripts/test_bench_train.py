"""scripts/bench_train.py's LoRA mode (--lora-rank): both trainers train the same thing, so the CPU ratio
compares like with like: rm_jax's LoRA state and peft's model hold the same trainable parameters (adapters of
rank R on the seven projections plus the score head), and the frozen base does not move on either side."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))

from bench_common import bench_model_config  # noqa: E402
from bench_train import JaxTrainer, TorchTrainer, fixed_batch  # noqa: E402

pytest.importorskip("peft")

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)  # fmt: skip


def _count(tree) -> int:
    import jax

    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def test_lora_mode_trains_the_same_parameters_on_both_sides():
    import jax

    from rm_jax.models.lora import split_trainable

    cfg = bench_model_config(**TINY).replace(lora_rank=4, lora_alpha=8.0)
    jt, tt = JaxTrainer(cfg, 4), TorchTrainer(cfg)
    trainable, frozen = split_trainable(cfg, jt.state["params"])
    torch_trainable = sum(p.numel() for p in tt.model.parameters() if p.requires_grad)
    # per layer: q (64->64), k, v (64->32), o (64->64), gate, up (64->128), down (128->64); A: r x in, B: out x r
    shapes = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]
    adapters = 2 * sum(4 * (i + o) for i, o in shapes)
    assert _count(trainable) == torch_trainable == adapters + 64 * 5  # the score head: hidden x 5, no bias
    assert tt.peft is not None

    before = jax.device_get(jt.state["params"])
    b, (ids, am, labels) = fixed_batch(np.random.default_rng(0), 2, 32, cfg.vocab_size, 4)
    jt.step(b)
    tt.step(ids, am, labels)
    after = jax.device_get(jt.state["params"])
    moved, kept = split_trainable(cfg, after)
    _, frozen_before = split_trainable(cfg, before)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(kept), jax.tree.leaves(frozen_before)))
    tb, _ = split_trainable(cfg, before)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(moved), jax.tree.leaves(tb)))
