"""attach_lora: the adapter-dropout rate a run trains with: ``lora.dropout`` for fresh adapters; an imported PEFT
adapter (``model.adapter``) keeps the lora_dropout of its adapter_config.json unless the run sets lora.dropout."""

from __future__ import annotations

import jax
import pytest

from rm_jax.core.config import load_config
from rm_jax.models.hf_io import load_hf_reward_model
from rm_jax.models.lora import add_adapters, export_peft_adapter
from rm_jax.models.sharding import make_mesh
from rm_jax.training.setup import attach_lora
from tests.helpers import TINY, make_hf_rm_with_tokenizer


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    """A tiny HF reward model and a rank-2 PEFT adapter for it whose lora_dropout is 0.05."""
    d = tmp_path_factory.mktemp("setup_lora")
    base = str(d / "base")
    make_hf_rm_with_tokenizer("llama", base)
    mesh = make_mesh(devices=jax.devices()[:1])
    lm = load_hf_reward_model(base, mesh)
    cfg = lm.cfg.replace(lora_rank=2, lora_dropout=0.05, lora_targets=("q", "v"))
    adapter = export_peft_adapter(cfg, add_adapters(lm.params, cfg, mesh), str(d / "adapter"), base)
    return d, base, adapter, mesh, lm


@pytest.mark.parametrize(
    "overrides,rate",
    [
        (["lora.rank=2"], 0.0),
        (["lora.rank=2", "lora.dropout=0.1"], 0.1),
        (["model.adapter={adapter}"], 0.05),  # the adapter's own rate
        (["model.adapter={adapter}", "lora.dropout=0.2"], 0.2),  # the run's, when it sets one
    ],
)
def test_the_dropout_rate_a_lora_run_trains_with(base_and_adapter, overrides, rate):
    d, base, adapter, mesh, lm = base_and_adapter
    args = [f"run_dir={d / 'run'}", f"model.path={base}", "model.arch={}"]
    cfg = load_config(TINY, args + [o.format(adapter=adapter) for o in overrides])
    dcfg, _ = attach_lora(cfg, lm.cfg, lm.params, mesh)
    assert dcfg.lora_rank == 2 and dcfg.lora_dropout == rate
