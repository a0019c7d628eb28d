"""LoRA around the Llama-family decoder: which leaves train, adding fresh adapters to a loaded base, merging
them back into the base, the base's identity, and PEFT's adapter folder layout (both directions).

Adapters live in the model itself (``{proj}_lora_a`` / ``{proj}_lora_b`` beside each targeted
``{proj}_kernel``, see rm_jax.models.llama.lora_delta), so scan, remat, the mesh rules and every attention
kernel see ordinary parameters. With ``lora_rank > 0`` only the adapters and the head train; the train
step differentiates with respect to those leaves only (:func:`split_trainable`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from rm_jax.core.errors import ModelLoadError
from rm_jax.core.files import write_json
from rm_jax.models import abstract_params, param_shardings_for
from rm_jax.models.llama import DecoderConfig, lora_a_init

BASE_FILE = "lora_base.json"  # in a LoRA run folder: the frozen base's path, content hash and storage dtype
HEAD_LEAVES = ("head_kernel", "lm_head_kernel")
# rm_jax projection -> (HF module under a decoder layer)
HF_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def is_adapter(path: tuple[str, ...]) -> bool:
    return "_lora_" in path[-1]


def is_checkpointed(path: tuple[str, ...]) -> bool:
    """The leaves a LoRA run's checkpoints hold: adapters and heads (the frozen base is re-read from its
    folder). A frozen LM head is kept too: its cost is one matrix, and the rule needs no config."""
    return is_adapter(path) or path[-1] in HEAD_LEAVES


def is_trainable(cfg: DecoderConfig, path: tuple[str, ...]) -> bool:
    if not cfg.lora_rank:
        return True
    if is_adapter(path):
        return True
    return path[-1] == "head_kernel" or (path[-1] == "lm_head_kernel" and cfg.lora_lm_head)


def has_adapters(params: Any) -> bool:
    return any(is_adapter(p) for p in _flat(params))


def _flat(tree: Any) -> dict:
    return traverse_util.flatten_dict(dict(tree)) if tree else {}


def _unflat(flat: dict) -> dict:
    return traverse_util.unflatten_dict(flat) if flat else {}


def partition(params: Any, keep: Any) -> tuple[dict, dict]:
    """(leaves whose path ``keep`` accepts, the others), both as nested dicts of the same layout."""
    a, b = {}, {}
    for path, leaf in _flat(params).items():
        (a if keep(path) else b)[path] = leaf
    return _unflat(a), _unflat(b)


def split_trainable(cfg: DecoderConfig, params: Any) -> tuple[dict, dict]:
    """(trainable, frozen). Without LoRA everything trains and ``frozen`` is empty."""
    if not cfg.lora_rank:
        return params, {}
    return partition(params, lambda p: is_trainable(cfg, p))


def combine(*trees: Any) -> dict:
    """The union of disjoint parameter trees (the inverse of :func:`partition`)."""
    nonempty = [t for t in trees if t]
    if len(nonempty) == 1:  # no LoRA: the tree itself, untouched
        return nonempty[0]
    out: dict = {}
    for t in trees:
        out.update(_flat(t))
    return _unflat(out)


def cast_frozen(cfg: DecoderConfig, params: Any, dtype: str) -> Any:
    """The frozen base stored in ``dtype`` (the model casts every weight to the compute dtype where it
    is used); trainable leaves stay float32."""
    if not cfg.lora_rank or dtype == "float32":
        return params
    train, frozen = split_trainable(cfg, params)
    return combine(train, jax.tree.map(lambda a: a.astype(jnp.dtype(dtype)), frozen))


def add_adapters(params: Any, cfg: DecoderConfig, mesh: Any, seed: int = 0) -> dict:
    """``params`` of the base (no adapters) plus fresh adapters for ``cfg`` (A as PEFT draws it, B = 0),
    created in their sharded layout."""
    abstract = _flat(abstract_params(cfg))
    shard = _flat(param_shardings_for(cfg, mesh))
    paths = sorted(p for p in abstract if is_adapter(p))

    def init(key: jax.Array) -> dict:
        out = {}
        for i, p in enumerate(paths):
            a = abstract[p]
            if p[-1].endswith("_lora_b"):
                out[p] = jnp.zeros(a.shape, a.dtype)
            elif "layers" in p and cfg.scan_layers:  # stacked [L, ...]: fan_in excludes the layer axis
                keys = jax.random.split(jax.random.fold_in(key, i), a.shape[0])
                out[p] = jax.vmap(lambda k, s=a.shape[1:]: lora_a_init(k, s))(keys)
            else:
                out[p] = lora_a_init(jax.random.fold_in(key, i), a.shape)
        return out

    new = jax.jit(init, out_shardings={p: shard[p] for p in paths})(jax.random.key(seed))
    return combine(params, _unflat(new))


def merge_adapters(cfg: DecoderConfig, params: Any) -> tuple[DecoderConfig, dict]:
    """(config without LoRA, params with each adapted kernel W replaced by W + A @ B * alpha/rank)."""
    if not cfg.lora_rank:
        return cfg, params
    flat = _flat(params)
    out = {p: v for p, v in flat.items() if not is_adapter(p)}
    for p, v in flat.items():
        if not p[-1].endswith("_lora_a"):
            continue
        name = p[-1][: -len("_lora_a")]
        kp = p[:-1] + (f"{name}_kernel",)
        a, b, w = v, flat[p[:-1] + (f"{name}_lora_b",)], out[kp]
        stacked = a.ndim > 2 and ("layers" in p and cfg.scan_layers)
        lead = 1 if stacked else 0
        r = cfg.lora_rank
        a2 = a.reshape(a.shape[:lead] + (-1, r)).astype(jnp.float32)
        b2 = b.reshape(b.shape[:lead] + (r, -1)).astype(jnp.float32)
        delta = jnp.matmul(a2, b2, precision=jax.lax.Precision.HIGHEST) * cfg.lora_scale
        out[kp] = (w.astype(jnp.float32) + delta.reshape(w.shape)).astype(w.dtype)
    return dataclasses.replace(cfg, lora_rank=0), _unflat(out)


# ---------------------------------------------------------------- the base's identity

_HASHES: dict = {}


def _weight_files(path: str) -> list:
    """[[name, size, mtime_ns], ...] of the folder's safetensors files, sorted by name: what the hash covers."""
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors files to identify the LoRA base by")
    return [[f, os.stat(os.path.join(path, f)).st_size, os.stat(os.path.join(path, f)).st_mtime_ns] for f in files]


def _hash_files(path: str, files: list) -> str:
    h = hashlib.sha256()
    for f, _, _ in files:
        h.update(f.encode() + b"\0")
        with open(os.path.join(path, f), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def weights_hash(path: str, known: Optional[dict] = None) -> str:
    """sha256 over the folder's safetensors files (names and bytes, sorted by name): what the adapters
    were trained against. Not recomputed when the files' (name, size, mtime) are those ``known`` (a recorded
    :func:`base_identity`, e.g. a run folder's lora_base.json) lists for the same path, nor twice per process."""
    path = os.path.abspath(path)
    files = _weight_files(path)
    if known and known.get("path") == path and known.get("files") == files and known.get("sha256"):
        return known["sha256"]
    key = (path, tuple(map(tuple, files)))
    if key not in _HASHES:
        _HASHES[key] = _hash_files(path, files)
    return _HASHES[key]


def base_identity(path: str, base_dtype: str = "float32", known: Optional[dict] = None) -> dict:
    """{path, sha256, base_dtype, files}: ``files`` lets a later read trust ``sha256`` while they are unchanged."""
    path = os.path.abspath(path)
    return {"path": path, "sha256": weights_hash(path, known), "base_dtype": base_dtype, "files": _weight_files(path)}


def read_base_identity(run_dir: str) -> Optional[dict]:
    p = os.path.join(run_dir, BASE_FILE)
    if not os.path.isfile(p):
        return None
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def check_same_base(recorded: dict, current: dict, run_dir: str) -> None:
    """Adapters trained on one base are meaningless on another: stop, naming both."""
    if recorded["sha256"] != current["sha256"]:
        raise ModelLoadError(
            f"{run_dir}: its LoRA checkpoints were trained on the base {recorded['path']} "
            f"(sha256 {recorded['sha256'][:16]}...), but the base now is {current['path']} "
            f"(sha256 {current['sha256'][:16]}...); use the original base or a new run folder"
        )


def fill_base(run_dir: str, abstract: Any, restored: Any) -> dict:
    """The full parameters of a LoRA run: ``restored`` (its checkpointed adapters and heads) plus the frozen
    base re-read from the folder recorded in ``run_dir`` (hash-checked), in the dtype and sharding of the
    matching ``abstract`` leaves (ShapeDtypeStructs carrying shardings)."""
    from rm_jax.models.hf_io import load_hf_causal_lm, load_hf_reward_model

    recorded = read_base_identity(run_dir)
    if recorded is None:
        raise ModelLoadError(f"{run_dir}: a LoRA run without {BASE_FILE}: its frozen base is unknown")
    if not os.path.isdir(recorded["path"]):
        raise ModelLoadError(
            f"{run_dir}: its LoRA base {recorded['path']} is gone (sha256 {recorded['sha256'][:16]}...)"
        )
    check_same_base(recorded, base_identity(recorded["path"], known=recorded), run_dir)  # hashed once: files unchanged
    flat_abs = _flat(abstract)
    leaf = next(iter(flat_abs.values()))
    mesh = leaf.sharding.mesh
    scan = any(p[0] == "layers" for p in flat_abs)
    if ("head_kernel",) in flat_abs:
        base = load_hf_reward_model(recorded["path"], mesh, scan_layers=scan).params
    else:
        base = load_hf_causal_lm(recorded["path"], mesh, scan_layers=scan).params
    out = _flat(restored)
    for p, v in _flat(base).items():
        if p not in out:
            a = flat_abs[p]
            out[p] = jax.device_put(v.astype(a.dtype), a.sharding)
    return _unflat(out)


# ---------------------------------------------------------------- PEFT's adapter folder

PEFT_PREFIX = "base_model.model."


def peft_tensors(cfg: DecoderConfig, params: Any) -> dict[str, np.ndarray]:
    """The adapters (and head, PEFT's ``modules_to_save``) as PEFT names them: ``lora_A.weight`` [r, in],
    ``lora_B.weight`` [out, r] in torch's (out, in) layout; the head as its full tensor."""
    flat = _flat(params)
    out: dict[str, np.ndarray] = {}
    r = cfg.lora_rank
    for i in range(cfg.num_hidden_layers):
        for name in cfg.lora_targets:
            group = "attn" if name in ("q", "k", "v", "o") else "mlp"
            if cfg.scan_layers:
                a, b = (np.asarray(jax.device_get(flat[("layers", group, f"{name}_lora_{x}")][i])) for x in "ab")
            else:
                a, b = (np.asarray(jax.device_get(flat[(f"layers_{i}", group, f"{name}_lora_{x}")])) for x in "ab")
            mod = f"{PEFT_PREFIX}model.layers.{i}.{HF_MODULES[name]}"
            out[f"{mod}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, r).T, np.float32)
            out[f"{mod}.lora_B.weight"] = np.ascontiguousarray(b.reshape(r, -1).T, np.float32)
    if cfg.head == "reward":
        out[f"{PEFT_PREFIX}score.weight"] = np.ascontiguousarray(np.asarray(flat[("head_kernel",)]).T, np.float32)
    elif cfg.lora_lm_head and not cfg.tie_word_embeddings:
        out[f"{PEFT_PREFIX}lm_head.weight"] = np.ascontiguousarray(np.asarray(flat[("lm_head_kernel",)]).T, np.float32)
    return out


def peft_config(cfg: DecoderConfig, base_path: str) -> dict:
    reward = cfg.head == "reward"
    save = ["score"] if reward else (["lm_head"] if cfg.lora_lm_head and not cfg.tie_word_embeddings else None)
    return {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS" if reward else "CAUSAL_LM",
        "base_model_name_or_path": base_path,
        "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,  # the rate the run trained with (peft uses it to continue training)
        "target_modules": sorted(HF_MODULES[t].split(".")[-1] for t in cfg.lora_targets),
        "modules_to_save": save,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def export_peft_adapter(cfg: DecoderConfig, params: Any, out_dir: str, base_path: str) -> str:
    """A PEFT adapter folder (adapter_config.json, adapter_model.safetensors) for
    ``peft.PeftModel.from_pretrained(base, out_dir)``; written to a temporary folder and renamed."""
    from safetensors.numpy import save_file

    if not cfg.lora_rank:
        raise ModelLoadError("--adapter: this run trained without LoRA (lora.rank 0): export the full model instead")
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_json(os.path.join(tmp, "adapter_config.json"), peft_config(cfg, base_path))
    save_file(peft_tensors(cfg, params), os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def read_peft_config(adapter_dir: str) -> dict:
    """A PEFT LoRA adapter folder's adapter_config.json, checked for what rm_jax can apply."""
    from rm_jax.core.files import read_json

    where = os.path.join(adapter_dir, "adapter_config.json")
    cfg = read_json(where, f"{where}: missing; a PEFT adapter folder needs adapter_config.json", ModelLoadError)
    if cfg.get("peft_type") != "LORA":
        raise ModelLoadError(f"{where}: peft_type {cfg.get('peft_type')!r}; only LORA adapters are supported")
    for key in ("use_dora", "use_rslora"):
        if cfg.get(key):
            raise ModelLoadError(f"{where}: {key}=true is not supported")
    if cfg.get("bias", "none") != "none" or cfg.get("fan_in_fan_out"):
        raise ModelLoadError(f"{where}: bias != none and fan_in_fan_out are not supported")
    rate = cfg.get("lora_dropout", 0.0)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
        raise ModelLoadError(f"{where}: lora_dropout {rate!r}: must be a number in [0, 1)")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ModelLoadError(f"{where}: per-module rank_pattern / alpha_pattern are not supported")
    mods = cfg.get("target_modules") or []
    mods = [mods] if isinstance(mods, str) else list(mods)
    by_module = {v.split(".")[-1]: k for k, v in HF_MODULES.items()}
    bad = [m for m in mods if m not in by_module]
    if bad or not mods:
        raise ModelLoadError(f"{where}: target_modules {bad or mods}: supported are {', '.join(sorted(by_module))}")
    return {**cfg, "targets": tuple(t for t in HF_MODULES if HF_MODULES[t].split(".")[-1] in mods)}


def import_peft_adapter(cfg: DecoderConfig, params: Any, adapter_dir: str, mesh: Any) -> tuple[DecoderConfig, dict]:
    """The base ``params`` (no adapters) with a PEFT LoRA adapter folder's weights as rm_jax adapters (and its
    ``modules_to_save`` head, when it has one): the inverse of :func:`export_peft_adapter`."""
    from safetensors.numpy import load_file

    pc = read_peft_config(adapter_dir)
    cfg = dataclasses.replace(
        cfg,
        lora_rank=int(pc["r"]),
        lora_alpha=float(pc["lora_alpha"]),
        lora_targets=pc["targets"],
        lora_dropout=float(pc.get("lora_dropout", 0.0)),  # a run continuing from it trains with it (docs/lora.md)
    )
    path = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.isfile(path):
        raise ModelLoadError(f"{adapter_dir}: no adapter_model.safetensors")
    tensors = load_file(path)
    shard = _flat(param_shardings_for(cfg, mesh))
    out = _flat(add_adapters(params, cfg, mesh))
    r = cfg.lora_rank

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise ModelLoadError(f"{path}: missing tensor {name!r}")
        return tensors[name].astype(np.float32)

    for name in cfg.lora_targets:
        group = "attn" if name in ("q", "k", "v", "o") else "mlp"
        for x, hf in (("a", "lora_A"), ("b", "lora_B")):
            key = ("layers", group, f"{name}_lora_{x}") if cfg.scan_layers else None
            layers = []
            for i in range(cfg.num_hidden_layers):
                w = take(f"{PEFT_PREFIX}model.layers.{i}.{HF_MODULES[name]}.{hf}.weight").T  # [in, r] or [r, out]
                leaf_key = key or (f"layers_{i}", group, f"{name}_lora_{x}")
                shape = out[leaf_key].shape[1:] if cfg.scan_layers else out[leaf_key].shape
                if w.shape[0 if x == "b" else 1] != r:
                    raise ModelLoadError(
                        f"{path}: {HF_MODULES[name]}.{hf} of layer {i} has shape {w.T.shape}, not rank {r}"
                    )
                layers.append(w.reshape(shape))
                if not cfg.scan_layers:
                    out[leaf_key] = jax.device_put(layers[-1], shard[leaf_key])
            if cfg.scan_layers:
                out[key] = jax.device_put(np.stack(layers), shard[key])
    head = {"reward": ("score", ("head_kernel",)), "lm": ("lm_head", ("lm_head_kernel",))}[cfg.head]
    for candidate in (f"{PEFT_PREFIX}{head[0]}.weight", f"{PEFT_PREFIX}{head[0]}.modules_to_save.weight"):
        if candidate in tensors and head[1] in out:
            out[head[1]] = jax.device_put(take(candidate).T.copy(), shard[head[1]])
            if cfg.head == "lm":
                cfg = dataclasses.replace(cfg, lora_lm_head=True)
            break
    return cfg, _unflat(out)
