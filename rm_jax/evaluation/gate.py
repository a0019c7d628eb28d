"""A prompt-gated reward weighting (``rm-jax weights fit --gate``; ArmoRM's stage 2): an MLP on the RM's own
embedding of the prompt gives each prompt its weight vector over the predicted attributes.

The prompt embedding is the hidden state the head reads (after the final norm) at the last token of the prompt
conversation rendered with the chat template and its generation prompt: what precedes the response. The gate
is ``w(e) = orientation * scale * softmax(mlp(e) / temperature) / attribute_scale``:

* ``softmax * scale`` (``scale = exp(log_scale)``, learnt) keeps the weights of standardised attributes >= 0,
  as ArmoRM's gate (3 hidden layers of 1024 ReLU, temperature 10); the hidden layers are options here, small by
  default for small models;
* ``orientation`` is the sign of the constant fit on the same training pairs (``weights fit`` without
  ``--gate``), so an attribute the constant fit weighs negatively (HelpSteer2's verbosity) keeps that sign
  while the gate chooses how much of each attribute a prompt gets;
* ``attribute_scale`` standardises attribute differences as the constant fit does, so the gate does not
  depend on the attributes' scale.

Trained with the Bradley-Terry loss on the pairs (pair weights and folds by prompt exactly as
:mod:`.weight_fit`: the same ``fold_ids`` and ``pair_weights``; the constant fit and every preset are scored on
the same folds), full-batch Adam with L2 on the kernels for a fixed number of steps, deterministic from
``seed``. The output layer starts at zero, so training starts from a constant weighting and the kernels' L2
pulls toward one: where prompts do not call for different weightings the gate stays close to a constant.

A gate folder (``GATE_DIR``) holds ``gate.json`` (the settings, held-out accuracies, provenance) and
``gate.safetensors`` (the MLP and its fixed buffers); ``--weights GATE_DIR`` applies it per row. This module
reads and applies a gate; :mod:`.gate_fit` fits one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import is_gate_spec
from rm_jax.core.errors import InputError

GATE_JSON = "gate.json"


GATE_TENSORS = "gate.safetensors"


GATE_PREDICTIONS = "fit_predictions.jsonl"


EMBEDDING = (
    "the RM's final-norm hidden state at the last token of the prompt conversation rendered with the chat "
    "template and its generation prompt (what precedes the response)"
)


FORM = (
    "w(e) = orientation * exp(log_scale) * softmax(mlp((e - feature_mean) / feature_std) / temperature) / "
    "attribute_scale, per unit of raw attribute; reward = sum_a w_a(e) * attribute_a"
)


@dataclass(frozen=True)
class GateConfig:
    """The gate's MLP and its training (ArmoRM: hidden 1024, layers 3, temperature 10)."""

    hidden: int = 64
    layers: int = 2
    temperature: float = 10.0
    steps: int = 400
    lr: float = 3e-3
    l2: float = 1e-2  # on the kernels (not biases or the scale), relative to the mean BT loss
    seed: int = 0

    def check(self) -> None:
        for name in ("hidden", "layers", "steps"):
            if getattr(self, name) < 1:
                raise InputError(f"--gate-{name}: must be a positive integer, got {getattr(self, name)}")
        if not self.temperature > 0 or not self.lr > 0 or self.l2 < 0:
            raise InputError("--gate-temperature and --gate-lr must be positive and --gate-l2 non-negative")


def _mix(p: Mapping[str, Any], x: Any, layers: int, temperature: float, xp: Any) -> Any:
    """softmax(mlp(x) / T) * exp(log_scale): non-negative weights of standardised oriented attributes [N, A]."""
    for i in range(layers):
        x = xp.maximum(x @ p[f"hidden{i}.kernel"] + p[f"hidden{i}.bias"], 0.0)
    z = (x @ p["out.kernel"] + p["out.bias"]) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=-1, keepdims=True) * xp.exp(p["log_scale"])


def gate_weights(tensors: Mapping[str, np.ndarray], emb: np.ndarray, cfg: GateConfig) -> np.ndarray:
    """Weights per unit of raw attribute [N, A] (float64) for prompt embeddings ``emb`` [N, H]."""
    t = {k: np.asarray(a, np.float64) for k, a in tensors.items()}
    x = (np.asarray(emb, np.float64) - t["feature_mean"]) / t["feature_std"]
    return _mix(t, x, cfg.layers, cfg.temperature, np) * t["orientation"] / t["attribute_scale"]


@dataclass
class Gate:
    """A fitted gate read back from its folder."""

    path: str
    meta: dict
    tensors: dict[str, np.ndarray]

    @property
    def attributes(self) -> list[str]:
        return list(self.meta["attributes"])

    @property
    def hidden_size(self) -> int:
        return int(self.tensors["feature_mean"].shape[0])

    @property
    def label(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    @property
    def config(self) -> GateConfig:
        return GateConfig(**self.meta["gate"])

    def weights(self, emb: np.ndarray, attributes: Optional[Sequence[str]] = None) -> np.ndarray:
        """Weights [N, A] per unit of raw attribute for prompt embeddings [N, H], columns in ``attributes``'
        order (by name; default the gate's own)."""
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[1] != self.hidden_size:
            raise InputError(
                f"--weights {self.path}: the gate reads {self.hidden_size}-wide prompt embeddings; this model's "
                f"are {emb.shape[-1]} wide (a gate works only with the RM it was fitted on)"
            )
        w = gate_weights(self.tensors, emb, self.config)
        if attributes is None:
            return w
        check_gate_attributes(self, attributes)
        return w[:, [self.attributes.index(a) for a in attributes]]


def check_gate_attributes(gate: Gate, attributes: Sequence[str]) -> None:
    if sorted(gate.attributes) != sorted(attributes):
        raise InputError(
            f"--weights {gate.path}: the gate weighs {', '.join(gate.attributes)}; the model predicts "
            f"{', '.join(attributes)} (a gate works only with the RM it was fitted on)"
        )


def is_gate(spec: Any) -> bool:
    """Whether a ``--weights`` value names a gate folder (holding gate.json)."""
    return is_gate_spec(spec)


def load_gate(path: str) -> Gate:
    """A gate folder, checked: gate.json's settings and every tensor the MLP needs, with its shapes."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta_path, tensor_path = os.path.join(path, GATE_JSON), os.path.join(path, GATE_TENSORS)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        tensors = load_file(tensor_path)
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise InputError(f"--weights {path}: not a readable gate folder ({e})") from None
    try:
        cfg = GateConfig(**meta["gate"])
        n_attr, d = len(meta["attributes"]), tensors["feature_mean"].shape[0]
        want = {"feature_mean": (d,), "feature_std": (d,), "attribute_scale": (n_attr,), "orientation": (n_attr,)}
        for i in range(cfg.layers):
            want[f"hidden{i}.kernel"], want[f"hidden{i}.bias"] = (d, cfg.hidden), (cfg.hidden,)
            d = cfg.hidden
        want.update({"out.kernel": (d, n_attr), "out.bias": (n_attr,), "log_scale": ()})
        for k, shape in want.items():
            if tuple(tensors[k].shape) != shape:
                raise ValueError(f"tensor {k} has shape {tuple(tensors[k].shape)}, expected {shape}")
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"--weights {path}: {GATE_JSON} / {GATE_TENSORS} do not describe a gate ({e})") from None
    return Gate(path, meta, dict(tensors))


def prompt_embeddings(
    model: Any,
    prompts: Sequence[list[dict]],
    limit: int,
    batch_rows: int = 16,
    max_segments: int = 16,
    progress: bool = True,
    scorer: Any = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Embeddings [N, H] of prompt conversations (messages before the response), each distinct token sequence
    embedded once; a prompt longer than ``limit`` keeps its last ``limit`` tokens (counted as ``truncated``).
    ``scorer``: a :class:`rm_jax.engine.scoring.Scorer` of ``model`` to reuse (its compiled shapes are kept:
    the server embeds every request's prompts with one); default a new one."""
    from rm_jax.data.conversation import encode_prompts
    from rm_jax.engine.scoring import Scorer

    ids = encode_prompts(model.tokenizer, list(prompts), model.template)
    truncated = sum(len(x) > limit for x in ids)
    ids = [x[-limit:] for x in ids]
    index: dict[bytes, int] = {}
    which = np.asarray([index.setdefault(x.tobytes(), len(index)) for x in ids], np.int64)
    distinct = [None] * len(index)
    for x, k in zip(ids, which):
        distinct[k] = x
    scorer = scorer if scorer is not None else Scorer(model.cfg, model.params, model.mesh, model.pad_id)
    emb = scorer.embed(
        distinct, min(limit, max(64, -(-max(len(x) for x in distinct) // 64) * 64)), batch_rows, max_segments,
        progress, "prompts",
    )  # fmt: skip
    return emb[which], {"prompts": len(ids), "distinct_prompts": len(distinct), "truncated_prompts": truncated}


def prompt_of(conv: Mapping[str, Any]) -> list[dict]:
    """The messages before the response of a row in either form ({prompt, response} or {messages})."""
    from rm_jax.data.conversation import row_to_messages

    return row_to_messages(conv)[:-1]


def row_weights(
    gate: Gate,
    model: Any,
    convs: Sequence[Mapping[str, Any]],
    limit: int,
    batch_rows: int = 16,
    max_segments: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """Per-row weights [N, A] (model attribute order) of rows in either form: the gate on each row's prompt."""
    check_gate_attributes(gate, model.attributes)
    if not len(convs):
        return np.zeros((0, len(model.attributes)))
    emb, _ = prompt_embeddings(model, [prompt_of(c) for c in convs], limit, batch_rows, max_segments, progress)
    return gate.weights(emb, model.attributes)


def open_gate(spec: Any, attributes: Optional[Sequence[str]] = None) -> Gate:
    """The gate a ``--weights GATE_DIR`` names, checked against the model's attributes when given."""
    gate = load_gate(str(spec).strip())
    if attributes is not None:
        check_gate_attributes(gate, attributes)
    return gate
