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
``gate.safetensors`` (the MLP and its fixed buffers); ``--weights GATE_DIR`` applies it per row.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS, is_gate_spec
from rm_jax.core.errors import InputError, ModelLoadError
from rm_jax.core.files import write_json
from rm_jax.evaluation.weight_fit import (
    ACCURACY,
    WEIGHTING_NOTE,
    attribute_scale,
    cross_validate,
    fit_bt,
    fold_ids,
    load_source_pairs,
    pair_weights,
    write_fit_predictions,
)

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
GATE_ACCURACY = (
    "pair-weighted share of held-out pairs with w(prompt) . (chosen - rejected) > 0 strictly, w fitted on the "
    "other folds; the constant fit and the presets on the same folds with the same pair weights"
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


# ----------------------------------------------------------------------------- the MLP (numpy params, JAX fit)


def init_gate(n_in: int, n_attr: int, cfg: GateConfig) -> dict[str, np.ndarray]:
    """Trainable parameters: He-initialised hidden layers from ``cfg.seed``, a zero output layer (a constant
    start), ``log_scale`` 0."""
    rng = np.random.default_rng(cfg.seed)
    p: dict[str, np.ndarray] = {}
    d = n_in
    for i in range(cfg.layers):
        p[f"hidden{i}.kernel"] = (rng.standard_normal((d, cfg.hidden)) * np.sqrt(2.0 / d)).astype(np.float32)
        p[f"hidden{i}.bias"] = np.zeros(cfg.hidden, np.float32)
        d = cfg.hidden
    p["out.kernel"] = np.zeros((d, n_attr), np.float32)
    p["out.bias"] = np.zeros(n_attr, np.float32)
    p["log_scale"] = np.zeros((), np.float32)
    return p


def _mix(p: Mapping[str, Any], x: Any, layers: int, temperature: float, xp: Any) -> Any:
    """softmax(mlp(x) / T) * exp(log_scale): non-negative weights of standardised oriented attributes [N, A]."""
    for i in range(layers):
        x = xp.maximum(x @ p[f"hidden{i}.kernel"] + p[f"hidden{i}.bias"], 0.0)
    z = (x @ p["out.kernel"] + p["out.bias"]) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=-1, keepdims=True) * xp.exp(p["log_scale"])


def train_gate(
    x: np.ndarray,
    pair_prompt: np.ndarray,
    d: np.ndarray,
    v: np.ndarray,
    cfg: GateConfig,
    start: Optional[np.ndarray] = None,
) -> dict[str, np.ndarray]:
    """Fit the gate on standardised prompt features ``x`` [P, H], standardised and oriented attribute
    differences ``d`` [n, A] of pairs whose prompt is row ``pair_prompt`` [n] of ``x``, pair weights ``v``
    [n] (0 leaves a pair out: every fold trains at one shape); ``start`` [A]: standardised oriented weights
    of a constant weighting to start from (the output kernel starts at 0). Minimises the v-weighted mean BT loss +
    ``l2 / 2 * |kernels|^2``; full-batch Adam, ``cfg.steps`` steps."""
    import jax.numpy as jnp

    params = init_gate(x.shape[1], d.shape[1], cfg)
    if start is not None:  # the output layer's bias and the scale: a constant weighting to start from
        u = np.abs(np.asarray(start, np.float64))
        total = u.sum()
        if total > 0:
            params["out.bias"] = (cfg.temperature * np.log(np.maximum(u / total, 1e-4))).astype(np.float32)
            params["log_scale"] = np.asarray(np.log(total), np.float32)
    params = {k: jnp.asarray(a) for k, a in params.items()}
    v = np.asarray(v, np.float64) / np.sum(v)
    args = (
        jnp.asarray(x, jnp.float32),
        jnp.asarray(pair_prompt),
        jnp.asarray(d, jnp.float32),
        jnp.asarray(v, jnp.float32),
    )
    with jax_highest():
        params = _trainer(cfg)(params, *args)
    return {k: np.asarray(a, np.float32) for k, a in params.items()}


def jax_highest() -> Any:
    import jax

    return jax.default_matmul_precision("highest")


@functools.lru_cache(maxsize=8)
def _trainer(cfg: GateConfig) -> Any:
    """One compiled trainer per configuration: every fold (same shapes, held-out pairs at weight 0) reuses it."""
    import jax
    import jax.numpy as jnp
    import optax

    opt = optax.adam(cfg.lr)

    def loss(p: Any, x: Any, idx: Any, d: Any, v: Any) -> Any:
        w = _mix(p, x, cfg.layers, cfg.temperature, jnp)[idx]
        nll = v @ jax.nn.softplus(-(w * d).sum(-1))
        return nll + 0.5 * cfg.l2 * sum(jnp.sum(jnp.square(a)) for k, a in p.items() if k.endswith("kernel"))

    def train(params: Any, x: Any, idx: Any, d: Any, v: Any) -> Any:
        def step(carry: Any, _: Any) -> Any:
            p, s = carry
            g = jax.grad(loss)(p, x, idx, d, v)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=cfg.steps)
        return params

    return jax.jit(train)


def _orientation(w: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(w) < 0, -1.0, 1.0)


def _feature_stats(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = e.mean(0)
    std = e.std(0)
    return mean, np.where(std > 1e-6, std, 1.0)


def fit_gate_params(
    emb: np.ndarray, pair_prompt: np.ndarray, d: np.ndarray, v: np.ndarray, l2: float, cfg: GateConfig
) -> dict[str, np.ndarray]:
    """Every tensor of a gate fitted on the pairs with ``v > 0``: the MLP plus its buffers (feature mean /
    std over those pairs' prompts, attribute scale and orientation from the constant fit on them)."""
    train = v > 0
    used = np.unique(pair_prompt[train])
    mean, std = _feature_stats(emb[used])
    s = attribute_scale(d[train], v[train])
    const = fit_bt(d[train], l2, v[train]) * s  # the constant fit's standardised weights: sign and start
    orient = _orientation(const)
    params = train_gate((emb - mean) / std, pair_prompt, d / s * orient, np.where(train, v, 0.0), cfg, const)
    buffers = {"feature_mean": mean, "feature_std": std, "attribute_scale": s, "orientation": orient}
    return {**params, **{k: np.asarray(a, np.float32) for k, a in buffers.items()}}


def gate_weights(tensors: Mapping[str, np.ndarray], emb: np.ndarray, cfg: GateConfig) -> np.ndarray:
    """Weights per unit of raw attribute [N, A] (float64) for prompt embeddings ``emb`` [N, H]."""
    t = {k: np.asarray(a, np.float64) for k, a in tensors.items()}
    x = (np.asarray(emb, np.float64) - t["feature_mean"]) / t["feature_std"]
    return _mix(t, x, cfg.layers, cfg.temperature, np) * t["orientation"] / t["attribute_scale"]


def row_accuracy(d: np.ndarray, w: np.ndarray, v: np.ndarray) -> float:
    """Pair-weighted share of pairs with w_i . d_i > 0 strictly (per-pair weights ``w`` [n, A])."""
    return float(v @ ((w * d).sum(-1) > 0) / v.sum()) if len(d) else float("nan")


# ----------------------------------------------------------------------------- folds and the report


def gate_report(
    emb: np.ndarray,
    pair_prompt: np.ndarray,
    d: np.ndarray,
    attributes: Sequence[str],
    prompt_ids: Sequence[str],
    folds: int = 5,
    l2: float = 0.01,
    seed: int = 0,
    pair_weighting: str = "prompt",
    cfg: GateConfig = GateConfig(),
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(gate.json's content less provenance, the final gate's tensors fitted on every pair). ``emb`` [P, H]:
    distinct prompt embeddings; ``pair_prompt`` [n]: each pair's row of ``emb``; ``d`` [n, A]: attribute
    differences chosen - rejected; ``prompt_ids``: the fold groups (:func:`.weight_fit.fold_ids`)."""
    cfg.check()
    if l2 <= 0:
        raise InputError(f"--l2: must be positive (the constant fit is then unique), got {l2}")
    d = np.asarray(d, np.float64)
    pair_prompt = np.asarray(pair_prompt, np.int64)
    attributes = list(attributes)
    presets = {n: np.asarray(w) for n, w in REWARD_PRESETS.items()} if tuple(attributes) == ATTRIBUTES else {}
    const = cross_validate(d, prompt_ids, folds, l2, seed, presets, pair_weighting)  # same folds: same seed
    v = pair_weights(prompt_ids, pair_weighting)
    fold = fold_ids(prompt_ids, folds, seed)
    assert np.array_equal(fold, const["fold_of_pair"])
    acc = []
    for k in range(folds):
        test = fold == k
        t = fit_gate_params(emb, pair_prompt, d, np.where(test, 0.0, v), l2, cfg)
        acc.append(row_accuracy(d[test], gate_weights(t, emb, cfg)[pair_prompt[test]], v[test]))
    tensors = fit_gate_params(emb, pair_prompt, d, v, l2, cfg)
    w_fit = gate_weights(tensors, emb, cfg)
    used = np.unique(pair_prompt)

    def by_name(x: np.ndarray) -> dict[str, float]:
        return {a: float(y) for a, y in zip(attributes, x)}

    report = {
        "kind": "gate",
        "attributes": attributes,
        "form": FORM,
        "embedding": EMBEDDING,
        "gate": dataclasses.asdict(cfg),
        "heldout_accuracy": {"mean": float(np.mean(acc)), "folds": acc},
        "train_accuracy": row_accuracy(d, w_fit[pair_prompt], v),
        "constant": {
            "heldout_accuracy": const["heldout"],
            "weights": by_name(fit_bt(d, l2, v)),
            "fold_weights": [by_name(w) for w in const["fold_weights"]],
        },
        "presets": const["presets"],
        "accuracy": GATE_ACCURACY,
        "pair_weighting": pair_weighting,
        "pair_weighting_note": WEIGHTING_NOTE[pair_weighting],
        "n_pairs": int(len(d)),
        "n_prompts": len(set(prompt_ids)),
        "n_embedded_prompts": int(len(used)),
        "folds": {"by": "prompt", "k": folds, "seed": seed, "pair_fold": [int(f) for f in fold]},
        "l2": l2,
        "orientation": by_name(tensors["orientation"]),
        "attribute_scale": by_name(tensors["attribute_scale"]),
        "weights_over_fit_prompts": {
            "mean": by_name(w_fit[used].mean(0)),
            "std": by_name(w_fit[used].std(0)),
            "note": "the gate's weights (per unit of raw attribute) over the fitted prompts",
        },
        "constant_accuracy_note": "the constant fit is rm-jax weights fit without --gate (" + ACCURACY + ")",
    }
    return report, tensors


# ----------------------------------------------------------------------------- a gate folder


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


def save_gate(out_dir: str, report: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, GATE_TENSORS + ".tmp")
    save_file({k: np.array(v, np.float32, order="C") for k, v in tensors.items()}, tmp)
    os.replace(tmp, os.path.join(out_dir, GATE_TENSORS))
    write_json(os.path.join(out_dir, GATE_JSON), dict(report))


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


# ----------------------------------------------------------------------------- prompt embeddings of a model


def prompt_embeddings(
    model: Any,
    prompts: Sequence[list[dict]],
    limit: int,
    batch_rows: int = 16,
    max_segments: int = 16,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, int]]:
    """Embeddings [N, H] of prompt conversations (messages before the response), each distinct token sequence
    embedded once; a prompt longer than ``limit`` keeps its last ``limit`` tokens (counted as ``truncated``)."""
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
    emb = Scorer(model.cfg, model.params, model.mesh, model.pad_id).embed(
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


# ----------------------------------------------------------------------------- rm-jax weights fit --gate


def fit_gate(
    output: str,
    *,
    model_path: str,
    kind: str,
    source: str,
    split: Optional[str] = None,
    folds: int = 5,
    l2: float = 0.01,
    seed: int = 0,
    pair_weighting: str = "prompt",
    cfg: GateConfig = GateConfig(),
    seq_len: Optional[int] = None,
    batch_rows: int = 16,
    max_segments: int = 16,
    dtype: str = "float32",
    progress: bool = True,
) -> dict:
    """Predict the pairs' attributes and embed their prompts once, cross-validate the gate against the
    constant fit and the presets, fit it on every pair; write ``output``/gate.json, gate.safetensors and the
    pairs' predictions (``fit_predictions.jsonl``, as ``weights fit`` writes them). Returns gate.json."""
    from rm_jax.evaluation.evaluate import predict_conversations, sequence_limit
    from rm_jax.runs.read import load_scoring_model

    cfg.check()
    convs, pairs, prompt_ids = load_source_pairs(kind, source, split)
    if not pairs:
        raise InputError(f"--{kind} {source}: no preference pairs (ties and missing labels are left out)")
    try:
        model = load_scoring_model(model_path, dtype=dtype)
    except FileNotFoundError as e:
        raise ModelLoadError(f"--model {model_path}: {e}") from None
    attributes = list(model.attributes)
    limit = sequence_limit(model, seq_len)
    pred, counts = predict_conversations(model, convs, limit, True, batch_rows, max_segments, progress, "pairs")
    c, r = np.asarray(pairs).T
    d = pred[c].astype(np.float64) - pred[r].astype(np.float64)
    # One embedding per pair's prompt (the chosen response's; a pair's two responses share it).
    emb, emb_counts = prompt_embeddings(
        model, [prompt_of(convs[i]) for i in c], limit, batch_rows, max_segments, progress
    )
    _, first, pair_prompt = np.unique(emb, axis=0, return_index=True, return_inverse=True)
    report, tensors = gate_report(
        emb[first], pair_prompt.reshape(-1), d, attributes, prompt_ids, folds, l2, seed, pair_weighting, cfg
    )
    os.makedirs(output, exist_ok=True)
    pred_path = os.path.join(output, GATE_PREDICTIONS)
    write_fit_predictions(pred_path, attributes, pred, pairs, prompt_ids)
    report.update(
        {
            "model": os.path.abspath(model_path),
            "hidden_size": int(emb.shape[1]),
            "source": {"kind": kind, "path": source, "split": split},
            "counts": {**counts, **emb_counts},
            "predictions_file": os.path.abspath(pred_path),
            "tensors": GATE_TENSORS,
        }
    )
    save_gate(output, report, tensors)
    return report


def format_gate(report: Mapping[str, Any]) -> str:
    """The held-out accuracy of the gate, the constant fit and every preset, as text."""
    k = report["folds"]["k"]
    lines = [
        f"{report['n_pairs']} pairs of {report['n_prompts']} prompts, {k}-fold held-out accuracy (%; folds by "
        f"prompt, pairs weighted by {report['pair_weighting']}):"
    ]
    header = f"  {'weights':<18} {'mean':>7} " + " ".join(f"{'fold ' + str(i + 1):>7}" for i in range(k))
    lines += [header, "  " + "-" * (len(header) - 2)]
    rows = [("gate", report["heldout_accuracy"]), ("constant fit", report["constant"]["heldout_accuracy"])]
    for name, r in rows + list(report["presets"].items()):
        lines.append(f"  {name:<18} {100 * r['mean']:>7.2f} " + " ".join(f"{100 * x:>7.2f}" for x in r["folds"]))
    w = report["weights_over_fit_prompts"]
    lines.append("\ngate weights over the fitted prompts (mean +- std, per unit of raw attribute):")
    lines += [f"  {a:<14} {w['mean'][a]:>9.4f} +- {w['std'][a]:.4f}" for a in report["attributes"]]
    return "\n".join(lines)
