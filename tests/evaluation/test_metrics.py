import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.evaluation.metrics import (
    attribute_metrics,
    expected_calibration_error,
    helpsteer_report,
    level_labels,
    level_nll,
    pairwise_accuracy,
    quadratic_weighted_kappa,
    rewards_from_attributes,
    round_predictions,
)
from rm_jax.evaluation.report_text import format_attribute_table

REL = 1e-9


def _random_case(seed=0, n=200):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 5, size=(n, 5)).astype(np.float64)
    pred = target + rng.normal(0.0, 0.9, size=(n, 5))  # noisy, some outside 0..4
    mask = (rng.random((n, 5)) > 0.25).astype(np.int32)
    # Masked entries hold garbage (NeMo-Aligner's -100) that must not leak into any stat.
    target = np.where(mask == 1, target, -100.0)
    return pred, target, mask


def _expected(p, t):
    err = p - t
    return {
        "mse": np.mean(err**2),
        "rmse": np.sqrt(np.mean(err**2)),
        "mae": np.mean(np.abs(err)),
        "pearson": stats.pearsonr(p, t)[0],
        "spearman": stats.spearmanr(p, t)[0],
    }


def test_attribute_metrics_match_scipy_with_mask():
    pred, target, mask = _random_case()
    out = attribute_metrics(pred, target, mask)
    assert list(out) == list(ATTRIBUTES)
    for j, name in enumerate(ATTRIBUTES):
        rows = mask[:, j] == 1
        p, t = pred[rows, j], target[rows, j]
        assert out[name]["n"] == rows.sum() < len(pred)
        for key, value in _expected(p, t).items():
            assert out[name][key] == pytest.approx(value, rel=REL), (name, key)
        # Rounded independently: halves up, then clipped to the 0..4 label range.
        r = np.array([min(4.0, max(0.0, math.floor(x + 0.5))) for x in p])
        for key, value in _expected(r, t).items():
            assert out[name]["rounded"][key] == pytest.approx(value, rel=REL), (name, "rounded", key)


def test_masked_entries_do_not_leak():
    pred, target, mask = _random_case(seed=1)
    # Changing values under the mask must change nothing.
    pred2 = np.where(mask == 1, pred, 1e6)
    a = attribute_metrics(pred, target, mask)
    b = attribute_metrics(pred2, target, mask)
    assert a == b
    # And without the mask the -100 targets dominate the error.
    assert attribute_metrics(pred, target)["helpfulness"]["mse"] > 100 * a["helpfulness"]["mse"]


def test_no_mask_means_all_rows():
    pred, target, _ = _random_case(seed=2)
    target = np.abs(target)
    out = attribute_metrics(pred, target, None)
    assert all(out[n]["n"] == len(pred) for n in ATTRIBUTES)
    assert out["verbosity"]["mse"] == pytest.approx(np.mean((pred[:, 4] - target[:, 4]) ** 2), rel=REL)


def test_rounding_and_clipping():
    raw = np.array([-0.7, 0.49, 0.5, 1.5, 2.5, 3.5, 4.6, 9.0])
    np.testing.assert_array_equal(round_predictions(raw), [0, 0, 1, 2, 3, 4, 4, 4])
    pred = raw[:, None].repeat(5, axis=1)
    target = np.array([0, 0, 1, 2, 3, 4, 4, 4], dtype=float)[:, None].repeat(5, axis=1)
    out = attribute_metrics(pred, target)["helpfulness"]
    assert out["rounded"]["mse"] == 0.0 and out["rounded"]["mae"] == 0.0
    assert out["mse"] > 0.0
    assert out["rounded"]["pearson"] == pytest.approx(1.0, rel=REL)


def test_degenerate_correlations_are_none():
    pred = np.array([[1.0, 2.0, 3.0, 1.0, 0.0], [2.0, 2.0, 1.0, 1.0, 3.0], [3.0, 2.0, 0.0, 1.0, 1.0]])
    target = np.array([[1.0, 1.0, 3.0, 0.0, 4.0], [2.0, 2.0, 3.0, 2.0, 4.0], [4.0, 3.0, 3.0, 1.0, 4.0]])
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    out = attribute_metrics(pred, target, mask)
    assert out["helpfulness"]["pearson"] is not None
    assert out["correctness"]["pearson"] is None  # constant prediction
    assert out["correctness"]["spearman"] is None
    assert out["correctness"]["mse"] == pytest.approx(np.mean((2.0 - target[:, 1]) ** 2), rel=REL)
    assert out["coherence"]["pearson"] is None  # constant target
    assert out["complexity"]["n"] == 1 and out["complexity"]["pearson"] is None
    assert out["complexity"]["mse"] == pytest.approx(1.0, rel=REL)
    v = out["verbosity"]
    assert v["n"] == 0 and all(v[k] is None for k in ("mse", "rmse", "mae", "pearson", "spearman"))
    assert all(v["rounded"][k] is None for k in ("mse", "rmse", "mae", "pearson", "spearman"))


def test_attribute_metrics_shape_errors():
    pred, target, mask = _random_case(n=10)
    with pytest.raises(ValueError, match="shape"):
        attribute_metrics(pred, target[:9], mask)
    with pytest.raises(ValueError, match="mask"):
        attribute_metrics(pred, target, mask[:, :4])
    with pytest.raises(ValueError, match="names"):
        attribute_metrics(pred, target, mask, names=("a", "b"))
    with pytest.raises(ValueError, match="2-D"):
        attribute_metrics(pred[:, 0], target[:, 0])


def test_rewards_from_attributes_presets():
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(7, 5))
    # Preset numbers written out from the paper, not read back from REWARD_PRESETS.
    np.testing.assert_allclose(
        rewards_from_attributes(pred, "70b-rewardbench"), pred @ np.array([0.65, 0.8, 0.45, 0.55, -0.4]), rtol=REL
    )
    np.testing.assert_allclose(
        rewards_from_attributes(pred, "340b-rewardbench"), pred @ np.array([0.3, 0.74, 0.46, 0.47, -0.33]), rtol=REL
    )
    np.testing.assert_allclose(rewards_from_attributes(pred, "helpfulness-only"), pred[:, 0], rtol=REL)
    np.testing.assert_allclose(rewards_from_attributes(pred, [0, 0, 0, 0, 2]), 2 * pred[:, 4], rtol=REL)
    np.testing.assert_allclose(rewards_from_attributes(pred, "0,1,0,0,0"), pred[:, 1], rtol=REL)
    with pytest.raises(ValueError):
        rewards_from_attributes(pred, "no-such-preset")
    with pytest.raises(ValueError):
        rewards_from_attributes(pred, [1.0, 2.0])


def test_pairwise_accuracy_hand_built():
    #           pair a       pair b       pair c (tie) pair d (rew tie) e (odd)  f (3 rows)
    rewards = [0.9, 0.1, 0.2, 0.8, 0.5, 0.1, 0.3, 0.3, 1.0, 1, 2, 3, 0.0, 5.0]
    helpful = [4, 1, 3, 2, 2, 2, 4, 0, 3, 1, 2, 3, 0, 4]
    ids = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "f", "f", "f", "g", "g"]
    out = pairwise_accuracy(np.array(rewards), np.array(helpful, dtype=float), ids)
    # Scored pairs: a (right), b (wrong), d (reward tie -> wrong), g (right, order reversed).
    assert out == {
        "accuracy": 2 / 4,
        "n_pairs": 4,
        "n_correct": 2,
        "n_label_ties": 1,
        "n_skipped_groups": 2,
    }


def test_pairwise_groups_need_not_be_adjacent_and_empty_is_none():
    out = pairwise_accuracy([1.0, 5.0, 0.0, 2.0], [3, 4, 1, 0], [7, 8, 7, 8])
    assert out["n_pairs"] == 2 and out["n_correct"] == 2 and out["accuracy"] == 1.0
    none = pairwise_accuracy([1.0, 1.0, 3.0], [2, 2, 1], [0, 0, 1])
    assert none["accuracy"] is None and none["n_label_ties"] == 1 and none["n_skipped_groups"] == 1


def test_pairwise_length_mismatch():
    with pytest.raises(ValueError, match="length"):
        pairwise_accuracy([1.0, 2.0], [1.0, 2.0, 3.0], [0, 0, 1])
    with pytest.raises(ValueError, match="length"):
        pairwise_accuracy([1.0, 2.0], [1.0, 2.0], [0])


def test_helpsteer_report_applies_presets():
    # Pair p0: response 0 is more helpful, but response 1 is predicted far more correct.
    pred = np.array(
        [
            [3.0, 1.0, 3.0, 1.0, 0.0],
            [2.0, 4.0, 3.0, 1.0, 0.0],
            [4.0, 4.0, 4.0, 2.0, 1.0],
            [1.0, 1.0, 1.0, 1.0, 1.0],
        ]
    )
    target = np.array([[4, 2, 3, 1, 0], [1, 4, 3, 1, 0], [4, 4, 4, 2, 1], [0, 1, 1, 1, 1]], dtype=float)
    ids = ["p0", "p0", "p1", "p1"]
    rep = helpsteer_report(pred, target, None, ids, {"h": "helpfulness-only", "c": [0, 1, 0, 0, 0]})
    assert rep["pairwise"]["h"]["accuracy"] == 1.0
    assert rep["pairwise"]["c"]["accuracy"] == 0.5  # correctness prefers the less helpful p0 response
    assert rep["per_attribute"] == attribute_metrics(pred, target, None)


def test_helpsteer_report_drops_rows_without_helpfulness():
    pred, target, mask = _random_case(seed=4, n=40)
    mask[:, 0] = 1
    mask[5, 0] = 0  # pair 2 loses a row
    ids = np.arange(40) // 2
    rep = helpsteer_report(pred, target, mask, ids, {"h": "helpfulness-only"})
    keep = mask[:, 0] == 1
    direct = pairwise_accuracy(pred[keep, 0], target[keep, 0], ids[keep])
    assert rep["pairwise"]["h"] == direct
    assert direct["n_skipped_groups"] == 1
    assert direct["n_pairs"] + direct["n_label_ties"] == 19
    with pytest.raises(ValueError, match="pair_ids"):
        helpsteer_report(pred, target, mask, ids[:-1], {"h": "helpfulness-only"})


def test_format_attribute_table():
    pred, target, mask = _random_case(seed=5, n=20)
    mask[:, 4] = 0
    out = attribute_metrics(pred, target, mask)
    table = format_attribute_table(out)
    lines = table.splitlines()
    assert lines[0].split() == ["attribute", "n", "mse", "rmse", "mae", "pearson", "spearman"]
    assert len(lines) == 2 + len(ATTRIBUTES)
    assert len({len(line) for line in lines}) == 1  # fixed width
    assert f"{out['helpfulness']['rmse']:.4f}" in lines[2]
    assert lines[-1].split()[:2] == ["verbosity", "0"] and lines[-1].split()[2:] == ["-"] * 5
    with_qwk = format_attribute_table(out, ("mse", "qwk")).splitlines()
    assert with_qwk[0].split() == ["attribute", "n", "mse", "qwk"]
    assert with_qwk[2].split()[-1] == f"{out['helpfulness']['qwk']:.4f}" and with_qwk[-1].split()[-1] == "-"
    # A distributional head's nll / ece follow the stats, as attribute_metrics computed them.
    probs = np.random.default_rng(1).dirichlet(np.ones(5), size=(20, 5))
    levels = attribute_metrics(pred, np.where(mask == 1, np.clip(np.round(target), 0, 4), -100), mask, probs=probs)
    lines = format_attribute_table(levels).splitlines()
    assert lines[0].split()[-2:] == ["nll", "ece"] and len({len(line) for line in lines}) == 1
    h = levels["helpfulness"]
    assert lines[2].split()[-2:] == [f"{h['nll']:.4f}", f"{h['ece']:.4f}"] and lines[-1].split()[-2:] == ["-", "-"]


# ----------------------------------------------------------------------------- agreement and calibration


def _sklearn_qwk(t, p):
    """scikit-learn's kappa of predictions rounded half up and clipped to 0..4, weights over all five levels."""
    r = np.clip(np.floor(p + 0.5), 0, 4).astype(int)
    return cohen_kappa_score(t.astype(int), r, weights="quadratic", labels=list(range(5)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_qwk_matches_sklearn_with_mask(seed):
    pred, target, mask = _random_case(seed=seed, n=300)
    pred[:, 2] = pred[:, 2] * 1.8 - 1.5  # far outside 0..4 both ways: clipping decides much of this column
    target[:, 3] = np.where(mask[:, 3] == 1, np.clip(target[:, 3], 1, 3), -100.0)  # levels 0 and 4 unused
    got = quadratic_weighted_kappa(target, pred, mask)
    assert len(got) == 5
    for j in range(5):
        rows = mask[:, j] == 1
        assert rows.sum() < len(pred)
        want = _sklearn_qwk(target[rows, j], pred[rows, j])
        assert 0.0 < want < 1.0
        assert got[j] == pytest.approx(want, rel=1e-12, abs=1e-12), ATTRIBUTES[j]


def test_qwk_leaves_out_labels_that_are_not_levels_and_counts_them():
    pred, target, mask = _random_case(seed=7, n=120)
    mask[:, 0] = 1
    target[:, 0] = np.random.default_rng(8).integers(0, 5, size=120)  # present everywhere: no -100 left
    target[:10, 0] = 2.5  # an averaged rating, not a level
    target[10:13, 0] = 7.0  # an integer outside 0..4
    ints, keep = level_labels(target, mask)
    assert keep[:, 0].sum() == 120 - 13 and not keep[mask == 0].any()
    want = _sklearn_qwk(target[13:, 0], pred[13:, 0])
    assert quadratic_weighted_kappa(target, pred, mask)[0] == pytest.approx(want, rel=1e-12)
    out = attribute_metrics(pred, target, mask)
    assert out["helpfulness"]["qwk"] == pytest.approx(want, rel=1e-12)
    assert out["helpfulness"]["qwk_excluded"] == 13 and out["helpfulness"]["n"] == 120
    assert out["correctness"]["qwk_excluded"] == 0
    continuous = attribute_metrics(pred, target + 0.25, mask)  # no label is a level: no kappa, every one counted
    assert all(continuous[a]["qwk"] is None for a in ATTRIBUTES)
    assert [continuous[a]["qwk_excluded"] for a in ATTRIBUTES] == [continuous[a]["n"] for a in ATTRIBUTES]


def test_qwk_hand_cases():
    t = np.array([[0.0], [1.0], [3.0], [4.0]])
    assert quadratic_weighted_kappa(t, t) == [1.0]
    # halves go up (2.5 -> 3) and clipping sends -3 to 0 and 9 to 4: perfect agreement again
    assert quadratic_weighted_kappa(t, np.array([[-3.0], [0.5], [2.5], [9.0]])) == [1.0]
    # two rows a level apart either way: O = [[0,1],[1,0]], E = [[.5,.5],[.5,.5]] -> 1 - 2/1 = -1
    assert quadratic_weighted_kappa(np.array([[0.0], [1.0]]), np.array([[1.0], [0.0]])) == [-1.0]
    # one level everywhere is 0/0; no rows; a NaN prediction: all undefined
    assert quadratic_weighted_kappa(np.full((3, 1), 2.0), np.full((3, 1), 2.2)) == [None]
    assert quadratic_weighted_kappa(t, t, mask=np.zeros_like(t)) == [None]
    assert quadratic_weighted_kappa(t, np.array([[0.0], [np.nan], [3.0], [4.0]])) == [None]
    with pytest.raises(ValueError, match="shape"):
        quadratic_weighted_kappa(t, t[:3])


def _plain_ece(probs, labels, bins):
    """Guo et al. 2017 written out row by row: top-label confidence, bins (m/M, (m+1)/M], the first holding 0."""
    groups = [[] for _ in range(bins)]
    for q, y in zip(probs, labels):
        c = max(q)
        k = list(q).index(c)
        for m in range(bins):
            if m / bins < c <= (m + 1) / bins or (m == 0 and c == 0):
                groups[m].append((c, 1.0 if k == y else 0.0))
                break
    n = len(labels)
    return sum(len(g) / n * abs(sum(a for _, a in g) / len(g) - sum(c for c, _ in g) / len(g)) for g in groups if g)


def _plain_nll(probs, labels):
    return sum(-math.log(max(q[y], 1e-12)) for q, y in zip(probs, labels)) / len(labels)


def test_calibration_hand_cases():
    # calibrated: 10 rows 80% sure of level 0 (8 right), 4 rows 75% sure of level 3 (3 right)
    calib = np.array([[0.8, 0.2, 0, 0, 0]] * 10 + [[0, 0.25, 0, 0.75, 0]] * 4)
    labels = np.array([0] * 8 + [1] * 2 + [3] * 3 + [1])
    assert expected_calibration_error(calib, labels) == pytest.approx(0.0, abs=1e-12)
    assert _plain_ece(calib, labels, 15) == pytest.approx(0.0, abs=1e-12)
    # a constant over-confident predictor: always 90% on level 0, right half the time -> ECE = 0.9 - 0.5
    over = np.array([[0.9, 0.025, 0.025, 0.025, 0.025]] * 6)
    y = np.array([0, 0, 0, 2, 4, 1])
    assert expected_calibration_error(over, y) == pytest.approx(0.4, rel=1e-12)
    assert level_nll(over, y) == pytest.approx((-math.log(0.9) - math.log(0.025)) / 2, rel=1e-12)
    assert level_nll(over, y) == pytest.approx(_plain_nll(over, y), rel=1e-12)
    # one-hot and right: no loss, no miscalibration; one-hot and wrong: the floor, and ECE 1
    eye = np.eye(5)
    assert level_nll(eye, np.arange(5)) == 0.0 and expected_calibration_error(eye, np.arange(5)) == 0.0
    assert level_nll(eye, (np.arange(5) + 1) % 5) == pytest.approx(-math.log(1e-12), rel=1e-12)
    assert expected_calibration_error(eye, (np.arange(5) + 1) % 5) == 1.0
    # a confidence on a bin edge belongs to the bin below: 0.6 = 9/15 tops (8/15, 9/15], apart from 0.65
    edge = np.array([[0.6, 0.4, 0, 0, 0]] * 2 + [[0.65, 0.35, 0, 0, 0]] * 2)
    ye = np.array([0, 0, 1, 1])  # the 0.6 rows right (gap 0.4), the 0.65 rows wrong (gap 0.65)
    assert expected_calibration_error(edge, ye) == pytest.approx(0.5 * 0.4 + 0.5 * 0.65, rel=1e-12)
    assert _plain_ece(edge, ye, 15) == pytest.approx(0.525, rel=1e-12)  # in one bin it would be 0.125
    # one bin: |overall accuracy - mean confidence|
    mixed = np.concatenate([calib, over])
    ym = np.concatenate([labels, y])
    acc = np.mean(mixed.argmax(1) == ym)
    assert expected_calibration_error(mixed, ym, bins=1) == pytest.approx(abs(acc - mixed.max(1).mean()), rel=1e-12)
    assert expected_calibration_error(mixed, ym) == pytest.approx(_plain_ece(mixed, ym, 15), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_matches_plain_numpy_with_mask_and_non_levels(seed):
    rng = np.random.default_rng(seed)
    n, k = 400, 5
    probs = rng.dirichlet(np.full(k, 0.6), size=n)
    probs[:40] = np.round(probs[:40] * 5) / 5  # confidences on bin edges (0.4 = 6/15, 0.6, 0.8)
    probs[:40] /= probs[:40].sum(1, keepdims=True)
    labels = rng.integers(0, k, size=n).astype(np.float64)
    mask = rng.random(n) > 0.2
    labels[~mask] = -100.0
    labels[mask & (rng.random(n) < 0.05)] = 1.5  # not a level: left out
    keep = mask & (labels == np.floor(labels)) & (labels >= 0)
    assert 0 < (mask & ~keep).sum() and keep.sum() < mask.sum()
    q, y = probs[keep], labels[keep].astype(int)
    for bins in (15, 10):
        got = expected_calibration_error(probs, labels, mask, bins=bins)
        assert got > 0.01
        assert got == pytest.approx(_plain_ece(q, y, bins), rel=1e-12)
    assert level_nll(probs, labels, mask) == pytest.approx(_plain_nll(q, y), rel=1e-12)


def test_calibration_input_errors():
    good = np.full((3, 5), 0.2)
    bad = good.copy()
    bad[1, 0] = 0.5
    with pytest.raises(ValueError, match="row 1 "):
        level_nll(bad, [0, 1, 2])
    with pytest.raises(ValueError, match="3 labels for 2 rows"):
        expected_calibration_error(good[:2], [0, 1, 2])
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error(good, [0, 1, 2], bins=0)
    assert level_nll(good, [0.5, 9, -1]) is None and expected_calibration_error(good, [1, 2, 3], mask=[0, 0, 0]) is None
