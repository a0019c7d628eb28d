"""LoRA around the Llama-family decoder: which leaves train, adding fresh adapters to a loaded base, merging
them back into the base, the base's identity, and PEFT's adapter folder layout (both directions).

Adapters live in the model itself (``{proj}_lora_a`` / ``{proj}_lora_b`` beside each targeted
``{proj}_kernel``, see rm_jax.models.llama.lora_delta), so scan, remat, the mesh rules and every attention
kernel see ordinary parameters. With ``lora_rank > 0`` only the adapters and the head train; the train
step differentiates with respect to those leaves only (:func:`split_trainable`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import shutil
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from rm_jax.core.errors import ModelLoadError
from rm_jax.core.files import write_json
from rm_jax.models import abstract_params, param_shardings_for
from rm_jax.models.llama import DecoderConfig, lora_a_init

BASE_FILE = "lora_base.json"  # in a LoRA run folder: the frozen base's path, content hash and storage dtype
# The reward head's leaves (an ordinal head's thresholds, a separate reward output) train with the adapters.
REWARD_HEAD_LEAVES = ("head_kernel", "head_thresholds", "reward_head_kernel")
HEAD_LEAVES = REWARD_HEAD_LEAVES + ("lm_head_kernel",)
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
    return path[-1] in REWARD_HEAD_LEAVES or (path[-1] == "lm_head_kernel" and cfg.lora_lm_head)


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
    out = _flat(restored)
    # Read the frozen leaves straight into their stored dtype (lora.base_dtype), tensor by tensor on the host, as
    # training loads them: the base is never whole in float32 on a device. Leaves stored otherwise (float32) keep it.
    frozen = [a.dtype for p, a in flat_abs.items() if p not in out]
    base_dtype = collections.Counter(map(str, frozen)).most_common(1)[0][0] if frozen else "float32"
    keep = tuple({p[-1] for p, a in flat_abs.items() if p not in out and str(a.dtype) != base_dtype})
    opts = dict(scan_layers=scan, base_dtype=base_dtype, float32_leaves=keep)
    if ("head_kernel",) in flat_abs:
        base = load_hf_reward_model(recorded["path"], mesh, **opts).params
    else:
        base = load_hf_causal_lm(recorded["path"], mesh, **opts).params
    for p, v in _flat(base).items():
        if p not in out:
            a = flat_abs[p]
            out[p] = jax.device_put(v.astype(a.dtype), a.sharding)
    return _unflat(out)


# ---------------------------------------------------------------- PEFT's adapter folder

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# adapter_config.json fields that change what an adapter computes and that rm_jax does not apply: any value but
# the neutral one (absent, null, false, empty, "none") stops the import, naming the field.
UNSUPPORTED_FIELDS = (
    "use_dora",
    "lora_bias",
    "bias",
    "fan_in_fan_out",
    "rank_pattern",
    "alpha_pattern",
    "trainable_token_indices",
    "alora_invocation_tokens",
    "layer_replication",
    "layers_to_transform",
    "exclude_modules",
    "target_parameters",
    "use_qalora",
    "megatron_config",
    "monteclora_config",
    "arrow_config",
    "kasa_config",
    "use_bdlora",
)
# init_lora_weights values that leave the base weights as they were (PiSSA, OLoRA, CorDA, LoftQ and LoRA-GA
# rewrite the base: their adapters only make sense on that rewritten base).
BASE_PRESERVING_INITS = (True, False, "gaussian", "eva", "orthogonal", "mica")
# modules_to_save rm_jax applies: the reward head (peft adds "classifier" to every SEQ_CLS adapter; Llama-family
# models have no such module) and a policy's untied LM head.
HEAD_MODULES = ("score", "classifier", "lm_head")
ONE_LABEL_NAME = "reward"  # the attribute name of a one-output (TRL-style scalar) adapter without id2label


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
        "use_rslora": cfg.lora_rslora,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def export_peft_adapter(
    cfg: DecoderConfig,
    params: Any,
    out_dir: str,
    base_path: str,
    tokenizer: Any = None,
    attribute_names: Sequence[str] = (),
    base_hf_config: Optional[dict] = None,
    extra: Optional[dict] = None,
) -> str:
    """A PEFT adapter folder for ``peft.PeftModel.from_pretrained(base, out_dir)``: adapter_config.json,
    adapter_model.safetensors and, with ``tokenizer``, what a user needs beside them: the tokenizer files (with
    the chat template it carries) and config.json, the HF config of the adapted model (``num_labels`` and
    ``id2label`` = ``attribute_names`` for a reward model), so ``AutoConfig.from_pretrained(out_dir)`` builds
    the base with the head the adapter's ``score`` fits, whatever head the base folder has (docs/lora.md).
    Written to a temporary folder and renamed."""
    from safetensors.numpy import save_file

    from rm_jax.models.hf_io import _pad_token_id, hf_config_from_decoder

    if not cfg.lora_rank:
        raise ModelLoadError("--adapter: this run trained without LoRA (lora.rank 0): export the full model instead")
    if cfg.head == "reward" and tokenizer is not None and len(attribute_names) != cfg.num_labels:
        raise ValueError(f"{len(attribute_names)} attribute names for a head with {cfg.num_labels} outputs")
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_json(os.path.join(tmp, ADAPTER_CONFIG), peft_config(cfg, base_path))
    save_file(peft_tensors(cfg, params), os.path.join(tmp, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
        merged = dataclasses.replace(cfg, lora_rank=0)
        ids = {k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id")} if cfg.head == "lm" else {}
        ids = {k: int(v) for k, v in ids.items() if isinstance(v, int)}
        hf = hf_config_from_decoder(
            merged, attribute_names, base_hf_config, _pad_token_id(tokenizer, base_hf_config), {**ids, **(extra or {})}
        )
        write_json(os.path.join(tmp, "config.json"), hf)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _active(value: Any) -> bool:
    return value not in (None, False, "none", "") and value != {} and value != []


def read_peft_config(adapter_dir: str) -> dict:
    """A PEFT LoRA adapter folder's adapter_config.json, checked for what rm_jax can apply: every field that
    would make PEFT compute something rm_jax does not stops here, with one line naming it."""
    from rm_jax.core.files import read_json

    where = os.path.join(adapter_dir, ADAPTER_CONFIG)
    cfg = read_json(where, f"{where}: missing; a PEFT adapter folder needs {ADAPTER_CONFIG}", ModelLoadError)
    if cfg.get("peft_type") != "LORA":
        raise ModelLoadError(f"{where}: peft_type {cfg.get('peft_type')!r}; only LORA adapters are supported")
    for key in UNSUPPORTED_FIELDS:
        if _active(cfg.get(key)):
            raise ModelLoadError(f"{where}: {key}={json.dumps(cfg[key])[:80]} is not supported by rm_jax")
    init = cfg.get("init_lora_weights", True)
    if not any(init is v or (isinstance(v, str) and init == v) for v in BASE_PRESERVING_INITS):
        raise ModelLoadError(
            f"{where}: init_lora_weights={json.dumps(init)} is not supported by rm_jax (that initialisation rewrites "
            f"the base weights; convert the adapter with peft's path_initial_model_for_weight_conversion)"
        )
    save = cfg.get("modules_to_save") or []
    bad = [m for m in ([save] if isinstance(save, str) else save) if m not in HEAD_MODULES]
    if bad:
        raise ModelLoadError(
            f"{where}: modules_to_save={json.dumps(bad)} is not supported by rm_jax (only the score head or lm_head)"
        )
    rank, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ModelLoadError(f"{where}: r {rank!r}: must be a positive integer")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise ModelLoadError(f"{where}: lora_alpha {alpha!r}: must be a positive number")
    rate = cfg.get("lora_dropout", 0.0)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
        raise ModelLoadError(f"{where}: lora_dropout {rate!r}: must be a number in [0, 1)")
    mods = cfg.get("target_modules") or []
    by_module = {v.split(".")[-1]: k for k, v in HF_MODULES.items()}
    if mods == "all-linear":  # peft: every linear layer but the output head, i.e. the seven projections
        mods = list(by_module)
    # peft saves "all-linear" as the full module names ("model.layers.0.self_attn.q_proj", ...): the projection
    # is the last part (each one must then be adapted on every layer: a missing layer stops the import)
    mods = [mods] if isinstance(mods, str) else [str(m).split(".")[-1] for m in mods]
    bad = [m for m in mods if m not in by_module]
    if bad or not mods:
        raise ModelLoadError(
            f"{where}: target_modules {bad or mods}: supported are {', '.join(sorted(by_module))} or all-linear"
        )
    return {**cfg, "targets": tuple(t for t in HF_MODULES if HF_MODULES[t].split(".")[-1] in mods)}


def _head_tensor_names(head: str) -> tuple[str, ...]:
    module = "score" if head == "reward" else "lm_head"
    return (f"{PEFT_PREFIX}{module}.weight", f"{PEFT_PREFIX}{module}.modules_to_save.weight")


def peft_head_outputs(adapter_dir: str) -> Optional[int]:
    """The number of outputs of an adapter's score head (``modules_to_save``), None when it has none; read from
    the safetensors header only."""
    from safetensors import safe_open

    path = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}")
    with safe_open(path, "np") as f:
        for name in _head_tensor_names("reward"):
            if name in f.keys():
                return int(f.get_slice(name).get_shape()[0])
    return None


def peft_attribute_names(adapter_dir: str, base_hf: dict, base: str) -> list[str]:
    """The attributes a reward model made of an adapter and its base predicts: the adapter folder's config.json
    ``id2label`` (rm_jax writes one), else the base's (a reward model with as many outputs), else the five
    HelpSteer2 attributes for a 5-output head or ``reward`` for a one-output (TRL-style scalar) head. Stops when
    the head cannot fit the base, or when neither adapter nor base has a head to score with."""
    from rm_jax.core.attributes import ATTRIBUTES

    n = peft_head_outputs(adapter_dir)
    own = _id2label(os.path.join(adapter_dir, "config.json"))
    if own is not None:
        if n is not None and len(own) != n:
            raise ModelLoadError(f"{adapter_dir}: config.json names {len(own)} labels but the score head has {n}")
        return own
    archs = base_hf.get("architectures") or []
    base_names = _id2label_of(base_hf) if any(a.endswith("ForSequenceClassification") for a in archs) else None
    if n is None:
        if base_names is None:
            raise ModelLoadError(
                f"{adapter_dir}: the adapter has no score head (no score in modules_to_save) and its base {base} is "
                f"not a reward model: there is no head to score with"
            )
        return base_names
    if base_names is not None:
        if len(base_names) != n:
            raise ModelLoadError(
                f"{adapter_dir}: the adapter's score head has {n} outputs but its base {base} has {len(base_names)}"
            )
        return base_names
    if n == len(ATTRIBUTES):
        return list(ATTRIBUTES)
    if n == 1:
        return [ONE_LABEL_NAME]
    raise ModelLoadError(
        f"{adapter_dir}: the adapter's score head has {n} outputs and nothing names them: add a config.json with "
        f"id2label to the adapter folder"
    )


def _id2label(config_path: str) -> Optional[list[str]]:
    if not os.path.isfile(config_path):
        return None
    with open(config_path, encoding="utf-8") as f:
        return _id2label_of(json.load(f))


def _id2label_of(hf: dict) -> Optional[list[str]]:
    id2label = hf.get("id2label") or {}
    if not id2label:
        return None
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def import_peft_adapter(cfg: DecoderConfig, params: Any, adapter_dir: str, mesh: Any) -> tuple[DecoderConfig, dict]:
    """The base ``params`` (no adapters) with a PEFT LoRA adapter folder's weights as rm_jax adapters (and its
    ``modules_to_save`` head, when it has one): the inverse of :func:`export_peft_adapter`. Every tensor of the
    folder is applied or the import stops naming it; a reward head must have ``cfg.num_labels`` outputs; an
    adapter without a head keeps the base's (a warning says so)."""
    from safetensors.numpy import load_file

    from rm_jax.core.console import get_logger

    pc = read_peft_config(adapter_dir)
    cfg = dataclasses.replace(
        cfg,
        lora_rank=int(pc["r"]),
        lora_alpha=float(pc["lora_alpha"]),
        lora_rslora=bool(pc.get("use_rslora", False)),
        lora_targets=pc["targets"],
        lora_dropout=float(pc.get("lora_dropout", 0.0)),  # a run continuing from it trains with it (docs/lora.md)
    )
    path = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}")
    tensors = load_file(path)
    heads = [n for n in _head_tensor_names(cfg.head) if n in tensors]
    expected = {
        f"{PEFT_PREFIX}model.layers.{i}.{HF_MODULES[name]}.{hf}.weight"
        for i in range(cfg.num_hidden_layers)
        for name in cfg.lora_targets
        for hf in ("lora_A", "lora_B")
    }
    unused = sorted(set(tensors) - expected - set(heads[:1]))
    if unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise ModelLoadError(
            f"{path}: tensor {unused[0]!r}{more} is not applied by rm_jax (it applies LoRA A/B on "
            f"{', '.join(HF_MODULES[t].split('.')[-1] for t in cfg.lora_targets)} and the "
            f"{'score' if cfg.head == 'reward' else 'lm_head'} head)"
        )
    shard = _flat(param_shardings_for(cfg, mesh))
    out = _flat(add_adapters(params, cfg, mesh))
    r = cfg.lora_rank

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise ModelLoadError(f"{path}: missing tensor {name!r} (rm_jax adapts a target module on every layer)")
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
                if w.shape[0 if x == "b" else 1] != r or w.size != math.prod(shape):
                    raise ModelLoadError(
                        f"{path}: {HF_MODULES[name]}.{hf} of layer {i} has shape {w.T.shape}, which does not fit "
                        f"rank {r} on this base"
                    )
                layers.append(w.reshape(shape))
                if not cfg.scan_layers:
                    out[leaf_key] = jax.device_put(layers[-1], shard[leaf_key])
            if cfg.scan_layers:
                out[key] = jax.device_put(np.stack(layers), shard[key])
    leaf = ("head_kernel",) if cfg.head == "reward" else ("lm_head_kernel",)
    if heads and leaf in out:
        w = take(heads[0]).T.copy()
        if w.shape != tuple(out[leaf].shape):
            what = (
                f"{w.shape[1]} outputs; this model predicts {cfg.num_labels} attributes"
                if cfg.head == "reward"
                else f"shape {w.T.shape}; this model's LM head is {tuple(out[leaf].shape)[::-1]}"
            )
            raise ModelLoadError(f"{path}: the head {heads[0]!r} has {what}")
        out[leaf] = jax.device_put(w, shard[leaf])
        if cfg.head == "lm":
            cfg = dataclasses.replace(cfg, lora_lm_head=True)
    elif heads:  # a tied LM head: PEFT would replace the (tied) output matrix, which rm_jax does not untie
        raise ModelLoadError(f"{path}: tensor {heads[0]!r}: the base's LM head is tied to its embedding")
    elif cfg.head == "reward":
        get_logger("models").warning(
            f"{adapter_dir}: the adapter has no score head (no score in modules_to_save): the base's head is used"
        )
    return cfg, _unflat(out)
