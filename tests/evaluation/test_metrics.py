import math

import numpy as np
import pytest
from scipy import stats

from rm_jax.core.attributes import ATTRIBUTES
from rm_jax.evaluation.metrics import (
    attribute_metrics,
    helpsteer_report,
    pairwise_accuracy,
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
