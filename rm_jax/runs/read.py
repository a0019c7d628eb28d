"""Run folders, read: what a finished (or interrupted) run left behind, below training and evaluation.

``model_meta.json`` (architecture, attributes, tokenizer), the parameters of its kept checkpoint,
a scoring model from either a run folder or an HF folder, and export to an HF folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import jax
from jax.sharding import Mesh

from rm_jax.core.attributes import REWARD_HEAD
from rm_jax.core.config import CheckpointConfig
from rm_jax.core.console import get_logger
from rm_jax.core.errors import CheckpointError, ConfigError, InputError, ModelLoadError
from rm_jax.core.files import read_json
from rm_jax.data.conversation import resolve_template
from rm_jax.engine.checkpoint import Checkpointer, abstract_with_shardings
from rm_jax.models import abstract_params, param_shardings_for, relayout_params
from rm_jax.models.hf_io import (
    export_hf,
    export_hf_causal_lm,
    load_hf_reward_model,
    load_tokenizer,
    read_hf_config,
    resolve_model_dir,
)
from rm_jax.models.llama import DecoderConfig
from rm_jax.models.lora import (
    ADAPTER_CONFIG,
    export_peft_adapter,
    import_peft_adapter,
    merge_adapters,
    peft_attribute_names,
    read_base_identity,
    read_peft_config,
)
from rm_jax.models.sharding import make_mesh
from rm_jax.runs import layout

logger = get_logger("runs")
META = layout.MODEL_META  # kept for callers that name it through this module


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
    return os.path.isfile(layout.meta_path(path))


def read_meta(run_dir: str) -> dict:
    return read_json(layout.meta_path(run_dir), f"{run_dir}: not an rm_jax run folder (no {META})", ConfigError)


def restore_run_params(run_dir: str, dcfg: DecoderConfig, mesh: Any, step: Optional[int] = None) -> Any:
    """Parameters of a run's best checkpoint (else its latest), placed on ``mesh`` in ``dcfg``'s layer layout
    (whatever layout the run trained with), for either head. Without an explicit ``step``, an unreadable
    kept checkpoint falls back to the newest readable one, and says so."""
    trained = _trained_scan_layers(run_dir)
    if trained is not None and trained != dcfg.scan_layers:  # read the layout it was saved in, then convert
        stored = restore_run_params(run_dir, dcfg.replace(scan_layers=trained), mesh, step)
        return relayout_params(stored, dcfg, mesh)
    ck = Checkpointer(layout.checkpoints_dir(run_dir), CheckpointConfig(async_save=False))
    try:
        target = abstract_with_shardings(abstract_params(dcfg), param_shardings_for(dcfg, mesh))
        if step is not None:
            if step not in ck.all_steps():
                raise CheckpointError(f"{run_dir}: no checkpoint at step {step} (steps: {ck.all_steps() or 'none'})")
            return ck.restore_params(step, target)
        kept = ck.best_step() or ck.latest_step()
        if kept is None:
            raise CheckpointError(f"{run_dir}: has no checkpoint")
        order = [kept] + [s for s in sorted(ck.all_steps(), reverse=True) if s != kept]
        # Reading a run never changes it: no quarantine here.
        return ck.first_readable(order, lambda s: ck.restore_params(s, target), logger.info, quarantine=False)[1]
    finally:
        ck.close()


def _trained_scan_layers(run_dir: str) -> Optional[bool]:
    """The layer layout a run's checkpoints hold (``model.scan_layers`` of its config.yaml: a run option,
    so model_meta.json does not record it); None when the run has no config.yaml."""
    path = layout.config_path(run_dir)
    if not os.path.isfile(path):
        return None
    import yaml

    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    return bool((cfg.get("model") or {}).get("scan_layers", False))


def load_run(path: str, mesh: Any, dtype: str = "float32", step: Optional[int] = None, **run_options: Any) -> tuple:
    """(decoder config, params on ``mesh``, meta, tokenizer) of a run folder's kept checkpoint (a reward
    model or a causal LM: ``meta["decoder"]["head"]``). run_options are DecoderConfig run fields
    (remat, scan_layers, attention, ...), applied before the parameters are laid out."""
    meta = read_meta(path)
    cfg = DecoderConfig(**{**meta["decoder"], "dtype": dtype, **run_options})
    return cfg, restore_run_params(path, cfg, mesh, step), meta, load_tokenizer(meta["tokenizer"])


def load_scoring_model(
    path: str,
    mesh: Optional[Mesh] = None,
    dtype: str = "float32",
    template: Optional[str] = None,
    step: Optional[int] = None,
) -> ScoringModel:
    """``path``: an HF ``*ForSequenceClassification`` folder, an rm_jax run folder (its kept checkpoint), or a
    PEFT LoRA adapter folder (applied to the base its adapter_config.json names)."""
    mesh = mesh or make_mesh(devices=jax.devices()[:1])
    if is_run_dir(path):
        if read_meta(path).get("decoder", {}).get("head", "reward") != "reward":
            raise ConfigError(
                f"{path}: a policy run (task {read_meta(path).get('task')}); scoring needs a reward model"
            )
        cfg, params, meta, tok = load_run(path, mesh, dtype, step)
        return ScoringModel(
            cfg,
            params,
            output_names(cfg, meta["attributes"]),
            tok,
            template or meta.get("template"),
            mesh,
            meta.get("hf_config"),
        )
    if step is not None:
        raise InputError(f"step {step} asked of {path}, which is not an rm_jax run folder (an HF folder has no steps)")
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):  # a PEFT LoRA adapter: on its base
        return _load_adapter(path, mesh, dtype, template)
    lm = load_hf_reward_model(path, mesh, dtype=dtype)
    names = output_names(lm.cfg, lm.attribute_names)
    return ScoringModel(lm.cfg, lm.params, names, load_tokenizer(lm.path), template, mesh, lm.hf_config)


def output_names(cfg: DecoderConfig, attributes: Any) -> list[str]:
    """The names of a reward model's output columns: its attributes, then ``reward_head`` for a separate
    reward output (so ``--weights reward_head`` picks it, and every other weighting gives it 0)."""
    return list(attributes) + ([REWARD_HEAD] if cfg.reward_head else [])


def _load_adapter(path: str, mesh: Mesh, dtype: str, template: Optional[str]) -> ScoringModel:
    """A PEFT LoRA adapter folder on the base its adapter_config.json names, with the head and attribute names
    the adapter brings (:func:`rm_jax.models.lora.peft_attribute_names`); its own tokenizer when it has one
    (an ``rm-jax export --adapter`` folder carries the run's, chat template included), else the base's."""
    base = read_peft_config(path).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{path}: {ADAPTER_CONFIG} names no base_model_name_or_path")
    base_dir = resolve_model_dir(base)
    names = peft_attribute_names(path, read_hf_config(base_dir), base)
    lm = load_hf_reward_model(base_dir, mesh, dtype=dtype, attribute_names=names)
    cfg, params = import_peft_adapter(lm.cfg, lm.params, path, mesh)
    own_tokenizer = os.path.isfile(os.path.join(path, "tokenizer_config.json"))
    tok = load_tokenizer(path if own_tokenizer else lm.path)
    return ScoringModel(cfg, params, output_names(cfg, names), tok, template, mesh, lm.hf_config)


def adapter_base_name(run_dir: str, recorded: str) -> str:
    """``base_model_name_or_path`` for a LoRA run's PEFT export: the run's ``model.path`` as given (a hub id
    stays a hub id, not the cache snapshot it was read from; a local path stays as typed while it still names
    the recorded base from here), else the recorded absolute path."""
    given = _run_model_path(run_dir)
    if not given:
        return recorded
    if os.path.isdir(given) and os.path.realpath(given) == os.path.realpath(recorded):
        return given
    hub = re.search(r"models--([^/]+)--([^/]+)/snapshots/", recorded)  # the HF cache's layout for hub id org/name
    if hub and given == f"{hub.group(1)}/{hub.group(2)}":
        return given
    return recorded


def _run_model_path(run_dir: str) -> Optional[str]:
    path = layout.config_path(run_dir)
    if not os.path.isfile(path):
        return None
    import yaml

    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    given = (cfg.get("model") or {}).get("path")
    return str(given) if given else None


def export_run(run_dir: str, out_dir: str, step: Optional[int] = None, adapter: bool = False) -> str:
    """A run's kept checkpoint -> an HF folder: ``*ForSequenceClassification`` for a reward model (its
    config.json also records the per-attribute validation RMSE, which SteerLM 2.0 labelling uses),
    ``*ForCausalLM`` for a policy. Its tokenizer carries the chat template the run trained with, so
    transformers' apply_chat_template gives the same ids. A LoRA run is exported merged (W + A B alpha/r),
    or with ``adapter`` as a PEFT adapter folder for its base (adapters, and the head as modules_to_save)."""
    if not is_run_dir(run_dir):
        raise ConfigError(f"{run_dir}: not an rm_jax run folder (no {META})")
    cfg, params, meta, tok = load_run(run_dir, make_mesh(devices=jax.devices()[:1]), step=step)
    if adapter:
        base = read_base_identity(run_dir)
        if not cfg.lora_rank or base is None:
            raise ConfigError(f"{run_dir}: --adapter exports a LoRA run; this run trained without LoRA (lora.rank 0)")
    tok.chat_template = resolve_template(tok, meta.get("template"))
    if adapter:
        extra = _rmse_extra(run_dir, meta) if cfg.head == "reward" else None
        out = export_peft_adapter(
            cfg,
            params,
            out_dir,
            adapter_base_name(run_dir, base["path"]),
            tok,
            meta["attributes"] if cfg.head == "reward" else (),
            meta.get("hf_config"),
            extra,
        )
        check_exported_tokenizer(tok, out)
        return out
    cfg, params = merge_adapters(cfg, params)
    if cfg.head == "lm":
        out = export_hf_causal_lm(cfg, params, out_dir, tok, meta.get("hf_config"))
    else:
        out = export_hf(
            cfg, params, out_dir, meta["attributes"], tok, meta.get("hf_config"), extra=_rmse_extra(run_dir, meta)
        )
    check_exported_tokenizer(tok, out)
    return out


def _rmse_extra(run_dir: str, meta: dict) -> Optional[dict]:
    rmse = _validation_rmse(run_dir, meta["attributes"])
    return {"rm_jax": {"validation_rmse": rmse}} if rmse else None


def _validation_rmse(run_dir: str, attributes: list) -> Optional[dict]:
    path = layout.eval_path(run_dir)
    if not os.path.isfile(path):
        return None
    per = read_json(path, f"{path}: missing").get("per_attribute") or {}
    out = {a: per[a]["rmse"] for a in attributes if a in per and per[a].get("rmse") is not None}
    return out if len(out) == len(attributes) else None


PROBE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12 plus 30?"},
    {"role": "assistant", "content": "12 plus 30 is 42.\nAnything else?"},
]


def check_exported_tokenizer(tokenizer: Any, out_dir: str) -> None:
    """transformers may pick a tokenizer class from config.json's model_type (e.g. Qwen2's digit
    splitting) that encodes differently from the tokenizer the run trained with: refuse such an export."""
    reloaded = load_tokenizer(out_dir)
    a = tokenizer.apply_chat_template(PROBE, tokenize=True, return_dict=False)
    b = reloaded.apply_chat_template(PROBE, tokenize=True, return_dict=False)
    if list(a) != list(b):
        raise ModelLoadError(
            f"{out_dir}: transformers loads the exported tokenizer as {type(reloaded).__name__}, which "
            f"encodes differently from the tokenizer this run trained with; use a tokenizer made for "
            f"this model family (the export is left in place for inspection)"
        )
