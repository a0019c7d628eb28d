"""``rm-jax weights fit``: the BT fit against a plain Newton solve on standardised differences, scale
invariance, folds by prompt that never split a prompt (RewardBench 2 ``ref:K`` / ``tied:K`` partners included),
prompt weighting, pair building, the predictions file, and recovery of a hidden weighting of a tiny RM's own
predictions end to end (W.json then used by ``score``)."""

import json

import numpy as np
import pytest

from rm_jax import cli
from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.core.errors import InputError
from rm_jax.data.rewardbench2_sets import RB2Set, load_rewardbench2, ties_key
from rm_jax.evaluation.weight_fit import (
    accuracy,
    attribute_scale,
    bt_objective,
    cross_validate,
    fit_bt,
    fit_report,
    fold_ids,
    pair_weights,
    pairs_from_helpsteer,
    pairs_from_pairs,
    pairs_from_rewardbench2,
    read_fit_predictions,
    write_fit_predictions,
)


def newton(d, l2, v=None, steps=50):
    """The pair-weighted regularised logistic regression (no intercept) solved by plain Newton steps."""
    v = np.ones(len(d)) if v is None else v / v.sum() * len(d)
    w = np.zeros(d.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(d @ w)))
        grad = -(d.T @ (v * (1 - p))) / len(d) + l2 * w
        hess = (d.T * (v * p * (1 - p))) @ d / len(d) + l2 * np.eye(d.shape[1])
        w = w - np.linalg.solve(hess, grad)
    return w


def _diffs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 5)) * np.array([1.0, 0.5, 2.0, 1.0, 0.3])
    flip = rng.random(n) < 1 / (1 + np.exp(-(d @ np.array([1.0, -0.5, 0.2, 0.0, 2.0]))))
    return np.where(flip[:, None], d, -d)  # the chosen side follows a noisy BT model


def _prompts(n, per=3, seed=0):
    """Prompt ids for n pairs, 1 to ``2 * per - 1`` pairs per prompt, shuffled."""
    rng = np.random.default_rng(seed)
    ids, k = [], 0
    while len(ids) < n:
        ids += [f"p{k}"] * int(rng.integers(1, 2 * per))
        k += 1
    return list(rng.permutation(ids[:n]))


def test_fit_is_the_newton_optimum_on_standardised_differences():
    d = _diffs()
    v = np.random.default_rng(1).uniform(0.2, 1.0, len(d))
    for weights in (None, v):
        u = np.ones(len(d)) if weights is None else weights
        s = np.sqrt((u @ d**2) / u.sum())
        np.testing.assert_allclose(attribute_scale(d, weights), s, rtol=1e-12)
        for l2 in (1e-3, 0.1):
            w = fit_bt(d, l2, weights)
            np.testing.assert_allclose(w, newton(d / s, l2, weights) / s, atol=1e-6, rtol=0)
            assert np.abs(bt_objective(w * s, d / s, l2, weights)[1]).max() < 1e-7  # the gradient vanishes there


def test_objective_gradient_matches_finite_differences():
    d, w = _diffs(50, 1), np.array([0.3, -0.2, 0.1, 0.5, -1.0])
    v = np.random.default_rng(2).uniform(0.1, 1.0, 50)
    _, g = bt_objective(w, d, 0.05, v)
    eps = 1e-6
    loss = lambda x: bt_objective(x, d, 0.05, v)[0]  # noqa: E731
    num = [(loss(w + eps * e) - loss(w - eps * e)) / (2 * eps) for e in np.eye(5)]
    np.testing.assert_allclose(g, num, atol=1e-7)
    assert loss(w) == pytest.approx(v @ np.log1p(np.exp(-(d @ w))) / v.sum() + 0.025 * w @ w)


def test_fit_does_not_depend_on_attribute_scale():
    """The same pairs with differences x0.01, x1 and per-attribute scales give the same ordering: the same
    weights up to 1 / scale, the same held-out accuracy per fold."""
    d, prompts = _diffs(300, 3), _prompts(300)
    base = fit_report(d, ATTRIBUTES, prompts, folds=5, l2=0.01, seed=0)
    w0 = np.array([base["weights"][a] for a in ATTRIBUTES])
    for c in (np.full(5, 0.01), np.array([0.01, 1.0, 100.0, 0.003, 7.0])):
        r = fit_report(d * c, ATTRIBUTES, prompts, folds=5, l2=0.01, seed=0)
        w = np.array([r["weights"][a] for a in ATTRIBUTES])
        np.testing.assert_allclose(w * c, w0, rtol=1e-5, atol=1e-8)
        assert r["heldout_accuracy"]["folds"] == pytest.approx(base["heldout_accuracy"]["folds"], abs=1e-12)
        assert r["train_accuracy"] == pytest.approx(base["train_accuracy"])


def test_small_differences_recover_a_hidden_weighting_at_the_default_l2():
    """Attribute differences of order 0.01 (a random tiny RM's) labelled by a hidden weighting: an L2 on raw
    weights would pull the fit toward the mean difference; on standardised differences it does not."""
    rng = np.random.default_rng(4)
    mix = rng.normal(size=(5, 5)) + 2.0  # correlated attributes, as an RM's outputs are
    d = 0.01 * rng.normal(size=(240, 5)) @ mix + 0.005
    hidden = np.array([0.2, -1.0, 0.5, 0.0, 1.5])
    d = np.where((d @ hidden > 0)[:, None], d, -d)
    r = fit_report(d, ATTRIBUTES, [f"p{i}" for i in range(240)], l2=0.01)
    w = np.array([r["weights"][a] for a in ATTRIBUTES])
    assert np.mean(d @ w > 0) >= 0.95 and r["heldout_accuracy"]["mean"] >= 0.9


# ----------------------------------------------------------------------------- folds by prompt


def test_folds_are_groups_of_prompts():
    prompts = _prompts(103, seed=3)
    f = fold_ids(prompts, 5, seed=3)
    by_prompt = {p: {k for q, k in zip(prompts, f) if q == p} for p in set(prompts)}
    assert all(len(ks) == 1 for ks in by_prompt.values())  # every pair of a prompt in one fold
    per_fold = np.bincount([next(iter(ks)) for ks in by_prompt.values()])
    assert per_fold.max() - per_fold.min() <= 1  # near-equal numbers of prompts
    assert not np.array_equal(f, fold_ids(prompts, 5, seed=4))
    np.testing.assert_array_equal(f, fold_ids(prompts, 5, seed=3))
    with pytest.raises(InputError, match=r"--folds: need 2 <= folds <= prompts \(2\)"):
        fold_ids(["a", "a", "b"], 3, 0)


def _rb2_sets():
    """RewardBench 2-format sets with 3 to 8 pairs each, Ties ``ref:K`` / ``tied:K`` partners sharing a
    prompt and completions, and two non-Ties sets that share a prompt text."""
    sets = []
    for k in range(12):
        sets.append(RB2Set(str(k), "Math", f"math {k}", tuple(f"m{k}.{j}" for j in range(4)), 1))
    sets.append(RB2Set("dup", "Focus", "math 3", ("x", "y", "z", "u"), 1))  # the same prompt as set "3"
    for k in range(8):
        correct = tuple(f"t{k}.{j}" for j in range(2 + k % 2))
        wrong = tuple(f"w{k}.{j}" for j in range(3))
        sets.append(RB2Set(f"ref:{k}", "Ties", f"ties {k}", correct[:1] + wrong, 1))
        if k >= 5:  # linked by the id alone: another prompt text, no shared completion
            correct, wrong = tuple("re" + c for c in correct), tuple("re" + c for c in wrong)
        sets.append(RB2Set(f"tied:{k}", "Ties", f"ties {k}" + "?" * (k >= 5), correct + wrong, len(correct)))
    return sets


def _group_of_set(s):
    """The test's own notion of one prompt: a Ties K, or the prompt text."""
    return ("ties", ties_key(s.id)[1]) if s.is_ties else ("text", s.prompt)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rewardbench2_folds_never_split_a_prompt(seed):
    """The leak: folding by pair puts pairs of one set (and a ref:K set's tied:K partner, which shares its
    completions) both in training and held out."""
    sets = _rb2_sets()
    convs, pairs, prompts = pairs_from_rewardbench2(sets)
    set_of_pair = [i for i, s in enumerate(sets) for _ in range(s.num_correct * (len(s.completions) - s.num_correct))]
    assert len(set_of_pair) == len(pairs) == len(prompts)
    d = np.random.default_rng(seed).normal(size=(len(pairs), 5))
    r = fit_report(d, ATTRIBUTES, prompts, folds=5, seed=seed)
    assert r["folds"]["by"] == "prompt" and r["folds"]["k"] == 5
    fold = r["folds"]["pair_fold"]
    assert len(fold) == len(pairs)
    folds_of: dict = {}
    for i, k in zip(set_of_pair, fold):
        g = _group_of_set(sets[i])
        g = ("text", "math 3") if sets[i].id == "dup" else g
        folds_of.setdefault(g, set()).add(k)
    assert all(len(ks) == 1 for ks in folds_of.values()), {g: ks for g, ks in folds_of.items() if len(ks) > 1}
    # no (chosen, rejected) pair of texts is both trained on and held out
    text_folds: dict = {}
    for (c, rj), k in zip(pairs, fold):
        text_folds.setdefault((convs[c]["response"], convs[rj]["response"]), set()).add(k)
    assert all(len(ks) == 1 for ks in text_folds.values())
    assert r["n_prompts"] == 12 + 8  # "dup" joins "3"; each ref:K joins its tied:K


def test_bundled_rewardbench2_folds_and_prompt_weights():
    """On the bundled RB2 sample: no prompt text, Ties K or exact pair in two folds, and each prompt weighs
    1 in total (the Ties sets' many pairs no longer dominate)."""
    sets = load_rewardbench2("bundled")
    convs, pairs, prompts = pairs_from_rewardbench2(sets)
    fold = fold_ids(prompts, 5, seed=0)
    groups: dict = {}
    for (c, r), k in zip(pairs, fold):
        groups.setdefault(("text", convs[c]["prompt"]), set()).add(k)
        groups.setdefault(("pair", convs[c]["response"], convs[r]["response"]), set()).add(k)
    start = 0
    for s in sets:
        n = s.num_correct * (len(s.completions) - s.num_correct)
        if s.is_ties:
            groups.setdefault(("ties", ties_key(s.id)[1]), set()).update(fold[start : start + n].tolist())
        start += n
    assert all(len(ks) == 1 for ks in groups.values())
    v = pair_weights(prompts, "prompt")
    for p in set(prompts):
        assert v[[q == p for q in prompts]].sum() == pytest.approx(1.0)  # each prompt weighs 1 in total
    ties = np.concatenate([[s.is_ties] * (s.num_correct * (len(s.completions) - s.num_correct)) for s in sets])
    assert ties.mean() > 0.35  # the Ties sets hold over a third of the pairs ...
    assert v[ties].sum() / v.sum() < 0.2  # ... but their 30 prompts weigh under a fifth


def test_prompt_weighting_in_fit_and_accuracy():
    d, prompts = _diffs(300, 6), _prompts(300, per=4, seed=6)
    presets = {k: np.asarray(v) for k, v in REWARD_PRESETS.items()}
    v = pair_weights(prompts, "prompt")
    counts = {p: prompts.count(p) for p in prompts}
    np.testing.assert_allclose(v, [1 / counts[p] for p in prompts])
    np.testing.assert_array_equal(pair_weights(prompts, "pair"), np.ones(300))
    with pytest.raises(InputError, match="--pair-weighting"):
        pair_weights(prompts, "set")
    for weighting in ("prompt", "pair"):
        w8 = pair_weights(prompts, weighting)
        cv = cross_validate(d, prompts, 4, 0.01, 7, presets, weighting)
        fold = cv["fold_of_pair"]
        for k in range(4):
            test = fold == k
            s = np.sqrt((w8[~test] @ d[~test] ** 2) / w8[~test].sum())
            w = newton(d[~test] / s, 0.01, w8[~test]) / s  # trained without fold k, weighted, standardised
            np.testing.assert_allclose(cv["fold_weights"][k], w, atol=1e-6)
            # accuracy per prompt, then the mean over the fold's prompts (prompt) or over its pairs (pair)
            right = d[test] @ w > 0
            if weighting == "prompt":
                ps = np.array(prompts)[test]
                want = np.mean([right[ps == p].mean() for p in dict.fromkeys(ps)])
            else:
                want = right.mean()
            assert cv["heldout"]["folds"][k] == pytest.approx(want)
            for name, pw in presets.items():
                assert cv["presets"][name]["folds"][k] == pytest.approx(accuracy(d[test], pw, w8[test]))
        assert cv["heldout"]["mean"] == pytest.approx(np.mean(cv["heldout"]["folds"]))


def test_report_fields():
    d, prompts = _diffs(200, 5), _prompts(200, seed=5)
    r = fit_report(d, ATTRIBUTES, prompts, folds=5, l2=0.01, seed=0)
    v = pair_weights(prompts)
    s = attribute_scale(d, v)
    w = np.array([r["weights"][a] for a in ATTRIBUTES])
    np.testing.assert_allclose(w, newton(d / s, 0.01, v) / s, atol=1e-6)
    assert sum(abs(x) for x in r["weights_l1_normalised"].values()) == pytest.approx(1.0)
    assert r["n_pairs"] == 200 and r["n_prompts"] == len(set(prompts)) and r["l2"] == 0.01
    assert r["pair_weighting"] == "prompt" and set(r["presets"]) == set(REWARD_PRESETS)
    assert r["attribute_scale"] == pytest.approx(dict(zip(ATTRIBUTES, s)))
    assert r["folds"]["k"] == 5 and r["folds"]["pair_fold"] == fold_ids(prompts, 5, 0).tolist()
    assert r["train_accuracy"] == pytest.approx(accuracy(d, w, v))
    assert fit_report(d, ATTRIBUTES, prompts, pair_weighting="pair")["pair_weighting"] == "pair"
    with pytest.raises(InputError, match="--l2"):
        fit_report(d, ATTRIBUTES, prompts, l2=0.0)


# ----------------------------------------------------------------------------- pairs and the predictions file


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
        {"prompt": "a", "response": "r9", "helpfulness": 0},  # prompt "a" again, later in the file
        {"prompt": "a", "response": "r10", "helpfulness": 2},
    ]
    convs, pairs, prompts = pairs_from_helpsteer(rows)
    assert [c["response"] for c in convs] == [r["response"] for r in rows]
    assert pairs == [(1, 0), (7, 6), (8, 6), (7, 8), (10, 9)]
    assert prompts[1] == prompts[2] == prompts[3] != prompts[0]
    assert prompts[4] == prompts[0]  # one prompt, wherever its rows are


def test_pairs_file_prompt_ids():
    rows = [{"prompt": p, "chosen": f"c{i}", "rejected": f"r{i}"} for i, p in enumerate("xyxw")]
    rows.append({"prompt": "y reworded", "chosen": "c1", "rejected": "r1"})  # a copy of pair 1: one prompt
    rows.append({"prompt": "z", "chosen": "c", "rejected": "r", "strength": 0})  # a tie: left out
    convs, pairs, prompts = pairs_from_pairs(rows)
    assert len(convs) == 10 and pairs == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert prompts[0] == prompts[2] and prompts[1] == prompts[4] and len(set(prompts)) == 3


def test_rewardbench2_pairs_every_correct_against_every_incorrect():
    sets = [RB2Set("1", "Math", "p", ("a", "b", "c", "d"), 1), RB2Set("tied:0", "Ties", "q", ("e", "f", "g"), 2)]
    convs, pairs, prompts = pairs_from_rewardbench2(sets)
    assert len(convs) == 7
    assert pairs == [(0, 1), (0, 2), (0, 3), (4, 6), (5, 6)]
    assert prompts == ["rb2:1"] * 3 + ["rb2:ties:0"] * 2


def test_predictions_file_keeps_prompt_ids(tmp_path):
    pred = np.arange(12, dtype=float).reshape(4, 3)
    path = str(tmp_path / "p.jsonl")
    write_fit_predictions(path, ["a", "b", "c"], pred, [(0, 1), (3, 2)], ["x", "y"])
    attrs, d, prompts = read_fit_predictions(path)
    assert attrs == ["a", "b", "c"] and prompts == ["x", "y"]
    np.testing.assert_array_equal(d, [pred[0] - pred[1], pred[3] - pred[2]])
    old = tmp_path / "old.jsonl"  # a file written before prompt ids: refused, never folded by pair
    old.write_text(json.dumps({"pair": 0, "chosen": {"a": 1.0}, "rejected": {"a": 0.0}}) + "\n")
    with pytest.raises(InputError, match=r"old.jsonl: line 1: no prompt_id .*cannot be grouped by prompt"):
        read_fit_predictions(str(old))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"pair": 0, "prompt_id": 3, "chosen": {"a": 1.0}, "rejected": {"a": 0.0}}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl: line 1: .*prompt_id"):
        read_fit_predictions(str(bad))


# ----------------------------------------------------------------------------- end to end on a tiny RM

WORDS = "the cat sat on a mat and then it ran far away from home because rain fell on every roof".split()


@pytest.fixture(scope="module")
def hidden_pairs(tmp_path_factory):
    """A tiny random RM with a small reward head, its own attribute predictions of 480 responses
    (``rm-jax score``), and 240 pairs ordered by a hidden weighting of those predictions."""
    import torch

    from tests.helpers import make_hf_rm_with_tokenizer

    d = tmp_path_factory.mktemp("fit")
    model, _ = make_hf_rm_with_tokenizer("llama", str(d / "rm"), seed=5)
    with torch.no_grad():  # a reward head of std 0.01, near transformers' own init: attribute differences ~0.01
        model.score.weight.mul_(0.02)
    model.save_pretrained(str(d / "rm"), safe_serialization=True)
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
    argv = ["weights", "fit", "--model", str(d / "rm"), "--pairs", str(d / "pairs.jsonl")]  # the default l2
    assert cli.main(argv + ["--output", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    w = json.loads(out.read_text())
    assert w["n_pairs"] == 240 and w["folds"]["k"] == 5 and w["l2"] == 0.01 and w["pair_weighting"] == "prompt"
    fitted = np.array([w["weights"][a] for a in ATTRIBUTES])
    preds = [json.loads(line) for line in open(tmp_path / "W.fit_predictions.jsonl")]
    diff = np.array([[p["chosen"][a] - p["rejected"][a] for a in ATTRIBUTES] for p in preds])
    assert 0.002 < np.abs(diff).mean() < 0.05  # differences of order 0.01: an l2 on raw weights would dominate
    assert len({p["prompt_id"] for p in preds}) == w["n_prompts"] and len(w["folds"]["pair_fold"]) == 240
    assert np.mean(diff @ hidden > 0) == 1.0  # the predictions file holds the pairs as the hidden weights order them
    assert np.mean(diff @ fitted > 0) >= 0.95 and w["train_accuracy"] >= 0.95
    assert w["heldout_accuracy"]["mean"] >= 0.9
    assert set(w["presets"]) == set(REWARD_PRESETS)
    assert "fitted" in printed and "70b-rewardbench" in printed

    # refitting from the saved predictions gives the same weights without the model
    out2 = tmp_path / "W2.json"
    assert cli.main(["weights", "fit", "--from-predictions", str(tmp_path / "W.fit_predictions.jsonl"),
                     "--output", str(out2)]) == 0  # fmt: skip
    w2 = json.loads(out2.read_text())
    assert w2["weights"] == pytest.approx(w["weights"]) and w2["folds"] == w["folds"]

    # W.json as --weights: reward == weights . attributes
    scored = tmp_path / "scored.jsonl"
    argv = ["score", "--model", str(d / "rm"), "--input", str(d / "in.jsonl"), "--output", str(scored)]
    assert cli.main(argv + ["--weights", str(out), "--no-progress"]) == 0
    for line in open(scored):
        r = json.loads(line)
        assert r["reward"] == pytest.approx(sum(w["weights"][a] * r["attributes"][a] for a in ATTRIBUTES), abs=1e-5)


def test_helpsteer3_pairs_fold_by_context():
    """HelpSteer3 pairs of one context share a prompt id (one fold), as do pairs with the same two responses."""
    from rm_jax.evaluation.weight_fit import fold_ids, pairs_from_helpsteer3

    ctx = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    rows = [
        {"prompt": ctx[0], "chosen": "a", "rejected": "b", "context_id": 0},
        {"prompt": ctx[1], "chosen": "c", "rejected": "d", "context_id": 1},
        {"prompt": ctx[0], "chosen": "e", "rejected": "f", "context_id": 0},
        {"prompt": ctx[2], "chosen": "c", "rejected": "d", "context_id": 2},  # same pair as row 1, other context
    ]
    convs, pairs, ids = pairs_from_helpsteer3(rows)
    assert pairs == [(0, 1), (2, 3), (4, 5), (6, 7)] and convs[4] == {"prompt": ctx[0], "response": "e"}
    assert ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1]
    folds = fold_ids(ids, 2, seed=0)
    assert folds[0] == folds[2] and folds[1] == folds[3]
