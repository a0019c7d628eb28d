"""The MFU arithmetic of scripts/bench_gpu.py (it lives in scripts/bench_common.py, the benchmarks' shared
helper): which peak it divides by, and the data-sheet table, against the H200 run in docs/performance.md."""

from __future__ import annotations

import os
import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))  # how the scripts themselves find it

from bench_common import matmul_peaks, mfu_figures, spec_bf16_flops  # noqa: E402

# The 2026-12-04 H200 run: `auto` 83,475 tok/s at 555 model TFLOP/s; jnp.dot 643.8, torch.matmul ~788 TFLOP/s.
TOKENS_PER_S = 83_475
FLOPS_PER_TOKEN = 555e12 / TOKENS_PER_S


def test_divides_by_the_highest_measured_rate_and_by_the_data_sheet():
    peaks = matmul_peaks(643.8e12, 788e12, "NVIDIA H200")
    assert peaks["measured_by"] == "torch.matmul" and peaks["measured_flops"] == 788e12
    assert peaks["spec_flops"] == 989e12
    got = mfu_figures(TOKENS_PER_S, FLOPS_PER_TOKEN, peaks)
    assert got["model_flops"] == pytest.approx(555e12)
    assert got["mfu"] == pytest.approx(555 / 788)  # 70.4%, not the 86.1% of the weaker jnp.dot figure
    assert got["mfu_spec"] == pytest.approx(555 / 989)  # 56.1%, the docs' "vs spec" column
    # jnp.dot ahead of torch (or torch absent): jnp.dot's rate.
    assert matmul_peaks(700e12, 650e12, "NVIDIA H200")["measured_by"] == "jnp.dot"
    only_jax = matmul_peaks(643.8e12, None, "NVIDIA H100 80GB HBM3")
    assert only_jax["measured_flops"] == 643.8e12 and only_jax["spec_flops"] == 989e12


def test_unknown_cards_get_no_spec_mfu_and_say_why():
    for name in ("NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB", "cpu", ""):  # a PCIe H100 is 756, not 989
        spec, note = spec_bf16_flops(name)
        assert spec is None and "spec MFU not given" in note, name
    got = mfu_figures(TOKENS_PER_S, FLOPS_PER_TOKEN, matmul_peaks(300e12, None, "NVIDIA H100 PCIe"))
    assert got["mfu_spec"] is None and got["mfu"] == pytest.approx(555 / 300)
    none = mfu_figures(TOKENS_PER_S, FLOPS_PER_TOKEN, matmul_peaks(None, None, "cpu"))
    assert none["mfu"] is None and none["mfu_spec"] is None


def test_new_train_state_puts_the_optimizer_state_where_the_option_says():
    """full_ft:adamw_host: the bench's state has its optimizer state in pinned host memory, as a run's has."""
    import jax
    from bench_common import new_train_state

    from rm_jax.core.config import TrainConfig
    from rm_jax.engine.train_step import make_optimizer
    from rm_jax.models.llama import DecoderConfig
    from rm_jax.models.sharding import make_mesh
    from tests.helpers import TINY_DECODER

    if "pinned_host" not in [m.kind for m in jax.devices()[0].addressable_memories()]:
        pytest.skip("this backend has no pinned_host memory")
    cfg, mesh = DecoderConfig(**TINY_DECODER, num_labels=5), make_mesh(devices=jax.devices()[:1])
    tx = make_optimizer(TrainConfig(), 10)
    for memory, kind in (("device", "device"), ("host", "pinned_host")):
        state, shard = new_train_state(cfg, tx, mesh, 0, memory)
        assert {x.sharding.memory_kind for x in jax.tree.leaves(state["opt_state"])} == {kind}
        assert {s.memory_kind for s in jax.tree.leaves(shard["opt_state"])} == {kind}
        assert {x.sharding.memory_kind for x in jax.tree.leaves(state["params"])} == {"device"}
