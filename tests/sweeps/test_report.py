"""Sweep results with RewardBench 2: ``rb2_score`` / ``rb2_<subset>`` columns per reward weighting, recomputed
from each run's saved per-completion predictions, a plot panel, and ``rm-jax report`` rebuilding the same; and the
quadratic-weighted kappa columns ``qwk_<attribute>`` / ``qwk_mean`` from the saved validation predictions."""

import csv
import io
import json
import os

import numpy as np
import yaml
from sklearn.metrics import cohen_kappa_score

from rm_jax import cli
from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.data.rewardbench2_sets import load_rewardbench2
from rm_jax.sweeps.report import qwk_mean
from rm_jax.sweeps.runner import sweep
from tests.evaluation.test_rewardbench2 import plain_run_v2
from tests.helpers import fake_train, tiny_base


def fake_train_rb2(cfg):
    """fake_train plus what score_rewardbench2 leaves: per-completion attribute predictions of the bundled
    RewardBench 2 sample, better with more data (the correct completions get a bonus)."""
    rd = fake_train(cfg)
    rng = np.random.default_rng(int(cfg.data.fraction * 10))
    with open(os.path.join(rd, "predictions", "rewardbench2.jsonl"), "w") as f:
        for s in load_rewardbench2(cfg.eval.rewardbench2):
            for j in range(len(s.completions)):
                bonus = cfg.data.fraction * (j < s.num_correct)
                attrs = {a: float(np.round(rng.normal() + bonus, 1)) for a in ATTRIBUTES}  # rounded: exact ties
                f.write(json.dumps({"id": s.id, "subset": s.subset, "index": j, "correct": j < s.num_correct,
                                    "reward": None, "attributes": attrs}) + "\n")  # fmt: skip
    return rd


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_rb2_columns_and_panel(data_files, tmp_path):
    base = tiny_base(data_files)
    base["eval"] = {"rewardbench2": "bundled"}
    exp = tmp_path / "e.yaml"
    exp.write_text(
        yaml.safe_dump(
            {"base": base, "sweep": {"data.fraction": [0.2, 1.0], "eval.reward_weights": list(REWARD_PRESETS)[:2]}}
        )
    )
    sd = tmp_path / "s"
    assert sweep(str(exp), [f"sweep_dir={sd}"], trainer=fake_train_rb2, out=io.StringIO()) == 0
    rows = _csv(sd / "results.csv")
    cols = list(rows[0])
    subsets = ["rb2_factuality", "rb2_focus", "rb2_math", "rb2_ties"]
    assert cols[cols.index("rb2_score") :][:5] == ["rb2_score"] + subsets
    sets = load_rewardbench2("bundled")
    for r in rows:
        recs = [json.loads(line) for line in open(sd / r["run"] / "predictions" / "rewardbench2.jsonl")]
        w = np.asarray(REWARD_PRESETS[r["reward_weights"]])
        flat = list(np.array([[rec["attributes"][a] for a in ATTRIBUTES] for rec in recs]) @ w)
        scores, i = [], 0
        for s in sets:
            scores.append(flat[i : i + len(s.completions)])
            i += len(s.completions)
        rows_ = [{"id": s.id, "subset": s.subset, "num_correct": s.num_correct} for s in sets]
        want_score, want = plain_run_v2(rows_, scores)
        assert abs(float(r["rb2_score"]) - want_score) < 1e-6
        for name, v in want.items():
            assert abs(float(r["rb2_" + "_".join(name.lower().split())]) - v) < 1e-6
    by_frac = {r["data_fraction"]: float(r["rb2_score"]) for r in rows if r["reward_weights"] == "340b-rewardbench"}
    assert by_frac["1.0"] > by_frac["0.2"]
    assert (sd / "plots" / "rb2_score-340b-rewardbench.png").exists()
    assert "rb2_score" in (sd / "results.md").read_text()
    _check_qwk_columns(sd, rows, cols)

    before = (sd / "results.csv").read_text()
    (sd / "results.csv").unlink()
    assert cli.main(["report", str(sd)]) == 0
    assert (sd / "results.csv").read_text() == before


def _check_qwk_columns(sd, rows, cols):
    """qwk_<attribute> is scikit-learn's quadratic kappa of the run's validation predictions, rounded half up and
    clipped to 0..4; qwk_mean their mean; the same for every reward weighting of a run; a panel of the mean."""
    assert cols[cols.index("qwk_helpfulness") :][:6] == [f"qwk_{a}" for a in ATTRIBUTES] + ["qwk_mean"]
    mean_by_frac = {}
    for r in rows:
        recs = [json.loads(line) for line in open(sd / r["run"] / "predictions" / "validation.jsonl")]
        want = []
        for a in ATTRIBUTES:
            t = np.array([rec["label"][a] for rec in recs], int)
            p = np.clip(np.floor(np.array([rec["pred"][a] for rec in recs]) + 0.5), 0, 4).astype(int)
            want.append(cohen_kappa_score(t, p, weights="quadratic", labels=list(range(5))))
            assert abs(float(r[f"qwk_{a}"]) - want[-1]) < 1e-9, (r["run"], a)
        assert abs(float(r["qwk_mean"]) - np.mean(want)) < 1e-9
        mean_by_frac.setdefault(r["data_fraction"], set()).add(r["qwk_mean"])
    assert all(len(v) == 1 for v in mean_by_frac.values())  # a property of the run, not of the weighting
    assert float(next(iter(mean_by_frac["1.0"]))) > float(next(iter(mean_by_frac["0.2"])))  # less noise, more kappa
    assert (sd / "plots" / "qwk_mean.png").stat().st_size > 1000
    assert qwk_mean([0.5, None, 0.7]) is None and qwk_mean([0.5, 0.7]) == 0.6


def test_missing_rb2_predictions_noted(data_files, tmp_path):
    base = tiny_base(data_files)
    base["eval"] = {"rewardbench2": "bundled"}
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump({"base": base}))
    sd = tmp_path / "s"
    # a finished run whose predictions file went missing: the report says so and leaves the columns empty
    from rm_jax.sweeps.report import build_report

    assert sweep(str(exp), [f"sweep_dir={sd}"], trainer=fake_train_rb2, out=io.StringIO()) == 0
    run_dir = next(p for p in sd.iterdir() if (p / "DONE").exists())
    (run_dir / "predictions" / "rewardbench2.jsonl").unlink()
    rep = build_report(str(sd), plots=False)
    assert any("rewardbench2" in n and "missing" in n for n in rep.notes)
    assert all(r["rb2_score"] is None for r in rep.rows)


def test_fitted_w_json_as_an_eval_weighting(data_files, tmp_path):
    w = {a: v for a, v in zip(ATTRIBUTES, (0.9, 0.1, -0.3, 0.0, 0.4))}
    (tmp_path / "W.json").write_text(json.dumps({"weights": w}))
    base = tiny_base(data_files)
    base["eval"] = {"rewardbench2": "bundled", "reward_weights": [str(tmp_path / "W.json"), "goodness"]}
    exp = tmp_path / "e.yaml"
    exp.write_text(yaml.safe_dump({"base": base}))
    sd = tmp_path / "s"
    assert sweep(str(exp), [f"sweep_dir={sd}"], trainer=fake_train_rb2, out=io.StringIO()) == 0
    rows = _csv(sd / "results.csv")
    assert len(rows) == 2 and rows[0]["reward_weights"].endswith("W.json")
    recs = [json.loads(line) for line in open(sd / rows[0]["run"] / "predictions" / "rewardbench2.jsonl")]
    # the same float arithmetic as the reward everywhere (a dot product): rounded attributes make exact ties
    flat = list(np.array([[rec["attributes"][a] for a in ATTRIBUTES] for rec in recs]) @ np.array(list(w.values())))
    sets = load_rewardbench2("bundled")
    bounds = np.cumsum([0] + [len(s.completions) for s in sets])
    rows_ = [{"id": s.id, "subset": s.subset, "num_correct": s.num_correct} for s in sets]
    want, _ = plain_run_v2(rows_, [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])])
    assert abs(float(rows[0]["rb2_score"]) - want) < 1e-6
    assert rows[0]["rb2_score"] != rows[1]["rb2_score"]


def fake_train_levels(cfg):
    """fake_train plus a distributional head's eval.json nll / ece (metrics.py's functions of random level
    probabilities, which are saved next to it as levels.npy)."""
    from rm_jax.evaluation.metrics import attribute_metrics

    rd = fake_train(cfg)
    if cfg.model.head == "regression":
        return rd
    recs = [json.loads(line) for line in open(os.path.join(rd, "predictions", "validation.jsonl"))]
    labels = np.array([[rec["label"][a] for a in ATTRIBUTES] for rec in recs], np.float64)
    pred = np.array([[rec["pred"][a] for a in ATTRIBUTES] for rec in recs], np.float64)
    probs = np.random.default_rng(int(10 * cfg.loss.pair_weight)).dirichlet(np.ones(5), size=labels.shape)
    np.save(os.path.join(rd, "levels.npy"), probs)
    ev = json.load(open(os.path.join(rd, "eval.json")))
    ev["per_attribute"] = attribute_metrics(pred, labels, probs=probs)
    json.dump(ev, open(os.path.join(rd, "eval.json"), "w"))
    return rd


def test_head_and_pair_weight_axes_give_columns_and_nll_ece_from_metrics(data_files, tmp_path):
    from rm_jax.evaluation.metrics import expected_calibration_error, level_nll

    exp = tmp_path / "e.yaml"
    sweep_axes = {"model.head": ["regression", "categorical", "ordinal"], "loss.pair_weight": [0, 1]}
    base = {**tiny_base(data_files), "eval": {"reward_weights": ["helpfulness-only"]}}
    exp.write_text(yaml.safe_dump({"base": base, "sweep": sweep_axes}))
    sd = tmp_path / "s"
    assert sweep(str(exp), [f"sweep_dir={sd}"], trainer=fake_train_levels, out=io.StringIO()) == 0
    rows = _csv(sd / "results.csv")
    assert len(rows) == 6 and {(r["head"], float(r["pair_weight"])) for r in rows} == {
        (h, w) for h in sweep_axes["model.head"] for w in (0.0, 1.0)
    }
    for r in rows:
        if r["head"] == "regression":
            assert r["nll_mean"] == "" and r["ece_helpfulness"] == ""
            continue
        probs = np.load(sd / r["run"] / "levels.npy")
        recs = [json.loads(line) for line in open(sd / r["run"] / "predictions" / "validation.jsonl")]
        nll, ece = [], []
        for j, a in enumerate(ATTRIBUTES):
            labels = np.array([rec["label"][a] for rec in recs])
            nll.append(level_nll(probs[:, j], labels))
            ece.append(expected_calibration_error(probs[:, j], labels))
            assert abs(float(r[f"nll_{a}"]) - nll[-1]) < 1e-9 and abs(float(r[f"ece_{a}"]) - ece[-1]) < 1e-9
        assert abs(float(r["nll_mean"]) - np.mean(nll)) < 1e-9 and abs(float(r["ece_mean"]) - np.mean(ece)) < 1e-9
    assert (sd / "plots" / "nll_mean.png").exists() and (sd / "plots" / "ece_mean.png").exists()
