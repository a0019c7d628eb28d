"""attach_lora: the adapter-dropout rate a run trains with: ``lora.dropout`` for fresh adapters; an imported PEFT
adapter (``model.adapter``) keeps the lora_dropout of its adapter_config.json unless the run sets lora.dropout.
LoRA keys that would be ignored stop at setup (check_lora): model.adapter with other rank / alpha / targets,
lora.train_lm_head on tied embeddings. A LoRA base is read straight into lora.base_dtype."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rm_jax.core.config import load_config
from rm_jax.core.errors import ConfigError
from rm_jax.models.hf_io import load_hf_reward_model
from rm_jax.models.lora import add_adapters, export_peft_adapter
from rm_jax.models.sharding import make_mesh
from rm_jax.training.setup import attach_lora, check_model_path
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


# ---------------------------------------------------------------- LoRA keys that would be ignored stop the run


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["lora.alpha=8"], "lora.alpha=8"),  # the adapter's lora_alpha is 16 (export writes the run's)
        (["lora.targets=[q,k,v]"], "lora.targets"),  # the adapter's are q, v
        (["lora.rank=4"], "lora.rank=4"),  # the adapter's r is 2
        (["lora.rank=4", "lora.alpha=8"], "lora.rank=4 (adapter r=2); lora.alpha=8"),
    ],
)
def test_model_adapter_with_other_lora_keys_stops(base_and_adapter, overrides, named):
    d, base, adapter, mesh, lm = base_and_adapter
    cfg = load_config(TINY, [f"run_dir={d / 'run'}", f"model.path={base}", "model.arch={}", f"model.adapter={adapter}"])
    check_model_path(cfg)  # the adapter alone: no clash
    clash = load_config(TINY, [f"run_dir={d / 'run'}", f"model.path={base}", "model.arch={}",
                               f"model.adapter={adapter}", *overrides])  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape(named)) as e:
        check_model_path(clash)
    assert "\n" not in str(e.value) and "model.adapter=" in str(e.value)
    with pytest.raises(ConfigError, match=re.escape(named)):  # and in attach_lora, before anything is built
        attach_lora(clash, lm.cfg, lm.params, mesh)


def test_model_adapter_with_its_own_lora_values_runs(base_and_adapter):
    d, base, adapter, mesh, lm = base_and_adapter
    same = ["lora.rank=2", "lora.alpha=16", "lora.targets=[v,q]"]
    cfg = load_config(TINY, [f"run_dir={d / 'run'}", f"model.path={base}", "model.arch={}", f"model.adapter={adapter}",
                             *same])  # fmt: skip
    check_model_path(cfg)
    dcfg, _ = attach_lora(cfg, lm.cfg, lm.params, mesh)
    assert (dcfg.lora_rank, dcfg.lora_alpha, set(dcfg.lora_targets)) == (2, 16.0, {"q", "v"})


@pytest.mark.parametrize("tied", [True, False])
def test_train_lm_head_on_tied_embeddings_stops(tmp_path, tied):
    """lora.train_lm_head trains a policy's separate LM head; tied to the embeddings there is none to train."""
    from tests.helpers import make_hf_causal_lm_with_tokenizer

    make_hf_causal_lm_with_tokenizer("llama", str(tmp_path / "lm"), tied=tied)
    args = [f"model.path={tmp_path / 'lm'}", "model.arch={}", "task=sft", "lora.rank=2"]
    check_model_path(load_config(TINY, args))
    cfg = load_config(TINY, args + ["lora.train_lm_head=true"])
    if tied:
        with pytest.raises(ConfigError, match="lora.train_lm_head=true.*tie_word_embeddings"):
            check_model_path(cfg)
    else:
        check_model_path(cfg)
    check_model_path(load_config(TINY, args[:-1] + ["lora.train_lm_head=true"]))  # a full fine-tune trains it anyway


# ---------------------------------------------------------------- the base read straight into lora.base_dtype


def test_the_lora_base_is_read_in_its_storage_dtype(base_and_adapter, monkeypatch):
    """lora.base_dtype=bfloat16: every frozen tensor reaches the device already bfloat16 (never the whole base
    in float32), the head float32; the values are those of the float32 load cast; and plan's per-device
    parameter bytes are the loaded tree's."""
    from rm_jax.models import hf_io
    from rm_jax.models.lora import split_trainable
    from rm_jax.training.plan import plan
    from rm_jax.training.setup import build_model

    d, base, adapter, mesh, lm = base_and_adapter
    placed = []
    real = hf_io._place
    monkeypatch.setattr(hf_io, "_place", lambda w, s: placed.append((w.shape, w.dtype)) or real(w, s))
    args = [f"run_dir={d / 'run_bf16'}", f"model.path={base}", "model.arch={}", "lora.rank=2"]
    cfg = load_config(TINY, args + ["lora.base_dtype=bfloat16", "mesh.data=1", "mesh.fsdp=-1"])
    dcfg, params, _ = build_model(cfg, mesh, None)
    assert [shape for shape, dt in placed if dt == np.float32] == [lm.params["head_kernel"].shape]  # the head only
    assert {dt for _, dt in placed} == {np.dtype(np.float32), np.dtype(jnp.bfloat16)}
    train, frozen = split_trainable(dcfg, params)
    assert {a.dtype for a in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}
    assert {a.dtype for a in jax.tree.leaves(train)} == {jnp.dtype(jnp.float32)}
    _, want = split_trainable(dcfg, lm.params | {k: v for k, v in params.items() if k not in lm.params})
    for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))
    rep = plan(cfg, 1, 2**40, search=False)
    assert rep.at_config.params == sum(a.nbytes for a in jax.tree.leaves(params))
    assert rep.load_peak == rep.at_config.params + max(a.nbytes for a in jax.tree.leaves(params))
