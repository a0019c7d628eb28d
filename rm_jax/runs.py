"""Load a reward model for scoring from either an HF folder or an rm_jax run folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import jax
from jax.sharding import Mesh

from rm_jax.conversation import resolve_template
from rm_jax.hf_io import export_hf, load_hf_reward_model, load_tokenizer
from rm_jax.models.llama import DecoderConfig
from rm_jax.sharding import make_mesh


@dataclass
class ScoringModel:
    cfg: DecoderConfig
    params: Any
    attributes: list[str]
    tokenizer: Any
    template: Optional[str]  # a built-in name or None (the tokenizer's own)
    mesh: Mesh
    hf_config: Optional[dict] = None

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0


def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model_meta.json"))


def load_scoring_model(path: str, mesh: Optional[Mesh] = None, dtype: str = "float32",
                       template: Optional[str] = None, step: Optional[int] = None) -> ScoringModel:
    """``path``: an HF ``*ForSequenceClassification`` folder or an rm_jax run folder (its kept checkpoint)."""
    mesh = mesh or make_mesh(devices=jax.devices()[:1])
    if is_run_dir(path):
        from rm_jax.train import read_meta, restore_run_params
        meta = read_meta(path)
        cfg = DecoderConfig(**meta["decoder"], dtype=dtype)
        params = restore_run_params(path, cfg, mesh, step)
        tok = load_tokenizer(meta["tokenizer"])
        return ScoringModel(cfg, params, list(meta["attributes"]), tok, template or meta.get("template"), mesh,
                            meta.get("hf_config"))
    lm = load_hf_reward_model(path, mesh, dtype=dtype)
    return ScoringModel(lm.cfg, lm.params, lm.attribute_names, load_tokenizer(lm.path), template, mesh, lm.hf_config)


def export_run(run_dir: str, out_dir: str, step: Optional[int] = None) -> str:
    """A run's kept checkpoint -> an HF ``*ForSequenceClassification`` folder whose tokenizer carries the
    chat template the run trained with, so transformers' apply_chat_template gives the same ids."""
    if not is_run_dir(run_dir):
        raise FileNotFoundError(f"{run_dir}: not an rm_jax run folder (no model_meta.json)")
    m = load_scoring_model(run_dir, step=step)
    m.tokenizer.chat_template = resolve_template(m.tokenizer, m.template)
    out = export_hf(m.cfg, m.params, out_dir, m.attributes, m.tokenizer, m.hf_config)
    check_exported_tokenizer(m.tokenizer, out)
    return out


PROBE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 plus 30?"},
         {"role": "assistant", "content": "12 plus 30 is 42.\nAnything else?"}]


def check_exported_tokenizer(tokenizer: Any, out_dir: str) -> None:
    """transformers may pick a tokenizer class from config.json's model_type (e.g. Qwen2's digit
    splitting) that encodes differently from the tokenizer the run trained with: refuse such an export."""
    reloaded = load_tokenizer(out_dir)
    a = tokenizer.apply_chat_template(PROBE, tokenize=True, return_dict=False)
    b = reloaded.apply_chat_template(PROBE, tokenize=True, return_dict=False)
    if list(a) != list(b):
        raise ValueError(f"{out_dir}: transformers loads the exported tokenizer as {type(reloaded).__name__}, which "
                         f"encodes differently from the tokenizer this run trained with; use a tokenizer made for "
                         f"this model family (the export is left in place for inspection)")
