"""Fitting a prompt gate (``rm-jax weights fit --gate``): k-fold cross-validation against the constant fit and the
presets on the same folds (:mod:`.weight_fit`), then the gate fitted on every pair and written as a folder that
:mod:`.gate` reads at scoring time."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.core.errors import InputError
from rm_jax.core.files import write_json
from rm_jax.evaluation.gate import (
    EMBEDDING,
    FORM,
    GATE_JSON,
    GATE_PREDICTIONS,
    GATE_TENSORS,
    GateConfig,
    _mix,
    gate_weights,
    prompt_embeddings,
    prompt_of,
)
from rm_jax.evaluation.weight_fit import (
    ACCURACY,
    WEIGHTING_NOTE,
    attribute_scale,
    cross_validate,
    fit_bt,
    fold_ids,
    pair_weights,
    predict_source_pairs,
    write_fit_predictions,
)

GATE_ACCURACY = (
    "pair-weighted share of held-out pairs with w(prompt) . (chosen - rejected) > 0 strictly, w fitted on the "
    "other folds; the constant fit and the presets on the same folds with the same pair weights"
)


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


def row_accuracy(d: np.ndarray, w: np.ndarray, v: np.ndarray) -> float:
    """Pair-weighted share of pairs with w_i . d_i > 0 strictly (per-pair weights ``w`` [n, A])."""
    return float(v @ ((w * d).sum(-1) > 0) / v.sum()) if len(d) else float("nan")


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


def save_gate(out_dir: str, report: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, GATE_TENSORS + ".tmp")
    save_file({k: np.array(v, np.float32, order="C") for k, v in tensors.items()}, tmp)
    os.replace(tmp, os.path.join(out_dir, GATE_TENSORS))
    write_json(os.path.join(out_dir, GATE_JSON), dict(report))


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
    cfg.check()
    sp = predict_source_pairs(model_path, kind, source, split, seq_len, batch_rows, max_segments, dtype, progress)
    model, limit, convs, pairs, prompt_ids = sp.model, sp.limit, sp.convs, sp.pairs, sp.prompt_ids
    attributes, pred, counts, d = sp.attributes, sp.pred, sp.counts, sp.differences
    c = np.asarray(pairs)[:, 0]
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
