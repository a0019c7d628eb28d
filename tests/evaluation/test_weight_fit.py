"""``rm-jax weights fit``: the BT fit against a plain Newton solve, folds that never leak, pair building, and
recovery of a hidden weighting of a tiny RM's own predictions end to end (W.json then used by ``score``)."""

import json

import numpy as np
import pytest

from rm_jax import cli
from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.core.errors import InputError
from rm_jax.data.rewardbench2_sets import RB2Set
from rm_jax.evaluation.weight_fit import (
    bt_objective,
    cross_validate,
    fit_bt,
    fit_report,
    fold_ids,
    pairs_from_helpsteer,
    pairs_from_rewardbench2,
)


def newton(d, l2, steps=50):
    """The regularised logistic regression (no intercept) solved by plain Newton steps."""
    w = np.zeros(d.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(d @ w)))
        grad = -(d.T @ (1 - p)) / len(d) + l2 * w
        hess = (d.T * (p * (1 - p))) @ d / len(d) + l2 * np.eye(d.shape[1])
        w = w - np.linalg.solve(hess, grad)
    return w


def _diffs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 5)) * np.array([1.0, 0.5, 2.0, 1.0, 0.3])
    flip = rng.random(n) < 1 / (1 + np.exp(-(d @ np.array([1.0, -0.5, 0.2, 0.0, 2.0]))))
    return np.where(flip[:, None], d, -d)  # the chosen side follows a noisy BT model


def test_fit_is_the_newton_optimum():
    d = _diffs()
    for l2 in (1e-3, 0.1):
        w = fit_bt(d, l2)
        np.testing.assert_allclose(w, newton(d, l2), atol=1e-6, rtol=0)
        assert np.abs(bt_objective(w, d, l2)[1]).max() < 1e-7  # the gradient vanishes there


def test_objective_gradient_matches_finite_differences():
    d, w = _diffs(50, 1), np.array([0.3, -0.2, 0.1, 0.5, -1.0])
    _, g = bt_objective(w, d, 0.05)
    eps = 1e-6
    loss = lambda x: bt_objective(x, d, 0.05)[0]  # noqa: E731
    num = [(loss(w + eps * e) - loss(w - eps * e)) / (2 * eps) for e in np.eye(5)]
    np.testing.assert_allclose(g, num, atol=1e-7)


def test_folds_partition_the_pairs():
    f = fold_ids(103, 5, seed=3)
    assert sorted(np.bincount(f)) == [20, 20, 21, 21, 21]
    assert not np.array_equal(f, fold_ids(103, 5, seed=4))
    np.testing.assert_array_equal(f, fold_ids(103, 5, seed=3))
    with pytest.raises(InputError, match="--folds"):
        fold_ids(3, 5, 0)


def test_heldout_accuracy_is_computed_on_unseen_folds():
    d = _diffs(300, 2)
    presets = {k: np.asarray(v) for k, v in REWARD_PRESETS.items()}
    cv = cross_validate(d, 4, 0.01, 7, presets)
    fold = cv["fold_of_pair"]
    for k in range(4):
        test = fold == k
        w = newton(d[~test], 0.01)  # trained without fold k
        np.testing.assert_allclose(cv["fold_weights"][k], w, atol=1e-6)
        assert cv["heldout"]["folds"][k] == pytest.approx(np.mean(d[test] @ w > 0))
        for name, pw in presets.items():
            assert cv["presets"][name]["folds"][k] == pytest.approx(np.mean(d[test] @ pw > 0))
    assert cv["heldout"]["mean"] == pytest.approx(np.mean(cv["heldout"]["folds"]))


def test_report_fields():
    d = _diffs(200, 5)
    r = fit_report(d, ATTRIBUTES, folds=5, l2=0.01, seed=0)
    w = np.array([r["weights"][a] for a in ATTRIBUTES])
    np.testing.assert_allclose(w, newton(d, 0.01), atol=1e-6)
    assert sum(abs(v) for v in r["weights_l1_normalised"].values()) == pytest.approx(1.0)
    assert r["n_pairs"] == 200 and r["folds"] == 5 and r["l2"] == 0.01 and set(r["presets"]) == set(REWARD_PRESETS)
    assert r["train_accuracy"] == pytest.approx(np.mean(d @ w > 0))
    with pytest.raises(InputError, match="--l2"):
        fit_report(d, ATTRIBUTES, l2=0.0)


def test_helpsteer_pairs_by_helpfulness_ties_left_out():
    rows = [
        {"prompt": "a", "response": "r0", "helpfulness": 1},
        {"prompt": "a", "response": "r1", "helpfulness": 3},
        {"prompt": "b", "response": "r2", "helpfulness": 2},
        {"prompt": "b", "response": "r3", "helpfulness": 2},  # a tie: left out
        {"prompt": "c", "response": "r4", "helpfulness": 4},
        {"prompt": "c", "response": "r5", "helpfulness": None},  # unlabelled: left out
        {"prompt": "d", "response": "r6", "helpfulness": 0},
        {"prompt": "d", "response": "r7", "helpfulness": 4},
        {"prompt": "d", "response": "r8", "helpfulness": 2},
    ]
    convs, pairs = pairs_from_helpsteer(rows)
    assert [c["response"] for c in convs] == [r["response"] for r in rows]
    assert pairs == [(1, 0), (7, 6), (8, 6), (7, 8)]


def test_rewardbench2_pairs_every_correct_against_every_incorrect():
    sets = [RB2Set("1", "Math", "p", ("a", "b", "c", "d"), 1), RB2Set("tied:0", "Ties", "q", ("e", "f", "g"), 2)]
    convs, pairs = pairs_from_rewardbench2(sets)
    assert len(convs) == 7
    assert pairs == [(0, 1), (0, 2), (0, 3), (4, 6), (5, 6)]


# ----------------------------------------------------------------------------- end to end on a tiny RM

WORDS = "the cat sat on a mat and then it ran far away from home because rain fell on every roof".split()


@pytest.fixture(scope="module")
def hidden_pairs(tmp_path_factory):
    """A tiny random RM, its own attribute predictions of 480 responses (``rm-jax score``), and 240 pairs
    ordered by a hidden weighting of those predictions."""
    from tests.helpers import make_hf_rm_with_tokenizer

    d = tmp_path_factory.mktemp("fit")
    make_hf_rm_with_tokenizer("llama", str(d / "rm"), seed=5)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(240):  # two responses to each prompt
        prompt = " ".join(rng.choice(WORDS, 4))
        rows += [{"prompt": prompt, "response": " ".join(rng.choice(WORDS, int(rng.integers(2, 12))))} for _ in "ab"]
    (d / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["score", "--model", str(d / "rm"), "--input", str(d / "in.jsonl"), "--output", str(d / "s.jsonl")]
    assert cli.main(argv + ["--no-progress"]) == 0
    attrs = np.array([[json.loads(line)["attributes"][a] for a in ATTRIBUTES] for line in open(d / "s.jsonl")])
    hidden = np.array([0.2, -1.0, 0.5, 0.0, 1.5])
    pairs = []
    for i in range(0, len(rows), 2):
        c, r = (i, i + 1) if attrs[i] @ hidden > attrs[i + 1] @ hidden else (i + 1, i)
        pairs.append({"prompt": rows[i]["prompt"], "chosen": rows[c]["response"], "rejected": rows[r]["response"]})
    (d / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return d, hidden


def test_fit_recovers_a_hidden_weighting_and_works_as_weights(hidden_pairs, tmp_path, capsys):
    d, hidden = hidden_pairs
    out = tmp_path / "W.json"
    argv = ["weights", "fit", "--model", str(d / "rm"), "--pairs", str(d / "pairs.jsonl"), "--l2", "1e-4"]
    assert cli.main(argv + ["--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    w = json.loads(out.read_text())
    assert w["n_pairs"] == 240 and w["folds"] == 5
    fitted = np.array([w["weights"][a] for a in ATTRIBUTES])
    preds = [json.loads(line) for line in open(tmp_path / "W.fit_predictions.jsonl")]
    diff = np.array([[p["chosen"][a] - p["rejected"][a] for a in ATTRIBUTES] for p in preds])
    assert np.mean(diff @ hidden > 0) == 1.0  # the predictions file holds the pairs as the hidden weights order them
    assert np.mean(diff @ fitted > 0) >= 0.95 and w["train_accuracy"] >= 0.95
    assert w["heldout_accuracy"]["mean"] >= 0.9
    assert set(w["presets"]) == set(REWARD_PRESETS)
    assert "fitted" in printed and "70b-rewardbench" in printed

    # refitting from the saved predictions gives the same weights without the model
    out2 = tmp_path / "W2.json"
    assert cli.main(["weights", "fit", "--from-predictions", str(tmp_path / "W.fit_predictions.jsonl"),
                     "--l2", "1e-4", "--output", str(out2)]) == 0  # fmt: skip
    assert json.loads(out2.read_text())["weights"] == pytest.approx(w["weights"])

    # W.json as --weights: reward == weights . attributes
    scored = tmp_path / "scored.jsonl"
    argv = ["score", "--model", str(d / "rm"), "--input", str(d / "in.jsonl"), "--output", str(scored)]
    assert cli.main(argv + ["--weights", str(out), "--no-progress"]) == 0
    for line in open(scored):
        r = json.loads(line)
        assert r["reward"] == pytest.approx(sum(w["weights"][a] * r["attributes"][a] for a in ATTRIBUTES), abs=1e-5)
