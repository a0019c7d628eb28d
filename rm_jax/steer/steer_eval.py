"""``rm-jax steer eval``: how closely a policy's responses follow requested attributes, judged by the RM.

For held-out prompts and a grid of requested attribute vectors, sample k responses each, score them with
the RM, and report per attribute the mean absolute error between requested and RM-predicted values (and
their mean), plus the mean reward under the presets. Writes ``steer_eval.json`` (key ``mean_abs_error``:
one value per attribute and ``mean``), ``steer_eval.md`` and ``steer_eval.png`` into the output folder.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import ATTRIBUTES, applicable_presets
from rm_jax.core.errors import InputError
from rm_jax.core.files import write_json, write_jsonl, write_text
from rm_jax.data.conversation import parse_attribute_label
from rm_jax.engine.scoring import score_rows
from rm_jax.runs import layout
from rm_jax.steer.prompts import labelled, read_prompts, targets_as_labels

# Requested vectors when none are given: the paper's favoured quality levels, spanning the two
# attributes users steer most (verbosity, complexity).
DEFAULT_TARGETS = tuple(
    f"helpfulness:4,correctness:4,coherence:4,complexity:{c},verbosity:{v}" for c in (1, 3) for v in (0, 2, 4)
)


def steer_eval(
    policy: Any,
    rm: str,
    input: str,
    output: str,
    *,
    targets: Optional[Sequence[Any]] = None,
    k: int = 4,
    prompts: Optional[int] = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 128,
    seed: int = 0,
    batch_size: int = 8,
    split: str = "validation",
    devices: str = "one",
    dtype: str = "float32",
    progress: bool = True,
) -> dict:
    """Evaluate ``policy`` (a folder or a loaded Policy) with the RM folder ``rm``; returns the results dict."""
    from rm_jax.policy import generate
    from rm_jax.steer.placement import policy as load
    from rm_jax.steer.placement import reward_model

    if k < 1:
        raise InputError(f"--k: must be at least 1, got {k}")
    labels = targets_as_labels(targets) or list(DEFAULT_TARGETS)
    requested = [parse_attribute_label(lab) for lab in labels]
    items = read_prompts(input, prompts, split=split)
    pol = load(policy, devices, dtype)
    jobs = [(p, t) for t in range(len(labels)) for p in items]
    texts = generate(
        pol,
        [labelled(p, labels[t]) for p, t in jobs],
        n=k,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
    )
    rm_model = reward_model(rm, devices, dtype)
    names = list(rm_model.attributes)
    rows, target_of = [], []
    for (p, t), ys in zip(jobs, texts):
        for y in ys:
            rows.append({"messages": p.messages + [{"role": "assistant", "content": y}]})
            target_of.append(t)
    pred, _ = score_rows(rm_model, rows, "helpfulness-only", batch_rows=batch_size, progress=progress, where=input)
    target_of = np.asarray(target_of)

    per_target, errs = [], {a: [] for a in names}
    for t, (lab, req) in enumerate(zip(labels, requested)):
        sel = target_of == t
        entry = {"label": lab, "samples": int(sel.sum()), "mean_abs_error": {}, "mean_predicted": {}}
        for a, level in req.items():
            if a not in names:
                raise InputError(f"--targets: {a!r} is not an attribute the RM predicts ({', '.join(names)})")
            e = np.abs(pred[sel, names.index(a)] - level)
            errs[a].append(e)
            entry["mean_abs_error"][a] = float(e.mean())
        entry["mean_predicted"] = {a: float(pred[sel, j].mean()) for j, a in enumerate(names)}
        vals = list(entry["mean_abs_error"].values())
        entry["mean_abs_error"]["mean"] = float(np.mean(vals))
        per_target.append(entry)
    mae = {a: float(np.concatenate(v).mean()) for a, v in errs.items() if v}
    mae["mean"] = float(np.mean([mae[a] for a in names if a in mae]))
    reward = (  # presets matched to the RM's attribute names (any order)
        {name: float((pred.astype(np.float64) @ w).mean()) for name, w in applicable_presets(names).items()}
        if sorted(names) == sorted(ATTRIBUTES)
        else {}
    )
    lengths = [len(pol.tokenizer(y, add_special_tokens=False)["input_ids"]) for ys in texts for y in ys]
    result = {
        "policy": os.path.abspath(policy) if isinstance(policy, str) else None,
        "rm": os.path.abspath(rm),
        "prompts": len(items),
        "k": k,
        "targets": labels,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "mean_abs_error": mae,
        "reward": reward,
        "mean_response_tokens": float(np.mean(lengths)),
        "per_target": per_target,
    }
    os.makedirs(output, exist_ok=True)
    write_jsonl(
        os.path.join(output, layout.STEER_SAMPLES),
        ({**p.row, "attributes": labels[t], "responses": list(ys)} for (p, t), ys in zip(jobs, texts)),
    )
    write_json(os.path.join(output, layout.STEER_EVAL), result)
    write_text(os.path.join(output, layout.STEER_EVAL_MD), format_steer_eval(result))
    plot_steer_eval(result, os.path.join(output, layout.STEER_EVAL_PLOT))
    return result


def format_steer_eval(result: dict) -> str:
    names = [a for a in result["mean_abs_error"] if a != "mean"]
    head = "| requested | " + " | ".join(f"MAE {a}" for a in names) + " | mean |"
    lines = [
        f"# steer eval: {result.get('policy')}",
        "",
        f"{result['prompts']} prompts x {len(result['targets'])} targets x k={result['k']}; judge: {result['rm']}",
        "",
        head,
        "|" + "---|" * (len(names) + 2),
    ]
    for e in result["per_target"]:
        lines.append(
            f"| {e['label']} | "
            + " | ".join(f"{e['mean_abs_error'][a]:.3f}" if a in e["mean_abs_error"] else "-" for a in names)
            + f" | {e['mean_abs_error']['mean']:.3f} |"
        )
    m = result["mean_abs_error"]
    lines.append("| **all** | " + " | ".join(f"{m[a]:.3f}" for a in names) + f" | **{m['mean']:.3f}** |")
    if result["reward"]:
        lines += ["", "mean reward: " + ", ".join(f"{k} {v:.3f}" for k, v in result["reward"].items())]
    return "\n".join(lines) + "\n"


def plot_steer_eval(result: dict, path: str) -> None:
    """Requested vs RM-predicted level per attribute, one point per target (the diagonal is perfect)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [a for a in result["mean_abs_error"] if a != "mean"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    for ax, a in zip(axes[0], names):
        req = [parse_attribute_label(e["label"]).get(a) for e in result["per_target"]]
        got = [e["mean_predicted"][a] for e in result["per_target"]]
        pts = [(r, g) for r, g in zip(req, got) if r is not None]
        ax.plot([0, 4], [0, 4], color="grey", linewidth=1)
        ax.scatter([r for r, _ in pts], [g for _, g in pts])
        ax.set_xlim(-0.3, 4.3)
        ax.set_ylim(-0.3, 4.3)
        ax.set_title(f"{a} (MAE {result['mean_abs_error'][a]:.2f})", fontsize=9)
        ax.set_xlabel("requested")
    axes[0][0].set_ylabel("RM-predicted (mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
