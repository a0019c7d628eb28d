import numpy as np

from rm_jax.evaluation.helpsteer3 import score_helpsteer3


def test_accuracy_per_domain_and_language_with_a_reward_tie():
    rows = [
        {"domain": "code", "language": "english"},
        {"domain": "code", "language": "english"},
        {"domain": "multilingual", "language": "french"},
        {"domain": "general", "language": "english"},
    ]
    out = score_helpsteer3(rows, np.array([1.0, 0.0, 2.0, 1.0]), np.array([0.0, 1.0, 1.0, 1.0]), ties_left_out=3)
    assert out["accuracy"] == 0.5  # the exact reward tie (last pair) is wrong
    assert out["domains"] == {"code": 0.5, "general": 0.0, "multilingual": 1.0}
    assert out["languages"] == {"english": 1 / 3, "french": 1.0}
    assert out["ties_left_out"] == 3 and out["reward_ties"] == 1 and out["pairs"] == 4
