"""model.matmul_precision reaches every dot of the model, forward and backward.

The CPU computes float32 dots exactly at any precision setting, so a number comparison here would
pass even if the setting were lost; what a GPU (TF32 by default) or a TPU (one bfloat16 pass) would
do is decided by the precision attribute in the program, which is what these tests read."""

from __future__ import annotations

import re
from collections import Counter

import jax
import jax.numpy as jnp
import pytest

from rm_jax.models import RewardModel, abstract_params
from rm_jax.models.llama import DecoderConfig
from rm_jax.models.precision import resolve_precision


def _cfg(**kw) -> DecoderConfig:
    base = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        attention="xla",
        attention_block=8,
    )
    base.update(kw)
    return DecoderConfig(**base)


def _dot_precisions(cfg: DecoderConfig, seq: int = 16) -> Counter:
    """Precision of every dot_general in the lowered gradient of the model's scores."""
    ids = jax.ShapeDtypeStruct((2, seq), jnp.int32)

    def loss(p, i, s, pos):
        return jnp.sum(RewardModel(cfg).apply({"params": p}, i, s, pos, max_segments=2))

    text = jax.jit(jax.grad(loss)).lower(abstract_params(cfg), ids, ids, ids).as_text()
    dots = [line for line in text.split("\n") if "stablehlo.dot_general" in line]
    found = [re.search(r"precision = \[(\w+), (\w+)\]", d) for d in dots]
    return Counter(m.groups() if m else ("none", "none") for m in found)


def test_none_resolves_from_the_dtype():
    assert resolve_precision(None, "float32") == jax.lax.Precision.HIGHEST
    assert resolve_precision(None, "bfloat16") == jax.lax.Precision.DEFAULT
    assert resolve_precision("high", "float32") == jax.lax.Precision.HIGH
    with pytest.raises(ValueError, match="matmul_precision"):
        DecoderConfig(matmul_precision="tf32")


@pytest.mark.parametrize(
    "dtype,setting,want",
    [
        ("float32", None, "HIGHEST"),  # scoring / parity: no TF32 on a GPU
        ("bfloat16", None, "DEFAULT"),  # training: the tensor cores' native pass
        ("bfloat16", "highest", "HIGHEST"),
        ("float32", "high", "HIGH"),
    ],
)
@pytest.mark.parametrize("scan", [False, True])
def test_every_dot_of_the_model_carries_the_precision(dtype, setting, want, scan):
    got = _dot_precisions(_cfg(dtype=dtype, matmul_precision=setting, scan_layers=scan, remat="full"))
    # Not vacuous: projections, MLP, the attention kernel's forward and backward, the pooled last
    # layer and the head, each with its transposes, are dots.
    assert sum(got.values()) >= 60, got
    assert got == Counter({(want, want): sum(got.values())}), got


def test_splash_kernel_dots_follow_the_setting():
    """Pallas splash calls dot_general without a precision; it is run under the model's setting."""
    got = _dot_precisions(_cfg(dtype="float32", attention="splash"))
    assert sum(got.values()) >= 60 and set(got) == {("HIGHEST", "HIGHEST")}, got
