"""`rm-jax plan`: architecture lookup, per-device figures that follow the parameter count and the mesh, LoRA's
smaller optimizer state, the fit decision and the largest-batch search."""

from __future__ import annotations

import pytest

from rm_jax.cli import main
from rm_jax.core.config import load_config
from rm_jax.core.errors import ConfigError
from rm_jax.training.plan import hf_architecture, largest_batch, parse_bytes, plan, planned_decoder
from tests.helpers import TINY

SMALL = ["mesh.data=1", "mesh.fsdp=-1", "train.batch_rows=4", "data.seq_len=64"]


def test_parse_bytes():
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("141GB") == 141 * 10**9
    assert parse_bytes("96G") == 96 * 2**30
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1000") == 1000
    with pytest.raises(ConfigError, match="80GiB"):
        parse_bytes("lots")


@pytest.mark.parametrize("limit_rows", [1, 3, 4, 36, 37, 100, 4096, 10**6])
@pytest.mark.parametrize("start", [4, 32, 64])
def test_largest_batch_finds_the_threshold(limit_rows, start):
    calls = []

    def fits(rows):
        calls.append(rows)
        return rows <= limit_rows

    got = largest_batch(fits, 4, start, 4096)
    want = min(limit_rows // 4 * 4, 4096)
    assert got == (want or None)
    assert all(r % 4 == 0 and r <= 4096 for r in calls)
    assert len(calls) <= 2 * 11 + 2  # doubling, then bisection: logarithmic


def test_known_models_table():
    hf, where = hf_architecture("meta-llama/Meta-Llama-3-70B")
    assert "table" in where
    cfg = load_config(TINY, ["model.path=meta-llama/Meta-Llama-3-70B", "model.arch={}"])
    dcfg, _ = planned_decoder(cfg)
    # Llama 3 70B: 70.55B parameters in its LM form; the reward model swaps the 1.05B LM head for 5 x 8192.
    assert dcfg.num_hidden_layers == 80 and abs(dcfg.num_params() - 69.5e9) < 0.05e9
    with pytest.raises(ConfigError, match="no local folder"):
        hf_architecture("nobody/no-such-model")


def test_plan_figures_follow_the_model_and_mesh():
    cfg = load_config(TINY, SMALL)
    one = plan(cfg, 1, 2**40, search=False)
    two = plan(cfg, 2, 2**40, search=False)
    n = one.dcfg.num_params()
    assert one.at_config.params == n * 4  # float32, all on one device
    assert one.at_config.optimizer >= 2 * n * 4  # AdamW's two moments
    assert one.at_config.gradients == n * 4
    # fsdp over 2 devices halves every matrix whose embed axis divides (norms stay whole)
    assert 0.5 * n * 4 <= two.at_config.params < 0.6 * n * 4
    assert one.fits and one.at_config.total >= one.at_config.params + one.at_config.optimizer
    assert one.at_config.temporaries > 0


def test_plan_lora_and_batch_search(tmp_path):
    from tests.helpers import make_hf_rm_with_tokenizer

    base = str(tmp_path / "base")
    make_hf_rm_with_tokenizer("llama", base)
    full = load_config(TINY, SMALL + [f"model.path={base}", "model.arch={}"])
    lora = load_config(TINY, SMALL + [f"model.path={base}", "model.arch={}", "lora.rank=2", "lora.base_dtype=bfloat16"])
    f, lo = plan(full, 1, 2**40, search=False), plan(lora, 1, 2**40, search=False)
    n = f.dcfg.num_params()
    assert lo.dcfg.lora_rank == 2
    assert lo.at_config.optimizer < 0.2 * f.at_config.optimizer  # moments for adapters + head only
    assert lo.at_config.params < 0.6 * f.at_config.params  # a bfloat16 base
    assert lo.at_config.gradients < 0.2 * n * 4


def test_plan_batch_search_answers_the_threshold():
    """A device exactly as large as the step at 32 rows: the answer fits and one row more does not.
    (XLA:CPU's totals are not monotone row by row at this tiny width, so the bounds are loose.)"""
    at = {r: plan(load_config(TINY, SMALL + [f"train.batch_rows={r}"]), 1, 2**40, search=False) for r in (4, 32)}
    mem = at[32].at_config.total
    assert at[4].at_config.total < mem  # the activations grow with the rows
    rep = plan(load_config(TINY, SMALL), 1, mem, search=True, max_rows=256)
    best = rep.largest_batch_rows
    assert best is not None and 32 <= best < 64 and rep.fits
    nxt = plan(load_config(TINY, SMALL + [f"train.batch_rows={best + 1}"]), 1, 2**40, search=False)
    assert nxt.at_config.total > mem
    none = plan(load_config(TINY, SMALL), 1, 1000, search=True, max_rows=64)
    assert none.largest_batch_rows is None and not none.fits


def test_plan_cli(capsys):
    assert main(["plan", TINY, "--devices", "2", "--device-memory", "1GiB", "--no-search", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "per device" in out and "fits" in out and "'fsdp': 2" in out
