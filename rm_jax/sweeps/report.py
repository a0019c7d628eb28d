"""Results of a sweep folder: ``results.csv``, ``results.md`` and PNG plots, from finished runs only.

Everything is recomputed from files the runs leave behind (``eval.json``,
``predictions/validation.jsonl``, ``predictions/rewardbench.jsonl``) and the sweep's ``plan.json``,
so ``rm-jax report SWEEP_DIR`` gives the same table whichever processes trained the runs.
One row per (run, reward weighting); changing a reward weighting never needs a forward pass.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from rm_jax.core.attributes import resolve_reward_weights
from rm_jax.core.config import PAIR_KINDS, ConfigError
from rm_jax.core.files import write_text
from rm_jax.evaluation.yardsticks import COLUMNS as YARDSTICK_COLUMNS
from rm_jax.evaluation.yardsticks import (
    TITLES,
    YARDSTICKS,
    load_yardstick_scores,
    yardstick_columns,
    yardstick_metrics,
)
from rm_jax.runs import layout

# Columns shown when their value differs between runs: (column, config section, key)
VARYING_COLUMNS = (
    ("seed", "train", "seed"),
    ("lr", "train", "lr"),
    ("loss", "loss", "type"),
    ("model_seed", "model", "seed"),
    ("subset_seed", "data", "subset_seed"),
    ("head", "model", "head"),
    ("pair_weight", "loss", "pair_weight"),
    ("pair_target", "loss", "pair_target"),
)
_AXIS_OF = {
    "train.seed": "seed",
    "train.lr": "lr",
    "loss.type": "loss",
    "model.seed": "model_seed",
    "data.subset_seed": "subset_seed",
    "model.head": "head",
    "loss.pair_weight": "pair_weight",
    "loss.pair_target": "pair_target",
    "data.fraction": "data_fraction",
    "loss.attribute_weights": "attribute_loss_weights",
}
SEED_COLUMNS = ("seed", "model_seed", "subset_seed")
RB_SECTIONS = ("chat", "chat_hard", "safety", "reasoning")


@dataclass
class Report:
    columns: list
    rows: list
    csv_path: str
    md_path: str
    markdown: str
    plots: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # runs without DONE
    notes: list = field(default_factory=list)


def load_plan(sweep_dir: str) -> dict:
    path = layout.plan_path(sweep_dir)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{sweep_dir}: not a sweep folder (no {layout.PLAN}; rm-jax sweep writes it)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None


def run_path(sweep_dir: str, rel: str) -> str:
    return rel if os.path.isabs(rel) else os.path.join(sweep_dir, rel)


def read_predictions(path: str, attributes: Sequence[str]) -> tuple:
    """(pred [N, A], labels [N, A], mask [N, A], group [N]) of predictions/validation.jsonl."""
    pred, lab, mask, group = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            pred.append([float(r["pred"][a]) for a in attributes])
            labels = r.get("label") or {}
            lab.append([0.0 if labels.get(a) is None else float(labels[a]) for a in attributes])
            mask.append([0.0 if labels.get(a) is None else 1.0 for a in attributes])
            group.append(int(r["group"]))
    n = len(attributes)
    shape = (len(pred), n)
    return (
        np.asarray(pred, np.float64).reshape(shape),
        np.asarray(lab, np.float64).reshape(shape),
        np.asarray(mask, np.float64).reshape(shape),
        np.asarray(group, np.int64),
    )


def _pairs_accuracy(reward: np.ndarray, group: np.ndarray) -> Optional[float]:
    """Pairs data: each group's first example is the chosen response."""
    first: dict[int, int] = {}
    correct = total = 0
    for i, g in enumerate(group.tolist()):
        if g not in first:
            first[g] = i
        else:
            total += 1
            correct += int(reward[first[g]] > reward[i])
    return correct / total if total else None


def run_rows(run: dict, sweep_dir: str, attributes: list, notes: list) -> Optional[list]:
    """Result rows of one finished run (one per reward weighting), or None if it is not finished."""
    from rm_jax.evaluation.metrics import attribute_metrics, pairwise_accuracy

    rd = run_path(sweep_dir, run["run_dir"])
    if not layout.is_done(rd):
        return None
    if run.get("step"):  # pipeline steps: only a policy evaluation has result rows
        return steer_eval_rows(run, rd) if run["step"] == "steer_eval" else []
    cfg = run["config"]
    if cfg.get("task", "rm") != "rm":  # a policy's numbers are its steer_eval rows and its eval.json
        return []
    ev: dict = {}
    if os.path.isfile(layout.eval_path(rd)):
        with open(layout.eval_path(rd), encoding="utf-8") as f:
            ev = json.load(f)
    train_rows = ev.get("train_rows")
    if train_rows is None and os.path.isfile(layout.data_report_path(rd)):
        with open(layout.data_report_path(rd), encoding="utf-8") as f:
            train_rows = (json.load(f).get("train") or {}).get("rows_used")
    base = {"train_rows": train_rows, "val_loss": ev.get("val_loss")}
    pred_path = layout.predictions_path(rd, "validation")
    pred = None
    if os.path.isfile(pred_path):
        pred, labels, mask, group = read_predictions(pred_path, attributes)
        if mask.any():
            per = attribute_metrics(pred, labels, mask, names=attributes)
            for a in attributes:
                base[f"pearson_{a}"] = per[a]["pearson"]
                base[f"mse_{a}"] = per[a]["mse"]
                base[f"qwk_{a}"] = per[a]["qwk"]
            base["qwk_mean"] = qwk_mean([per[a]["qwk"] for a in attributes])
    else:
        notes.append(f"{run['name']}: no predictions/validation.jsonl (no validation set?): metrics left empty")
    base.update(level_columns(ev.get("per_attribute") or {}, attributes))
    rb = None
    rb_path = layout.predictions_path(rd, "rewardbench")
    if cfg["eval"].get("rewardbench"):
        if os.path.isfile(rb_path):
            from rm_jax.evaluation.predictions import load_rewardbench_predictions

            rb = load_rewardbench_predictions(rb_path)
        else:
            notes.append(
                f"{run['name']}: eval.rewardbench is set but {rb_path} is missing "
                f"(re-run rm-jax sweep to score it): RewardBench columns left empty"
            )
    rb2 = _rb2_predictions(run, rd, notes)
    yard = _yardstick_predictions(run, rd, notes)
    rows = []
    for label, spec in run["evals"]:
        row = dict(base, reward_weights=label)
        w = resolve_reward_weights(spec, attributes)  # by attribute name
        if pred is not None and len(pred):
            reward = pred @ w
            if cfg["data"]["kind"] in PAIR_KINDS:
                row["pair_accuracy"] = _pairs_accuracy(reward, group)
            elif "helpfulness" in attributes:
                h = attributes.index("helpfulness")
                keep = mask[:, h] != 0
                row["pair_accuracy"] = pairwise_accuracy(reward[keep], labels[keep, h], group[keep].tolist())[
                    "accuracy"
                ]
        if rb is not None:
            from rm_jax.evaluation.rewardbench import score_pairs

            subsets, chosen, rejected, rb_attrs = rb
            wr = resolve_reward_weights(spec, rb_attrs)
            res = score_pairs(subsets, chosen @ wr, rejected @ wr)
            row["rewardbench_overall"] = res["overall"]
            for s in RB_SECTIONS:
                row[f"rewardbench_{s}"] = res["sections"].get(s)
        if rb2 is not None:
            row.update(rb2_columns(rb2, spec))
        for name, (data, ypred, yattrs) in yard.items():
            row.update(yardstick_columns(name, yardstick_metrics(name, data, ypred, yattrs, spec)))
        rows.append(row)
    return rows


def qwk_mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """Mean kappa over the attributes; None unless every attribute has one, so runs compare on the same set."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def level_columns(per_attribute: dict, attributes: Sequence[str]) -> dict:
    """``nll_<a>`` / ``ece_<a>`` and their means from eval.json's per_attribute (a distributional head's level
    probabilities are scored there, at the end of training); nothing for a regression head's run."""
    if not any("nll" in (per_attribute.get(a) or {}) for a in attributes):
        return {}
    out: dict = {}
    for key in ("nll", "ece"):
        vals = [(per_attribute.get(a) or {}).get(key) for a in attributes]
        out.update({f"{key}_{a}": v for a, v in zip(attributes, vals)})
        out[f"{key}_mean"] = qwk_mean(vals)  # None unless every attribute has one, as qwk_mean
    return out


def rb2_column(subset: str) -> str:
    """``Precise IF`` -> ``rb2_precise_if``."""
    return "rb2_" + "_".join(subset.lower().split())


def rb2_columns(rb2: tuple, spec: Any) -> dict:
    """``rb2_score`` and ``rb2_<subset>`` of saved RewardBench 2 predictions under one reward weighting."""
    from rm_jax.evaluation.rewardbench2 import score_sets, split_rewards

    sets, pred, attrs = rb2
    res = score_sets(sets, split_rewards(sets, pred @ resolve_reward_weights(spec, attrs)))
    return {"rb2_score": res["score"], **{rb2_column(k): v for k, v in res["subsets"].items()}}


def _rb2_predictions(run: dict, rd: str, notes: list) -> Optional[tuple]:
    if not run["config"]["eval"].get("rewardbench2"):
        return None
    path = layout.predictions_path(rd, "rewardbench2")
    if not os.path.isfile(path):
        notes.append(
            f"{run['name']}: eval.rewardbench2 is set but {path} is missing "
            f"(re-run rm-jax sweep to score it): RewardBench 2 columns left empty"
        )
        return None
    from rm_jax.evaluation.rewardbench2 import load_rewardbench2_scores

    return load_rewardbench2_scores(path)


def _yardstick_predictions(run: dict, rd: str, notes: list) -> dict:
    """{name: saved scores} of the yardsticks (rm_bench, judgebench, helpsteer3) the member's config names."""
    out = {}
    for name in YARDSTICKS:
        if not run["config"]["eval"].get(name):
            continue
        path = layout.predictions_path(rd, name)
        if not os.path.isfile(path):
            notes.append(
                f"{run['name']}: eval.{name} is set but {path} is missing "
                f"(re-run rm-jax sweep to score it): {TITLES[name]} columns left empty"
            )
            continue
        out[name] = load_yardstick_scores(name, path)
    return out


def steer_eval_rows(run: dict, rd: str) -> list:
    """One row for the evaluated policy: ``iteration`` and ``steer_mae_<attribute>`` / ``steer_mae_mean``
    (mean absolute error between requested and RM-predicted attribute values), plus its mean reward
    under each preset (``steer_reward_<preset>``)."""
    with open(os.path.join(rd, layout.STEER_EVAL), encoding="utf-8") as f:
        ev = json.load(f)
    row: dict[str, Any] = {"iteration": run.get("args", {}).get("iteration"), "policy": ev.get("policy")}
    for a, v in ev["mean_abs_error"].items():
        row[f"steer_mae_{a}"] = v
    for name, v in (ev.get("reward") or {}).items():
        row[f"steer_reward_{name}"] = v
    return [row]


def _column_values(plan: dict) -> tuple[list, list, dict]:
    """Descriptive columns that vary between runs, and their value per run name."""
    runs = plan["runs"]
    values: dict[str, dict] = {r["name"]: {} for r in runs}
    cols = []
    if plan.get("named_members"):
        cols.append("member")
        for r in runs:
            values[r["name"]]["member"] = r["member"]
    from rm_jax.sweeps.experiment_file import attribute_weights_label

    for r in runs:
        c = r["config"]
        v = values[r["name"]]
        if r.get("step") or c.get("task", "rm") != "rm":
            continue  # the base config's training columns say nothing about a step or a policy
        v["data_fraction"] = c["data"]["fraction"]
        v["attribute_loss_weights"] = r["labels"].get("loss.attribute_weights") or attribute_weights_label(
            c["loss"]["attribute_weights"], plan["attributes"]
        )
        defaults = {"head": "regression", "pair_weight": 0.0, "pair_target": "attributes"}  # older plan.json
        for col, sec, key in VARYING_COLUMNS:
            v[col] = c[sec].get(key, defaults.get(col))
    fixed = ["data_fraction", "attribute_loss_weights"]
    trained = [r for r in runs if not r.get("step") and r["config"].get("task", "rm") == "rm"]
    extra = [col for col, _, _ in VARYING_COLUMNS if len({json.dumps(values[r["name"]][col]) for r in trained}) > 1]
    for key in plan.get("varying", []):
        if key not in _AXIS_OF:
            extra.append(key)
            for r in runs:
                values[r["name"]][key] = r["labels"].get(key)
    return cols + fixed, extra, values


def _distributional(run: dict) -> bool:
    return (run["config"].get("model") or {}).get("head", "regression") != "regression"


def level_column_names(attributes: Sequence[str]) -> list[str]:
    return [f"{k}_{a}" for k in ("nll", "ece") for a in attributes] + ["nll_mean", "ece_mean"]


def build_report(sweep_dir: str, plots: bool = True) -> Report:
    plan = load_plan(sweep_dir)
    attributes = list(plan["attributes"])
    lead, extra, values = _column_values(plan)
    has_rb = any(r["config"]["eval"].get("rewardbench") for r in plan["runs"])
    columns = (
        ["run"]
        + lead
        + ["reward_weights"]
        + extra
        + ["train_rows", "val_loss"]
        + [f"pearson_{a}" for a in attributes]
        + [f"mse_{a}" for a in attributes]
        + [f"qwk_{a}" for a in attributes]
        + ["qwk_mean", "pair_accuracy"]
        + (level_column_names(attributes) if any(_distributional(r) for r in plan["runs"]) else [])
        + (["rewardbench_overall"] + [f"rewardbench_{s}" for s in RB_SECTIONS] if has_rb else [])
        + (["rb2_score"] if any(r["config"]["eval"].get("rewardbench2") for r in plan["runs"]) else [])
    )
    for name in YARDSTICKS:  # the headline and fixed parts; domain / category columns follow as found
        if any(r["config"]["eval"].get(name) for r in plan["runs"]):
            prefix, head, parts, _ = YARDSTICK_COLUMNS[name]
            columns += [f"{prefix}_{head}"] + [f"{prefix}_{k}" for k in parts]
    if any(r.get("step") == "steer_eval" for r in plan["runs"]):
        from rm_jax.core.attributes import REWARD_PRESETS

        columns += (
            ["iteration"]
            + [f"steer_mae_{a}" for a in attributes]
            + ["steer_mae_mean"]
            + [f"steer_reward_{p}" for p in REWARD_PRESETS]
        )
    rows, missing, notes = [], [], []
    for run in plan["runs"]:
        rr = run_rows(run, sweep_dir, attributes, notes)
        if rr is None:
            missing.append(run["name"])
            continue
        # RewardBench 2 subsets, RM-Bench domains, JudgeBench categories and HelpSteer3 domains are whatever
        # the data holds: their columns follow the headline's group, sorted
        for prefix in ("rb2_", *(f"{p}_" for p, _, _, _ in YARDSTICK_COLUMNS.values())):
            new = sorted({k for r in rr for k in r if k.startswith(prefix)} - set(columns))
            if new:
                at = max((i for i, c in enumerate(columns) if c.startswith(prefix)), default=len(columns) - 1) + 1
                columns[at:at] = new
        for r in rr:
            row = {"run": run["name"], **values[run["name"]], **r}
            rows.append({c: row.get(c) for c in columns})
    rows = [{c: r.get(c) for c in columns} for r in rows]  # rb2_<subset> columns may appear after a row
    if missing:
        notes.insert(0, f"{len(missing)} of {len(plan['runs'])} runs not finished (left out): {', '.join(missing)}")
    csv_path = os.path.join(sweep_dir, layout.RESULTS_CSV)
    md_path = os.path.join(sweep_dir, layout.RESULTS_MD)
    write_text(csv_path, to_csv(columns, rows))
    md = to_markdown(
        columns,
        rows,
        title=f"{plan.get('name', '')}: {len(plan['runs']) - len(missing)} of "
        f"{len(plan['runs'])} runs finished, {len(rows)} rows",
        notes=notes,
    )
    write_text(md_path, md)
    rep = Report(columns, rows, csv_path, md_path, md, missing=missing, notes=notes)
    title = plan.get("name") or os.path.basename(os.path.abspath(sweep_dir))
    rm_rows = [r for r in rows if r.get("reward_weights") is not None]
    if plots and rm_rows:
        rep.plots = make_plots(sweep_dir, rm_rows, columns, attributes, lead + extra, title=title)
    steer = [r for r in rows if r.get("steer_mae_mean") is not None]
    if plots and steer:
        rep.plots.append(make_steer_plot(sweep_dir, steer, attributes, title))
    return rep


# ---------------------------------------------------------------- tables


def _cell(v: Any, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}" if digits else repr(v)
    return str(v)


def to_csv(columns: list, rows: list) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c), 0) for c in columns])
    return buf.getvalue()


def to_markdown(columns: list, rows: list, title: str = "", notes: Sequence[str] = ()) -> str:
    def fmt(c: str, v: Any) -> str:
        if c in ("data_fraction", "lr") and isinstance(v, float):
            return f"{v:g}"
        s = _cell(v, 4)
        return s if s else "-"

    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        lines.append("| " + " | ".join(fmt(c, r.get(c)) for c in columns) + " |")
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots


def _line_key(row: dict, group_cols: list) -> str:
    parts = []
    for c in group_cols:
        v = row.get(c)
        parts.append(
            str(v)
            if c in ("attribute_loss_weights", "member")
            else f"{c}={v if not isinstance(v, float) else f'{v:g}'}"
        )
    return ", ".join(parts) or "runs"


def _aggregate(rows: list, metric: str, group_cols: list) -> dict:
    """line -> {fraction: [values over seeds]}."""
    out: dict[str, dict] = {}
    for r in rows:
        v = r.get(metric)
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out.setdefault(_line_key(r, group_cols), {}).setdefault(r["data_fraction"], []).append(float(v))
    return out


def _draw(ax: Any, data: dict, title: str, by_fraction: bool) -> None:
    if by_fraction:
        for line, pts in data.items():
            xs = sorted(pts)
            ys = [float(np.mean(pts[x])) for x in xs]
            es = [float(np.std(pts[x], ddof=1)) if len(pts[x]) > 1 else 0.0 for x in xs]
            if any(es):
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=line)
            else:
                ax.plot(xs, ys, marker="o", label=line)
        allx = sorted({x for pts in data.values() for x in pts})
        if allx and allx[-1] / max(allx[0], 1e-12) >= 5:
            ax.set_xscale("log")
        ax.set_xticks(allx)
        ax.set_xticklabels([f"{x:g}" for x in allx])
        ax.minorticks_off()
        ax.set_xlabel("data fraction")
    else:
        names = list(data)
        means = [float(np.mean([v for vs in data[n].values() for v in vs])) for n in names]
        errs = [
            float(np.std([v for vs in data[n].values() for v in vs], ddof=1))
            if sum(len(vs) for vs in data[n].values()) > 1
            else 0.0
            for n in names
        ]
        ax.bar(
            range(len(names)),
            means,
            yerr=errs if any(errs) else None,
            capsize=3,
            color=[f"C{i % 10}" for i in range(len(names))],
        )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def make_steer_plot(sweep_dir: str, rows: list, attributes: list, title: str = "") -> str:
    """steer_mae.png: attribute-following error per evaluated policy, by SteerLM 2.0 iteration (0 = Q')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r.get("iteration") is None, r.get("iteration") or 0))
    xs = [r["iteration"] if r.get("iteration") is not None else i for i, r in enumerate(rows)]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for a in attributes:
        ys = [r.get(f"steer_mae_{a}") for r in rows]
        if all(y is not None for y in ys):
            ax.plot(xs, ys, marker=".", alpha=0.6, label=a)
    ax.plot(xs, [r["steer_mae_mean"] for r in rows], marker="o", color="black", linewidth=2, label="mean")
    ax.set_xticks(xs)
    ax.set_xlabel("SteerLM 2.0 iteration (0 = the SFT policy Q')")
    ax.set_ylabel("|requested - RM-predicted| (0-4 scale)")
    ax.set_title(f"{title}: attribute-following error", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    path = layout.plot_path(sweep_dir, "steer_mae")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(sweep_dir: str, rows: list, columns: list, attributes: list, desc_cols: list, title: str = "") -> list:
    """results.png (every metric in one figure) and plots/<metric>.png; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_fraction = len({r["data_fraction"] for r in rows}) > 1
    group_cols = [
        c
        for c in desc_cols
        if c not in ("data_fraction",) + SEED_COLUMNS and len({json.dumps(r.get(c)) for r in rows}) > 1
    ]
    weightings = list(dict.fromkeys(r["reward_weights"] for r in rows))
    first_rw = [r for r in rows if r["reward_weights"] == weightings[0]]
    panels = []  # (file stem, title, aggregated data)
    titles = {
        "val_loss": "validation loss",
        "qwk_mean": "quadratic-weighted kappa (mean of attributes)",
        "nll_mean": "level NLL (mean of attributes)",
        "ece_mean": "ECE (mean of attributes)",
    }
    for metric in ["val_loss"] + [f"pearson_{a}" for a in attributes] + ["qwk_mean", "nll_mean", "ece_mean"]:
        d = _aggregate(first_rw, metric, group_cols)
        if d:
            panels.append((metric, titles.get(metric, metric.replace("_", " ", 1)), d))
    for metric in ["pair_accuracy", "rewardbench_overall", "rb2_score", "rmb_overall", "jb_overall", "hs3_accuracy"]:
        for rw in weightings:
            d = _aggregate([r for r in rows if r["reward_weights"] == rw], metric, group_cols)
            if d:
                panels.append((f"{metric}-{rw}", f"{metric.replace('_', ' ')} [{rw}]", d))
    if not panels:
        return []
    seeds = any(len(v) > 1 for _, _, d in panels for pts in d.values() for v in pts.values())
    suffix = " (mean ± std over seeds)" if seeds else ""
    paths = []
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    for ax, (_, panel_title, d) in zip(axes.flat, panels):
        _draw(ax, d, panel_title, by_fraction)
    spare = list(axes.flat)[len(panels) :]
    for ax in spare:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    legend_below = by_fraction and handles and not spare
    if by_fraction and handles:
        kw = dict(title=", ".join(group_cols) or None, fontsize=9)
        if spare:  # in the first empty panel
            spare[0].legend(handles, labels, loc="center", **kw)
        else:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), **kw)
    fig.suptitle(title + suffix)
    fig.tight_layout(rect=(0, 0.08 if legend_below else 0, 1, 0.96))
    overview = os.path.join(sweep_dir, layout.RESULTS_PLOT)
    _save(fig, overview)
    plt.close(fig)
    paths.append(overview)
    os.makedirs(layout.plots_dir(sweep_dir), exist_ok=True)
    for stem, panel_title, d in panels:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        _draw(ax, d, panel_title + suffix, by_fraction)
        if by_fraction:
            ax.legend(fontsize=8, title=", ".join(group_cols) or None, title_fontsize=8)
        fig.tight_layout()
        p = layout.plot_path(sweep_dir, stem)
        _save(fig, p)
        plt.close(fig)
        paths.append(p)
    return paths


def _save(fig: Any, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)


def print_report(rep: Any, out: Any) -> None:
    print(rep.markdown, file=out)
    if rep.plots:
        print(f"plot: {rep.plots[0]}", file=out)
        if len(rep.plots) > 1:
            print(
                f"per-metric plots: {os.path.dirname(rep.plots[1])}/ "
                f"({', '.join(os.path.basename(p) for p in rep.plots[1:])})",
                file=out,
            )
    print(f"table: {rep.csv_path} and {rep.md_path}", file=out)
