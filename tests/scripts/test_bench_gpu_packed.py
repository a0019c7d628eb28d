"""scripts/bench_gpu.py's torch_packed baseline: packed rows with the per-document mask score every conversation
as if it ran alone (no attention across conversations), and the parent turns its throughput into
``ratio_vs_torch_packed`` and the ``auto_vs_torch_packed`` floor. CPU, the smoke model, sdpa with the dense
document mask (flex attention's compile takes a minute here; ``bench_gpu.sh --smoke`` checks it too)."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(ROOT, "scripts"))  # how the scripts themselves find bench_common

import bench_gpu  # noqa: E402


def smoke_args() -> argparse.Namespace:
    return argparse.Namespace(smoke=True, seed=0, seq_len=256, rows=2, max_segments=16, warmup=2, steps=2)


@pytest.fixture(scope="module")
def trainer() -> bench_gpu._TorchPacked:
    return bench_gpu._TorchPacked(smoke_args(), "sdpa")


def test_packed_scores_equal_each_conversation_alone(trainer):
    a = smoke_args()
    b = bench_gpu.check_batch(a, bench_gpu.arch(True)["vocab_size"])
    seg = b["segment_ids"][0]
    assert [len(set(r[r > 0].tolist())) for r in seg] == [3, 6] and (seg[:, -1] == 0).all()  # packed, padded
    assert bench_gpu.check_packed_vs_alone(trainer, b, "sdpa") <= 1e-4
    assert trainer.impl == "sdpa"  # the check restores the timed implementation


def test_a_mask_without_documents_is_caught(trainer, monkeypatch):
    # Causal over the whole row: later conversations see earlier ones, so their scores move.
    monkeypatch.setattr(bench_gpu, "_doc_mask_mod", lambda seg: lambda b, h, q, kv: q >= kv)
    b = bench_gpu.check_batch(smoke_args(), bench_gpu.arch(True)["vocab_size"])
    with pytest.raises(AssertionError, match="differ from each conversation alone"):
        bench_gpu.check_packed_vs_alone(trainer, b, "sdpa")


def test_packed_step_trains(trainer):
    a = smoke_args()
    batches, _ = bench_gpu.packed_batches(a, bench_gpu.arch(True)["vocab_size"])
    x = trainer.tensors(batches[0])
    n = int(batches[0]["label_mask"][0].any(-1).sum())
    assert x["row"].shape == x["tok"].shape == (n,) and x["labels"].shape == (n, 5)
    before = trainer.model.score.weight.detach().clone()
    assert trainer.step_packed(x) > 0
    assert not np.allclose(before.numpy(), trainer.model.score.weight.detach().numpy())


def test_derive_ratio_and_floor_against_the_packed_baseline():
    res = {
        "sections": {
            "rm_jax:auto": {"tokens_per_s": 100.0, "real_tokens_per_s": 90.0, "flops_per_token": 1e9},
            "torch_packed": {"tokens_per_s": 80.0, "real_tokens_per_s": 72.0},
        }
    }
    bench_gpu.derive(res)
    assert res["sections"]["rm_jax:auto"]["ratio_vs_torch_packed"] == pytest.approx(1.25)
    assert res["floors"]["auto_vs_torch_packed"] == {"value": pytest.approx(1.25), "floor": 1.3, "met": False}
    assert "| torch_packed |" in bench_gpu.table(res)
