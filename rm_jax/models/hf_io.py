"""Hugging Face folders in and out: config.json + safetensors (single file or sharded index).

Import reads one tensor at a time with safetensors' numpy API and places it straight onto its
target sharding (each device receives only its slice), so a model larger than one device loads.
Reward models: ``load_hf_reward_model`` reads ``*ForSequenceClassification`` folders with their head
(``id2label`` names the attributes) and ``*ForCausalLM`` folders with a freshly initialised head
(``task: rm`` from a base LM); ``export_hf`` writes a ``*ForSequenceClassification`` folder that
transformers loads and scores exactly as rm_jax does. Causal LMs (policies): ``load_hf_causal_lm`` reads
``*ForCausalLM`` folders with their LM head (tied or untied) and ``export_hf_causal_lm`` writes one.
One tensor-name map (``tensor_maps``) serves all four directions. No torch, no pickles.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from rm_jax.core.attributes import ATTRIBUTES, REWARD_HEAD
from rm_jax.core.errors import ModelLoadError
from rm_jax.core.files import read_json
from rm_jax.models import abstract_params, param_logical_specs
from rm_jax.models import heads as attr_heads
from rm_jax.models.llama import SUPPORTED_MODEL_TYPES, DecoderConfig
from rm_jax.models.sharding import logical_sharding, make_mesh

ARCH_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
)


@dataclass
class LoadedModel:
    cfg: DecoderConfig
    params: Any
    attribute_names: list[str]
    hf_config: dict
    path: str
    head_loaded: bool
    pad_token_id: Optional[int] = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- config

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.jinja", "*.model", "*.txt", "*.tiktoken"]


def resolve_model_dir(path: str) -> str:
    """A local folder as is; an ``org/name`` hub id downloaded (safetensors, configs and tokenizer
    files only) into the HF cache. The same loading code runs on both."""
    if os.path.isdir(path):
        return path
    if _HUB_ID.match(path) and not os.path.exists(path.split("/")[0]):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(path, allow_patterns=_HUB_FILES)
        except Exception as e:  # offline, gated, unknown id
            raise ModelLoadError(
                f"model {path!r} is not a local folder, and downloading it from the Hugging Face "
                f"hub failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
    raise ModelLoadError(f"model folder {path!r} does not exist (or is not a folder)")


def read_hf_config(path: str) -> dict:
    if not os.path.isdir(path):
        raise ModelLoadError(f"model folder {path!r} does not exist (or is not a folder)")
    cfg_path = os.path.join(path, "config.json")
    return read_json(cfg_path, f"{cfg_path}: missing; an HF model folder needs config.json", ModelLoadError)


def _rope(hf: dict) -> tuple[float, Optional[dict]]:
    """Both conventions: transformers<5 (rope_theta + rope_scaling) and >=5 (rope_parameters)."""
    rp = dict(hf.get("rope_parameters") or {})
    rs = hf.get("rope_scaling") or None
    theta = float(rp.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = dict(rs) if rs else ({k: v for k, v in rp.items() if k != "rope_theta"} if rp else None)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        scaling["rope_type"] = kind
        if kind == "default":
            scaling = None
    return theta, scaling


def decoder_config_from_hf(hf: dict, where: str = "config.json", **run_options: Any) -> DecoderConfig:
    mt = hf.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"{where}: unsupported model_type {mt!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if hf.get("mlp_bias"):
        raise ModelLoadError(f"{where}: mlp_bias=true is not supported")
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ModelLoadError(f"{where}: hidden_act {hf.get('hidden_act')!r} is not supported (only silu)")
    if float(hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ModelLoadError(f"{where}: partial_rotary_factor != 1 is not supported")
    try:
        n = int(hf["num_attention_heads"])
        h = int(hf["hidden_size"])
        theta, scaling = _rope(hf)
        if mt == "qwen2":
            qkv_bias, o_bias, qk_norm = True, False, False
        elif mt == "qwen3":
            qkv_bias = o_bias = bool(hf.get("attention_bias", False))
            qk_norm = True
        else:
            qkv_bias = o_bias = bool(hf.get("attention_bias", False))
            qk_norm = False
        window = hf.get("sliding_window")
        if mt in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
            window = None
        if (
            window is not None
            and mt in ("qwen2", "qwen3")
            and int(hf.get("max_window_layers", 0)) < int(hf["num_hidden_layers"])
        ):
            raise ModelLoadError(f"{where}: per-layer sliding windows (max_window_layers) are not supported")
        num_labels = int(hf.get("num_labels", len(hf.get("id2label") or {}) or len(ATTRIBUTES)))
        return DecoderConfig(
            model_type=mt,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=h,
            intermediate_size=int(hf["intermediate_size"]),
            num_hidden_layers=int(hf["num_hidden_layers"]),
            num_attention_heads=n,
            num_key_value_heads=int(hf.get("num_key_value_heads") or n),
            head_dim=int(hf.get("head_dim") or h // n),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            qk_norm=qk_norm,
            sliding_window=int(window) if window else None,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            num_labels=num_labels,
            **run_options,
        )
    except KeyError as e:
        raise ModelLoadError(f"{where}: missing field {e.args[0]!r}") from None


def hf_config_from_decoder(
    cfg: DecoderConfig,
    attribute_names: Sequence[str],
    base: Optional[dict] = None,
    pad_token_id: Optional[int] = None,
    extra: Optional[dict] = None,
) -> dict:
    """config.json for a ``*ForSequenceClassification`` folder (reward head) or a ``*ForCausalLM``
    folder (LM head). Keeps unknown fields of ``base``."""
    out = dict(base or {})
    for k in (
        "rope_parameters",
        "rope_scaling",
        "rope_theta",
        "architectures",
        "torch_dtype",
        "dtype",
        "auto_map",
        "quantization_config",
        "num_labels",
        "id2label",
        "label2id",
        "problem_type",
    ):
        out.pop(k, None)
    kind = "ForCausalLM" if cfg.head == "lm" else "ForSequenceClassification"
    out.update(
        {
            "model_type": cfg.model_type,
            "architectures": [f"{ARCH_NAMES[cfg.model_type]}{kind}"],
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta,
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "hidden_act": "silu",
            "initializer_range": cfg.initializer_range,
            "sliding_window": cfg.sliding_window,
            "pad_token_id": pad_token_id,
            "dtype": "float32",
        }
    )
    if cfg.head == "reward":
        labels = head_labels(cfg, attribute_names)
        out.update(
            {
                "num_labels": len(labels),
                "id2label": {str(i): n for i, n in enumerate(labels)},
                "label2id": {n: i for i, n in enumerate(labels)},
            }
        )
        if cfg.attribute_head == "regression":
            out["problem_type"] = "regression"
        # The head's kind for readers of the folder (docs/heads.md); replaces any a base model carried.
        head = {"head": cfg.attribute_head, "attributes": list(attribute_names), "label_levels": cfg.label_levels}
        if cfg.reward_head:
            head["reward_head"] = True
        stale = ("head", "attributes", "label_levels", "thresholds", "reward_head")
        out["rm_jax"] = {**{k: v for k, v in (out.get("rm_jax") or {}).items() if k not in stale}, **head}
    if cfg.rope_scaling:
        out["rope_scaling"] = dict(cfg.rope_scaling)
    if cfg.model_type == "llama":
        out["attention_bias"] = cfg.qkv_bias
    if cfg.model_type == "qwen3":
        out["attention_bias"] = cfg.qkv_bias
    if cfg.model_type in ("qwen2", "qwen3"):
        out["use_sliding_window"] = cfg.sliding_window is not None
        out["max_window_layers"] = cfg.num_hidden_layers
    extra = dict(extra or {})
    if isinstance(extra.get("rm_jax"), dict) and isinstance(out.get("rm_jax"), dict):
        extra["rm_jax"] = {**out["rm_jax"], **extra["rm_jax"]}
    out.update(extra)
    return out


def head_labels(cfg: DecoderConfig, attribute_names: Sequence[str]) -> list[str]:
    """The exported head's output names, attribute-major: ``a`` (regression), ``a=k`` (categorical logit of
    level k) or ``a>k`` (ordinal: logit P(a > k) once the threshold is subtracted, docs/heads.md), then
    ``reward_head`` for a separate reward output (the last logit)."""
    k = cfg.label_levels
    if cfg.attribute_head == "categorical":
        labels = [f"{a}={j}" for a in attribute_names for j in range(k)]
    elif cfg.attribute_head == "ordinal":
        labels = [f"{a}>{j}" for a in attribute_names for j in range(k - 1)]
    else:
        labels = list(attribute_names)
    return labels + ([REWARD_HEAD] if cfg.reward_head else [])


# ---------------------------------------------------------------- the name map


@dataclass(frozen=True)
class TensorMap:
    """One HF tensor <-> one rm_jax parameter leaf (``layer`` set for per-layer tensors)."""

    hf_name: str
    path: tuple[str, ...]
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    layer: Optional[int] = None


def tensor_maps(cfg: DecoderConfig, with_head: bool = True) -> list[TensorMap]:
    h, n, k, d, L = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
        cfg.num_hidden_layers,
    )
    ident = lambda w: w  # noqa: E731
    tr = lambda w: np.ascontiguousarray(w.T)  # noqa: E731

    def proj_in(heads: int) -> tuple[Callable, Callable]:
        return (
            lambda w: np.ascontiguousarray(w.T).reshape(h, heads, d),
            lambda w: np.ascontiguousarray(w.reshape(h, heads * d).T),
        )

    maps = [
        TensorMap("model.embed_tokens.weight", ("embedding",), ident, ident),
        TensorMap("model.norm.weight", ("final_norm", "scale"), ident, ident),
    ]
    for i in range(L):
        pre = f"model.layers.{i}."
        base = ("layers",) if cfg.scan_layers else (f"layers_{i}",)
        entries = []
        for name, heads in (("q", n), ("k", k), ("v", k)):
            fin, fout = proj_in(heads)
            entries.append((f"self_attn.{name}_proj.weight", ("attn", f"{name}_kernel"), fin, fout))
            if cfg.qkv_bias:
                entries.append(
                    (
                        f"self_attn.{name}_proj.bias",
                        ("attn", f"{name}_bias"),
                        lambda w, hh=heads: w.reshape(hh, d),
                        lambda w: w.reshape(-1),
                    )
                )
        entries.append(
            (
                "self_attn.o_proj.weight",
                ("attn", "o_kernel"),
                lambda w: np.ascontiguousarray(w.T).reshape(n, d, h),
                lambda w: np.ascontiguousarray(w.reshape(n * d, h).T),
            )
        )
        if cfg.o_bias:
            entries.append(("self_attn.o_proj.bias", ("attn", "o_bias"), ident, ident))
        if cfg.qk_norm:
            entries.append(("self_attn.q_norm.weight", ("attn", "q_norm", "scale"), ident, ident))
            entries.append(("self_attn.k_norm.weight", ("attn", "k_norm", "scale"), ident, ident))
        entries += [
            ("mlp.gate_proj.weight", ("mlp", "gate_kernel"), tr, tr),
            ("mlp.up_proj.weight", ("mlp", "up_kernel"), tr, tr),
            ("mlp.down_proj.weight", ("mlp", "down_kernel"), tr, tr),
            ("input_layernorm.weight", ("input_norm", "scale"), ident, ident),
            ("post_attention_layernorm.weight", ("post_attn_norm", "scale"), ident, ident),
        ]
        maps += [TensorMap(pre + hf, base + p, fj, fh, i if cfg.scan_layers else None) for hf, p, fj, fh in entries]
    if with_head and cfg.head == "reward":
        maps.append(TensorMap("score.weight", ("head_kernel",), *score_maps(cfg)))
    elif with_head and not cfg.tie_word_embeddings:  # a tied LM head is the embedding itself
        maps.append(TensorMap("lm_head.weight", ("lm_head_kernel",), tr, tr))
    return maps


def score_maps(cfg: DecoderConfig) -> tuple[Callable, Callable]:
    """(HF ``score.weight`` -> head_kernel, head_kernel -> ``score.weight``), rows attribute-major: row
    a * W + k is attribute a's output k. A categorical head's [H, A, K] kernel is K rows per attribute; an
    ordinal head's score f_a is written K-1 times (the thresholds go to config.json: a bias-free linear map
    cannot hold them), and read back from the first copy once every copy is checked equal."""
    h, a, k = cfg.hidden_size, cfg.num_labels, cfg.label_levels
    tr = lambda w: np.ascontiguousarray(w.T)  # noqa: E731
    if cfg.attribute_head == "categorical":
        return (lambda w: tr(w).reshape(h, a, k), lambda w: tr(w.reshape(h, a * k)))

    if cfg.attribute_head == "ordinal":

        def to_jax(w: np.ndarray) -> np.ndarray:
            if w.shape != (a * (k - 1), h):
                return tr(w)  # the caller names the shape mismatch
            copies = w.reshape(a, k - 1, h)
            spread = np.abs(copies - copies[:, :1]).max()
            if spread > 1e-6 * max(1.0, float(np.abs(copies).max())):
                raise ModelLoadError(
                    f"score.weight: the {k - 1} rows of each attribute differ (by up to {spread:.3g}); an ordinal "
                    f"head's rows are copies of one score vector (docs/heads.md)"
                )
            return tr(copies[:, 0])

        return (to_jax, lambda w: tr(np.repeat(w, k - 1, axis=1)))
    return (tr, tr)


def head_extra(cfg: DecoderConfig, params: Any) -> dict:
    """config.json fields a head's parameters add: an ordinal head's thresholds [A][K-1] under ``rm_jax``
    (z_{a,k} = logits[a * (K-1) + k] - thresholds[a][k]); nothing for the other heads."""
    if cfg.head != "reward" or cfg.attribute_head != "ordinal":
        return {}
    free = np.asarray(jax.device_get(params["head_thresholds"]), np.float32)
    theta = np.asarray(attr_heads.ordinal_thresholds(jnp.asarray(free)), np.float32)
    return {"rm_jax": {"thresholds": [[float(x) for x in row] for row in theta]}}


def read_head_config(hf: dict, where: str) -> Optional[tuple[str, list[str], int]]:
    """(head, attribute names, label levels) an rm_jax export names under ``rm_jax``; None when the folder
    says nothing (a regression RM from anywhere). Malformed fields are one-line errors naming the field."""
    meta = hf.get("rm_jax")
    if not isinstance(meta, dict) or "head" not in meta:
        return None
    kind, names, levels = meta.get("head"), meta.get("attributes"), meta.get("label_levels", 5)
    if kind not in attr_heads.ATTRIBUTE_HEADS:
        raise ModelLoadError(f"{where}: rm_jax.head {kind!r} is not one of {', '.join(attr_heads.ATTRIBUTE_HEADS)}")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelLoadError(f"{where}: rm_jax.attributes must be a non-empty list of names")
    if not isinstance(levels, int) or levels < 2:
        raise ModelLoadError(f"{where}: rm_jax.label_levels must be an integer >= 2, got {levels!r}")
    width = attr_heads.head_width(kind, levels)
    separate = read_reward_head(hf, where)
    if "num_labels" in hf and int(hf["num_labels"]) != len(names) * width + separate:
        raise ModelLoadError(
            f"{where}: num_labels {hf['num_labels']} is not {len(names)} attributes x {width} ({kind} head)"
            + (" + 1 (reward_head)" if separate else "")
        )
    return kind, names, levels


def read_reward_head(hf: dict, where: str) -> bool:
    """Whether an rm_jax export has a separate reward output (``rm_jax.reward_head``: score.weight's last row)."""
    value = (hf.get("rm_jax") or {}).get("reward_head", False) if isinstance(hf.get("rm_jax"), dict) else False
    if not isinstance(value, bool):
        raise ModelLoadError(f"{where}: rm_jax.reward_head must be true or false, got {value!r}")
    return value


def read_thresholds(hf: dict, where: str, n_attributes: int, levels: int) -> np.ndarray:
    """An ordinal export's free threshold parameters [A, K-1] from ``rm_jax.thresholds``."""
    theta = (hf.get("rm_jax") or {}).get("thresholds")
    try:
        arr = np.asarray(theta, np.float64)
        if arr.shape != (n_attributes, levels - 1) or not np.all(np.isfinite(arr)):
            raise ValueError(f"expected {n_attributes} x {levels - 1} finite numbers")
        return attr_heads.thresholds_to_raw(arr)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{where}: rm_jax.thresholds: {e}") from None


# ---------------------------------------------------------------- reading


class SafetensorsFolder:
    """Lazy access to the tensors of a folder (model.safetensors or a sharded index)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(index):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise ModelLoadError(f"{index}: unreadable sharded index ({e})") from None
        elif os.path.exists(single):
            weight_map = None
        else:
            found = [f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
            hint = f" (found {found[0]}: pickled weights are never loaded; convert to safetensors)" if found else ""
            raise ModelLoadError(f"{path}: no model.safetensors or model.safetensors.index.json{hint}")
        self._handles: dict[str, Any] = {}
        self._open = lambda fn: safe_open(os.path.join(path, fn), framework="numpy")
        if weight_map is None:
            h = self._handle("model.safetensors")
            self.weight_map = {k: "model.safetensors" for k in h.keys()}
        else:
            self.weight_map = dict(weight_map)

    def _handle(self, fn: str) -> Any:
        if fn not in self._handles:
            try:
                self._handles[fn] = self._open(fn)
            except Exception as e:  # safetensors raises several types for a bad file
                raise ModelLoadError(f"{os.path.join(self.path, fn)}: unreadable safetensors file ({e})") from None
        return self._handles[fn]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise ModelLoadError(f"{self.path}: tensor {name!r} is missing")
        return self._handle(self.weight_map[name]).get_tensor(name)


def _strip_prefix(names: Sequence[str]) -> str:
    """Some checkpoints (e.g. saved from a bare ``LlamaModel``) have no ``model.`` prefix."""
    return "" if any(n.startswith("model.") for n in names) else "model."


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    path = resolve_model_dir(path) if not os.path.isdir(path) and _HUB_ID.match(path) else path
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot load a tokenizer ({type(e).__name__}: {e})") from None


def load_hf_reward_model(
    path: str,
    mesh: Optional[Mesh] = None,
    *,
    seed: int = 0,
    attribute_names: Optional[Sequence[str]] = None,
    attribute_head: Optional[str] = None,
    label_levels: Optional[int] = None,
    base_dtype: str = "float32",
    float32_leaves: Sequence[str] = ("head_kernel", "head_thresholds", "lm_head_kernel"),
    reward_head: Optional[bool] = None,
    **run_options: Any,
) -> LoadedModel:
    """Load an HF ``*ForCausalLM`` or ``*ForSequenceClassification`` folder onto ``mesh``.

    run_options are DecoderConfig run fields (dtype, remat, scan_layers, attention). ``attribute_head`` /
    ``label_levels`` (training: ``model.head`` / ``model.label_levels``): the head wanted; None = the
    folder's own (an rm_jax export names it under ``rm_jax``; any other RM is a regression head). A folder
    whose head is of another kind gets a new head of the wanted kind (noted). ``base_dtype``: the
    storage dtype of every leaf but ``float32_leaves`` (a LoRA run's frozen base), cast tensor by tensor on
    the host before it is placed, so the base is never whole in float32 on a device. ``reward_head``: a separate
    reward output (loss.pair_target: separate), None = the folder's own; one the folder lacks starts new (noted),
    one the folder has but is not wanted is left out (noted).
    """
    path = resolve_model_dir(path)
    hf = read_hf_config(path)
    where = os.path.join(path, "config.json")
    archs = hf.get("architectures") or []
    is_rm = any(a.endswith("ForSequenceClassification") for a in archs)
    names = list(attribute_names) if attribute_names else None
    file_head = read_head_config(hf, where) if is_rm else None
    file_kind, file_levels = (file_head[0], file_head[2]) if file_head else ("regression", 5)
    kind = attribute_head or file_kind
    levels = label_levels or file_levels
    same_head = is_rm and kind == file_kind and (kind == "regression" or levels == file_levels)
    file_reward = bool(file_head) and read_reward_head(hf, where)
    separate = file_reward if reward_head is None else reward_head
    if is_rm:
        id2label = hf.get("id2label") or {}
        file_names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
        if file_head:
            file_names = file_head[1]
        if names is None:
            names = file_names or list(ATTRIBUTES)
        hf = dict(hf, num_labels=len(names))
    else:
        names = names or list(ATTRIBUTES)
        hf = dict(hf, num_labels=len(names))
    cfg = decoder_config_from_hf(
        hf, where, attribute_head=kind, label_levels=levels, reward_head=separate, **run_options
    )
    mesh = mesh or make_mesh(devices=jax.devices()[:1])
    folder = SafetensorsFolder(path)
    specs = param_logical_specs(cfg)
    abstract = abstract_params(cfg)
    head_loaded = same_head and "score.weight" in folder
    notes = []
    if is_rm and "score.weight" not in folder:
        notes.append("score.weight missing: head initialised")
    elif is_rm and not same_head:
        notes.append(f"the folder has a {file_kind} head; model.head={kind}: a new {kind} head initialised")
    params = init_head_only(cfg, abstract, specs, mesh, seed) if not head_loaded else {}
    if separate and head_loaded and not file_reward:
        params["reward_head_kernel"] = init_head_only(cfg, abstract, specs, mesh, seed)["reward_head_kernel"]
        notes.append("the folder has no separate reward output: reward_head initialised")
    elif head_loaded and file_reward and not separate:
        notes.append("the folder's separate reward output (reward_head) left out: loss.pair_target is not separate")
    if head_loaded and kind == "ordinal":
        free = read_thresholds(hf, where, cfg.num_labels, cfg.label_levels)
        params["head_thresholds"] = _place(free, logical_sharding(tuple(specs["head_thresholds"]), free.shape, mesh))

    store = _store_dtype(base_dtype, float32_leaves)
    _read_tensors(
        folder, path, cfg, tensor_maps(cfg, with_head=head_loaded), params, specs, abstract, mesh, store, file_reward
    )
    pad = hf.get("pad_token_id")
    return LoadedModel(cfg, params, list(names), hf, path, head_loaded, pad if isinstance(pad, int) else None, notes)


def _read_tensors(
    folder: SafetensorsFolder,
    path: str,
    cfg: DecoderConfig,
    maps: Sequence[TensorMap],
    params: dict,
    specs: Any,
    abstract: Any,
    mesh: Mesh,
    store: Optional[Callable[[tuple], Any]] = None,
    reward_row: bool = False,
) -> None:
    """Every mapped tensor, read one at a time and placed straight onto its sharding, into ``params``, in the
    dtype ``store(path)`` gives (float32 by default). ``reward_row``: score.weight's last row is a separate reward
    output (read into ``reward_head_kernel`` when the config has one, else dropped)."""
    prefix = _strip_prefix(list(folder.weight_map))
    stacked: dict[tuple[str, ...], list] = {}
    for m in maps:
        top = m.hf_name in ("score.weight", "lm_head.weight")
        hf_name = m.hf_name if top or not prefix else prefix + m.hf_name[len("model.") :]
        arr = folder.get(hf_name)
        if reward_row and m.hf_name == "score.weight":
            arr, last = np.asarray(arr)[:-1], np.asarray(arr)[-1]
            if cfg.reward_head:
                shape = _get(abstract, ("reward_head_kernel",)).shape
                if last.shape != shape:
                    raise ModelLoadError(f"{path}: score.weight's reward_head row has {last.shape[0]} values")
                sh = logical_sharding(tuple(specs["reward_head_kernel"]), shape, mesh)
                params["reward_head_kernel"] = _place(last.astype(np.float32), sh)
        target = _get(abstract, m.path)
        spec = _get(specs, m.path)
        if m.layer is not None:
            shape, axes = target.shape[1:], tuple(spec)[1:]
        else:
            shape, axes = target.shape, tuple(spec)
        w = m.to_jax(np.asarray(arr))
        if tuple(w.shape) != tuple(shape):
            raise ModelLoadError(
                f"{path}: tensor {hf_name!r} has shape {tuple(arr.shape)}, which does not fit "
                f"the config (expected {tuple(shape)} after layout change)"
            )
        placed = _place(w.astype(store(m.path) if store else np.float32), logical_sharding(axes, shape, mesh))
        if m.layer is not None:
            stacked.setdefault(m.path, [None] * cfg.num_hidden_layers)[m.layer] = placed
        else:
            _set(params, m.path, placed)
        del arr, w
    for p, layers in stacked.items():
        full = logical_sharding(tuple(_get(specs, p)), _get(abstract, p).shape, mesh)
        _set(params, p, jax.jit(lambda *xs: jnp.stack(xs), out_shardings=full)(*layers))


def load_hf_causal_lm(
    path: str,
    mesh: Optional[Mesh] = None,
    *,
    base_dtype: str = "float32",
    float32_leaves: Sequence[str] = ("head_kernel", "head_thresholds", "lm_head_kernel"),
    **run_options: Any,
) -> LoadedModel:
    """Load an HF ``*ForCausalLM`` folder (llama, mistral, qwen2, qwen3; tied or untied embeddings) as
    a policy: the same decoder with its LM head. run_options are DecoderConfig run fields; ``base_dtype`` and
    ``float32_leaves`` as in :func:`load_hf_reward_model`."""
    path = resolve_model_dir(path)
    hf = read_hf_config(path)
    where = os.path.join(path, "config.json")
    archs = hf.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelLoadError(f"{where}: {archs[0]} is a reward/classification model; a policy needs *ForCausalLM")
    cfg = decoder_config_from_hf(hf, where, head="lm", **run_options)
    mesh = mesh or make_mesh(devices=jax.devices()[:1])
    folder = SafetensorsFolder(path)
    if not cfg.tie_word_embeddings and "lm_head.weight" not in folder:
        raise ModelLoadError(f"{path}: tie_word_embeddings is false but the folder has no lm_head.weight")
    params: dict = {}
    store = _store_dtype(base_dtype, float32_leaves)
    specs, abstract = param_logical_specs(cfg), abstract_params(cfg)
    _read_tensors(folder, path, cfg, tensor_maps(cfg), params, specs, abstract, mesh, store)
    pad = hf.get("pad_token_id")
    return LoadedModel(cfg, params, [], hf, path, True, pad if isinstance(pad, int) else None, [])


def _store_dtype(base_dtype: str, float32_leaves: Sequence[str]) -> Callable[[tuple], Any]:
    """path -> the numpy dtype a loaded leaf is stored in: ``base_dtype`` but float32 for ``float32_leaves``."""
    base = np.dtype(jnp.dtype(base_dtype))
    return lambda p: np.float32 if p[-1] in float32_leaves else base


def _place(w: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Each device gets only its slice of the host array."""
    return jax.make_array_from_callback(w.shape, sharding, lambda idx: w[idx])


def init_head_only(cfg: DecoderConfig, abstract: Any, specs: Any, mesh: Mesh, seed: int) -> dict:
    """A new head, std = initializer_range, as transformers initialises ``score`` (an ordinal head's
    thresholds as a from-scratch model's, rm_jax.models.heads.thresholds_init)."""
    shape = _get(abstract, ("head_kernel",)).shape
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * cfg.initializer_range).astype(np.float32)
    out = {"head_kernel": _place(w, logical_sharding(tuple(specs["head_kernel"]), shape, mesh))}
    if "reward_head_kernel" in abstract:
        shape = abstract["reward_head_kernel"].shape
        r = (rng.standard_normal(shape) * cfg.initializer_range).astype(np.float32)
        out["reward_head_kernel"] = _place(r, logical_sharding(tuple(specs["reward_head_kernel"]), shape, mesh))
    if "head_thresholds" in abstract:
        shape = abstract["head_thresholds"].shape
        free = np.asarray(attr_heads.thresholds_init(None, shape), np.float32)
        out["head_thresholds"] = _place(free, logical_sharding(tuple(specs["head_thresholds"]), shape, mesh))
    return out


def _get(tree: Any, path: Sequence[str]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: Sequence[str], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


# ---------------------------------------------------------------- writing


def iter_hf_tensors(cfg: DecoderConfig, params: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, host array) pairs, one at a time, gathered from any sharding."""
    for m in tensor_maps(cfg, with_head=True):
        leaf = _get(params, m.path)
        arr = np.asarray(jax.device_get(leaf[m.layer] if m.layer is not None else leaf), dtype=np.float32)
        out = m.to_hf(arr)
        if m.hf_name == "score.weight" and cfg.reward_head:  # the separate reward: one more logit, the last
            reward_row = np.asarray(jax.device_get(params["reward_head_kernel"]), np.float32)[None]
            out = np.concatenate([out, reward_row])
        yield m.hf_name, np.ascontiguousarray(out)


def export_hf(
    cfg: DecoderConfig,
    params: Any,
    out_dir: str,
    attribute_names: Sequence[str] = (),
    tokenizer: Any = None,
    base_hf_config: Optional[dict] = None,
    max_shard_bytes: int = 5 * 2**30,
    extra: Optional[dict] = None,
) -> str:
    """Write a ``*ForSequenceClassification`` folder (reward head) or a ``*ForCausalLM`` folder (LM
    head): config.json (plus ``extra`` fields), safetensors (sharded past ``max_shard_bytes``), and the
    tokenizer with its chat template. Written to a temporary folder and renamed, so a crash never
    leaves a half-written model behind."""
    from safetensors.numpy import save_file

    if cfg.head == "reward" and len(attribute_names) != cfg.num_labels:
        raise ValueError(f"{len(attribute_names)} attribute names for a head with {cfg.num_labels} outputs")
    out_dir = os.path.abspath(out_dir)
    tmp = out_dir + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    pad_id = _pad_token_id(tokenizer, base_hf_config)
    extra = dict(extra or {})
    thresholds = head_extra(cfg, params).get("rm_jax")
    if thresholds:
        extra["rm_jax"] = {**(extra.get("rm_jax") or {}), **thresholds}
    hf = hf_config_from_decoder(cfg, attribute_names, base_hf_config, pad_id, extra)
    with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf, f, indent=2, sort_keys=True)

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in iter_hf_tensors(cfg, params):
        if size and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    if len(shards) == 1:
        save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map, total = {}, 0
        for i, shard in enumerate(shards):
            fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(tmp, fn), metadata={"format": "pt"})
            weight_map.update({k: fn for k in shard})
            total += sum(a.nbytes for a in shard.values())
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def export_hf_causal_lm(
    cfg: DecoderConfig,
    params: Any,
    out_dir: str,
    tokenizer: Any = None,
    base_hf_config: Optional[dict] = None,
    max_shard_bytes: int = 5 * 2**30,
    extra: Optional[dict] = None,
) -> str:
    """Write a ``*ForCausalLM`` folder (``AutoModelForCausalLM.from_pretrained`` gives the same logits):
    config.json (with the tokenizer's bos/eos ids, so transformers' ``generate`` stops where rm_jax does),
    safetensors (``lm_head.weight`` unless the head is tied to the embedding), and the tokenizer with its
    chat template. See :func:`export_hf`."""
    if cfg.head != "lm":
        raise ValueError(f"export_hf_causal_lm: the config has a {cfg.head!r} head; use export_hf for reward models")
    ids = {k: getattr(tokenizer, k, None) for k in ("bos_token_id", "eos_token_id")} if tokenizer is not None else {}
    ids = {k: int(v) for k, v in ids.items() if isinstance(v, int)}
    return export_hf(cfg, params, out_dir, (), tokenizer, base_hf_config, max_shard_bytes, {**ids, **(extra or {})})


def _pad_token_id(tokenizer: Any, base: Optional[dict]) -> Optional[int]:
    if tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is not None:
        return int(tokenizer.pad_token_id)
    if base and isinstance(base.get("pad_token_id"), int):
        return int(base["pad_token_id"])
    return None
