"""P(a|x,y) of a regression RM against scipy's normal CDF, and where sigma comes from."""

import json

import numpy as np
import pytest
from scipy.stats import norm

from rm_jax.core.errors import InputError
from rm_jax.steer.attribute_model import log_level_probability, log_p_attributes, resolve_sigma


@pytest.mark.parametrize("mu, sigma", [(2.3, 0.7), (-1.0, 0.5), (4.8, 1.2), (0.0, 0.05)])
def test_binned_normal_against_scipy_and_sums_to_one(mu, sigma):
    got = np.exp(log_level_probability(mu, sigma, np.arange(5)))
    edges = [-np.inf, 0.5, 1.5, 2.5, 3.5, np.inf]
    # scipy, bins above the mean through the survival function (a plain cdf difference loses digits there)
    want = [
        norm.sf(edges[i], mu, sigma) - norm.sf(edges[i + 1], mu, sigma)
        if edges[i] > mu
        else norm.cdf(edges[i + 1], mu, sigma) - norm.cdf(edges[i], mu, sigma)
        for i in range(5)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-300)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)


def test_far_tails_stay_finite_and_ordered():
    # 20 sigmas away: a plain Phi(b) - Phi(a) is 0 (log -inf); in log space it is finite and exact-ish.
    lp = log_level_probability(np.array([4.0, 4.0, 0.0]), 0.1, np.array([0, 1, 4]))
    assert np.all(np.isfinite(lp)) and lp[0] < lp[1]
    assert lp[2] == pytest.approx(norm.logsf(35.0), rel=1e-6)


def test_label_sum_over_attributes():
    pred = np.array([[3.2, 3.0, 3.9, 1.4, 0.6], [1.0, 1.0, 2.0, 2.0, 3.8]])
    sigma = {"helpfulness": 0.8, "correctness": 0.9, "coherence": 0.5, "complexity": 0.6, "verbosity": 0.7}
    got = log_p_attributes(pred, {"helpfulness": 3, "verbosity": 4}, sigma)
    want = np.log(norm.cdf(3.5, pred[:, 0], 0.8) - norm.cdf(2.5, pred[:, 0], 0.8)) + np.log(
        norm.sf(3.5, pred[:, 4], 0.7)
    )
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_sigma_sources(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text(
        json.dumps(
            {
                "per_attribute": {
                    a: {"rmse": 0.5 + i / 10}
                    for i, a in enumerate(["helpfulness", "correctness", "coherence", "complexity", "verbosity"])
                }
            }
        )
    )
    assert resolve_sigma(str(run))["verbosity"] == pytest.approx(0.9)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        json.dumps(
            {
                "rm_jax": {
                    "validation_rmse": {
                        a: 0.7 for a in ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
                    }
                }
            }
        )
    )
    assert resolve_sigma(str(hf))["coherence"] == 0.7
    assert resolve_sigma(str(hf), "0.3")["helpfulness"] == 0.3
    assert resolve_sigma(str(hf), "1,2,3,4,5")["verbosity"] == 5.0
    with pytest.raises(InputError, match="records no per-attribute validation RMSE"):
        resolve_sigma(str(tmp_path))
    with pytest.raises(InputError, match="one positive number or 5"):
        resolve_sigma(str(hf), "1,2")
