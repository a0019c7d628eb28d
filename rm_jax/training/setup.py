"""Everything a run builds before its first step: distributed init, the mesh, the model (from scratch,
an HF folder or an earlier run). The data splits are read by the run's task (:mod:`rm_jax.training.tasks`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax

from rm_jax.core.config import LoraConfig, RunConfig
from rm_jax.core.errors import ConfigError, ConversationError
from rm_jax.data.conversation import parse_attribute_label
from rm_jax.data.pipeline import bundled_tokenizer_path
from rm_jax.engine.train_step import check_host_memory
from rm_jax.models import init_params
from rm_jax.models.attention import shared_layout_kernel
from rm_jax.models.hf_io import (
    LoadedModel,
    decoder_config_from_hf,
    load_hf_reward_model,
    read_hf_config,
    resolve_model_dir,
)
from rm_jax.models.llama import DecoderConfig
from rm_jax.models.sharding import make_mesh
from rm_jax.runs import layout
from rm_jax.runs.read import META, read_meta, restore_run_params
from rm_jax.training.logs import logger


def maybe_init_distributed(cfg: RunConfig) -> None:
    d = cfg.distributed
    if not d.enabled or jax.distributed.is_initialized():
        return
    kwargs = {
        k: v
        for k, v in dict(
            coordinator_address=d.coordinator_address,
            num_processes=d.num_processes,
            process_id=d.process_id,
            local_device_ids=d.local_device_ids,
        ).items()
        if v is not None
    }
    jax.distributed.initialize(**kwargs)


def build_mesh(cfg: RunConfig, train_state: bool = True) -> Any:
    """The run's mesh, checked against its batch sizes; ``train_state``: the mesh will hold the optimizer state
    (a finished run's scoring does not, so train.optimizer_state_memory does not concern it)."""
    devices = jax.devices()
    if cfg.mesh.num_devices:
        if cfg.mesh.num_devices > len(devices):
            raise ConfigError(f"mesh.num_devices={cfg.mesh.num_devices} but only {len(devices)} devices exist")
        devices = devices[: cfg.mesh.num_devices]
    if train_state and cfg.train.optimizer_state_memory == "host":
        check_host_memory(devices)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices)
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = cfg.train.batch_rows // cfg.train.grad_accum
    if micro % dp:
        raise ConfigError(
            f"train.batch_rows / train.grad_accum = {micro} rows per micro-batch does not divide over "
            f"the data-parallel size data x fsdp = {dp}"
        )
    if cfg.train.eval_rows % dp:
        raise ConfigError(f"train.eval_rows = {cfg.train.eval_rows} does not divide over data x fsdp = {dp}")
    return mesh


def inherit_from_init(cfg: RunConfig) -> RunConfig:
    """A run starting from another run's parameters (``model.init_from``) reads its data as that run did:
    with its tokenizer and chat template, unless the config names others. SteerLM 2.0 groups carry
    log Q' computed with them; other ids would make the importance weights wrong without an error."""
    if not cfg.model.init_from or not os.path.exists(os.path.join(cfg.model.init_from, META)):
        return cfg
    meta = read_meta(cfg.model.init_from)
    model, data = cfg.model, cfg.data
    if not model.tokenizer and not model.path and meta.get("tokenizer"):
        model = dataclasses.replace(model, tokenizer=meta["tokenizer"])
    if data.template is None and meta.get("template"):
        data = dataclasses.replace(data, template=meta["template"])
    return dataclasses.replace(cfg, model=model, data=data)


def tokenizer_path(cfg: RunConfig) -> str:
    return cfg.model.tokenizer or cfg.model.path or bundled_tokenizer_path()


def check_model_path(cfg: RunConfig) -> None:
    """Fail before any compilation or data work when the model folder is wrong, or LoRA keys conflict with it
    (:func:`check_lora`)."""
    if cfg.model.path:
        path = resolve_model_dir(cfg.model.path)
        head = {"head": "lm"} if model_head(cfg) == "lm" else {}
        check_lora(cfg, decoder_config_from_hf(read_hf_config(path), os.path.join(path, "config.json"), **head))
    if cfg.model.init_from and not os.path.exists(os.path.join(cfg.model.init_from, META)):
        raise ConfigError(f"model.init_from={cfg.model.init_from!r}: not a finished rm_jax run folder (no {META})")


def check_label_probe(cfg: RunConfig) -> None:
    """eval.label_probe's labels are checked before anything trains (config.py sits below the label code)."""
    probe = cfg.eval.label_probe
    if probe.every < 0:
        raise ConfigError(f"eval.label_probe.every must be >= 0 (0 = only the kept checkpoint), got {probe.every}")
    if not probe.prompts:
        return
    try:
        base = parse_attribute_label(probe.base, "eval.label_probe.base") if probe.base else {}
        for level in probe.levels:
            parse_attribute_label({probe.attribute: level}, "eval.label_probe")
    except ConversationError as e:
        raise ConfigError(f"{cfg.run_dir}: {e}") from None
    if probe.attribute in base:
        raise ConfigError(f"eval.label_probe.base sets {probe.attribute!r}, the attribute it varies")


def adapter_lora(adapter_dir: str) -> dict:
    """The DecoderConfig LoRA fields a PEFT adapter folder trains with (rank, alpha, targets, dropout, and
    whether it carries an LM head), read as :func:`rm_jax.models.lora.import_peft_adapter` reads them."""
    from rm_jax.models.lora import PEFT_PREFIX, read_peft_config

    pc = read_peft_config(adapter_dir)
    names: set = set()
    weights = os.path.join(adapter_dir, "adapter_model.safetensors")
    if os.path.isfile(weights):  # the header only: the names of its tensors
        from safetensors import safe_open

        with safe_open(weights, "numpy") as f:
            names = set(f.keys())
    lm_head = any(f"{PEFT_PREFIX}lm_head{x}.weight" in names for x in ("", ".modules_to_save"))
    return dict(
        lora_rank=int(pc["r"]),
        lora_alpha=float(pc["lora_alpha"]),
        lora_targets=tuple(pc["targets"]),
        lora_dropout=float(pc.get("lora_dropout", 0.0)),
        lora_lm_head=lm_head,
    )


def check_lora(cfg: RunConfig, dcfg: DecoderConfig) -> None:
    """LoRA keys that would be ignored stop the run, naming them. ``dcfg``: the model.path folder's decoder
    (its ``tie_word_embeddings``). With ``model.adapter`` the adapter's adapter_config.json decides rank, alpha
    and targets; the config's values at their defaults (rank 0, alpha 16, all seven targets) defer to it, any
    other value must equal the adapter's (a default value set explicitly cannot be told from an unset one)."""
    lo, default = cfg.lora, LoraConfig()
    if cfg.model.adapter:
        ad = adapter_lora(cfg.model.adapter)
        clash = []
        if lo.rank and lo.rank != ad["lora_rank"]:
            clash.append(f"lora.rank={lo.rank} (adapter r={ad['lora_rank']})")
        if lo.alpha != default.alpha and lo.alpha != ad["lora_alpha"]:
            clash.append(f"lora.alpha={lo.alpha:g} (adapter lora_alpha={ad['lora_alpha']:g})")
        if list(lo.targets) != list(default.targets) and set(lo.targets) != set(ad["lora_targets"]):
            clash.append(f"lora.targets={list(lo.targets)} (adapter {list(ad['lora_targets'])})")
        if lo.rslora and not ad.get("lora_rslora"):
            clash.append("lora.rslora=true (adapter use_rslora false)")
        if clash:
            raise ConfigError(
                f"model.adapter={cfg.model.adapter}: {'; '.join(clash)}: the adapter's adapter_config.json decides "
                f"these; drop the keys or set the adapter's values"
            )
    lora = lo.rank or cfg.model.adapter  # a full fine-tune trains the (tied) head anyway
    if lora and lo.train_lm_head and dcfg.head == "lm" and dcfg.tie_word_embeddings:
        raise ConfigError(
            f"lora.train_lm_head=true but model.path={cfg.model.path} ties its LM head to the input embeddings "
            f"(tie_word_embeddings in its config.json): there is no separate head to train; drop lora.train_lm_head"
        )


def lora_opts(cfg: RunConfig) -> dict:
    """The DecoderConfig LoRA fields a run trains with (none without LoRA): ``model.adapter``'s rank, alpha
    and targets (:func:`adapter_lora`; its LM head, or lora.train_lm_head; its dropout unless lora.dropout > 0),
    else the lora section's."""
    lo = cfg.lora
    if cfg.model.adapter:
        ad = adapter_lora(cfg.model.adapter)
        ad["lora_lm_head"] = ad["lora_lm_head"] or lo.train_lm_head
        if lo.dropout > 0:  # else the adapter's own lora_dropout (docs/lora.md)
            ad["lora_dropout"] = lo.dropout
        return ad
    if not lo.rank:
        return {}
    return dict(
        lora_rank=lo.rank,
        lora_alpha=lo.alpha,
        lora_rslora=lo.rslora,
        lora_targets=tuple(lo.targets),
        lora_lm_head=lo.train_lm_head,
        lora_dropout=lo.dropout,
    )


def base_storage(cfg: RunConfig) -> dict:
    """How the loader stores the base: a LoRA run's frozen leaves straight in lora.base_dtype (each tensor cast
    on the host before it reaches a device), the trainable heads in float32; a full fine-tune all float32."""
    from rm_jax.models.lora import REWARD_HEAD_LEAVES

    opts = lora_opts(cfg)
    if not opts:
        return {}
    keep = REWARD_HEAD_LEAVES + (("lm_head_kernel",) if opts["lora_lm_head"] else ())
    return dict(base_dtype=cfg.lora.base_dtype, float32_leaves=keep)


def attach_lora(cfg: RunConfig, dcfg: DecoderConfig, params: Any, mesh: Any) -> tuple[DecoderConfig, Any]:
    """The loaded base frozen with fresh adapters (lora.rank > 0), stored in lora.base_dtype; the base's
    identity is recorded in the run folder, and a resumed run must find the same base there."""
    if not cfg.lora.rank and not cfg.model.adapter:
        return dcfg, params
    check_lora(cfg, dcfg)
    from rm_jax.core.files import write_json
    from rm_jax.models.hf_io import resolve_model_dir
    from rm_jax.models.lora import (
        add_adapters,
        base_identity,
        cast_frozen,
        check_same_base,
        import_peft_adapter,
        read_base_identity,
    )

    if cfg.model.adapter:  # continue from a PEFT adapter: its rank, alpha and targets (check_lora: no clash)
        dcfg, params = import_peft_adapter(dcfg, params, cfg.model.adapter, mesh)
    dcfg = dcfg.replace(**lora_opts(cfg))
    recorded = read_base_identity(cfg.run_dir)
    ident = base_identity(resolve_model_dir(cfg.model.path), cfg.lora.base_dtype, known=recorded)
    ck = layout.checkpoints_dir(cfg.run_dir)
    if recorded is not None and os.path.isdir(ck) and any(n.isdigit() for n in os.listdir(ck)):
        check_same_base(recorded, ident, cfg.run_dir)  # resuming: the adapters belong to the recorded base
    if jax.process_index() == 0:
        os.makedirs(cfg.run_dir, exist_ok=True)
        write_json(os.path.join(cfg.run_dir, layout.LORA_BASE), ident)
    if not cfg.model.adapter:
        params = add_adapters(params, dcfg, mesh, cfg.model.seed)
    logger.info(
        f"LoRA rank {dcfg.lora_rank} on {', '.join(dcfg.lora_targets)}"
        + (f" from {cfg.model.adapter}" if cfg.model.adapter else "")
        + (f"; adapter dropout {dcfg.lora_dropout:g}" if dcfg.lora_dropout else "")
        + f"; base frozen in {cfg.lora.base_dtype}"
    )
    return dcfg, cast_frozen(dcfg, params, cfg.lora.base_dtype)


def run_opts(cfg: RunConfig) -> dict:
    return dict(
        dtype=cfg.model.dtype,
        remat=cfg.model.remat,
        scan_layers=cfg.model.scan_layers,
        # Shared prompts need a kernel whose mask reads prompt ids (xla everywhere, cudnn_dense on GPUs).
        attention=shared_layout_kernel(cfg.model.attention, dtype=cfg.model.dtype)
        if cfg.data.share_prompts is not False and cfg.task != "sft"
        else cfg.model.attention,
        attention_block=cfg.model.attention_block,
        matmul_precision=cfg.model.matmul_precision,
        shared_prompts=cfg.data.share_prompts is not False and cfg.task != "sft",
    )


def head_opts(cfg: RunConfig) -> dict:
    """The DecoderConfig fields of a reward model's attribute head (model.head, model.label_levels)."""
    if cfg.task != "rm":
        return {}
    separate = bool(cfg.loss.pair_weight) and cfg.loss.pair_target == "separate"
    return dict(attribute_head=cfg.model.head, label_levels=cfg.model.label_levels, reward_head=separate)


def model_head(cfg: RunConfig) -> str:
    """The head a task trains: a reward head (``rm``) or a language-model head (``sft``)."""
    return "reward" if cfg.task == "rm" else "lm"


def scratch_config(cfg: RunConfig, vocab_size: int) -> DecoderConfig:
    arch = dict(cfg.model.arch)
    arch.setdefault("vocab_size", vocab_size)
    arch.setdefault("head_dim", arch.get("hidden_size", 4096) // arch.get("num_attention_heads", 32))
    arch.setdefault("num_key_value_heads", arch.get("num_attention_heads", 32))
    fields = {f.name for f in dataclasses.fields(DecoderConfig)}
    for k in arch:
        if k not in fields or k in run_opts(cfg) or k in ("num_labels", "head") or k in head_opts(cfg):
            raise ConfigError(f"unknown config key 'model.arch.{k}'")
    head = {"head": model_head(cfg)} if model_head(cfg) != "reward" else {}
    try:
        return DecoderConfig(num_labels=len(cfg.model.attributes), **arch, **head, **head_opts(cfg), **run_opts(cfg))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.arch: {e}") from None


def init_from_config(cfg: RunConfig) -> tuple[DecoderConfig, dict]:
    """(decoder config, model_meta.json) of the run ``model.init_from`` names, with this run's options,
    checked against what this run trains (its head and attributes)."""
    meta = read_meta(cfg.model.init_from)
    dcfg = DecoderConfig(**{**meta["decoder"], **run_opts(cfg)})
    if dcfg.head != model_head(cfg):
        raise ConfigError(
            f"model.init_from: {cfg.model.init_from} has a {dcfg.head} head; "
            f"task {cfg.task} trains a {model_head(cfg)} head"
        )
    if cfg.task == "rm" and meta["attributes"] != list(cfg.model.attributes):
        raise ConfigError(f"model.init_from: that run's attributes {meta['attributes']} differ from model.attributes")
    if cfg.task == "rm" and dcfg.reward_head != head_opts(cfg)["reward_head"]:
        raise ConfigError(
            f"model.init_from: that run {'has' if dcfg.reward_head else 'has no'} separate reward output; "
            f"loss.pair_target={cfg.loss.pair_target}, loss.pair_weight={cfg.loss.pair_weight:g}"
        )
    if cfg.task == "rm" and (dcfg.attribute_head, dcfg.label_levels) != (cfg.model.head, cfg.model.label_levels):
        raise ConfigError(
            f"model.init_from: that run has a {dcfg.attribute_head} head with {dcfg.label_levels} levels; "
            f"model.head={cfg.model.head}, model.label_levels={cfg.model.label_levels}"
        )
    return dcfg, meta


def build_model(cfg: RunConfig, mesh: Any, tokenizer: Any) -> tuple[DecoderConfig, Any, Optional[dict]]:
    """(decoder config, params on the mesh, HF base config or None)."""
    if cfg.model.init_from:
        dcfg, meta = init_from_config(cfg)
        params = restore_run_params(cfg.model.init_from, dcfg, mesh)
        logger.info(f"initialised from {cfg.model.init_from}")
        return dcfg, params, meta.get("hf_config")
    if cfg.model.path and model_head(cfg) == "lm":
        from rm_jax.models.hf_io import load_hf_causal_lm

        lm = load_hf_causal_lm(cfg.model.path, mesh, **base_storage(cfg), **run_opts(cfg))
        logger.info(f"loaded {cfg.model.path} (causal LM)")
        return (*attach_lora(cfg, lm.cfg, lm.params, mesh), lm.hf_config)
    if cfg.model.path:
        lm: LoadedModel = load_hf_reward_model(
            cfg.model.path,
            mesh,
            seed=cfg.model.seed,
            attribute_names=cfg.model.attributes,
            **head_opts(cfg),
            **base_storage(cfg),
            **run_opts(cfg),
        )
        for n in lm.notes:
            logger.info(n)
        logger.info(f"loaded {cfg.model.path} ({'head loaded' if lm.head_loaded else 'new head'})")
        return (*attach_lora(cfg, lm.cfg, lm.params, mesh), lm.hf_config)
    dcfg = scratch_config(cfg, len(tokenizer))
    return dcfg, init_params(dcfg, mesh, cfg.model.seed), None
