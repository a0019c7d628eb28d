"""The weightings an evaluation reports are matched to the model's attributes by name."""

import json

import numpy as np
import pytest

from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS
from rm_jax.core.errors import InputError
from rm_jax.evaluation.weights import check_weights, default_weights, weight_sets, weights_record

REORDERED = ["correctness", "helpfulness", "coherence", "complexity", "verbosity"]


def test_weight_sets_and_record_for_reordered_attributes(tmp_path):
    (tmp_path / "W.json").write_text(json.dumps({"weights": {"helpfulness": 2.0}}))
    spec = str(tmp_path / "W.json")
    sets = weight_sets(spec, REORDERED)
    assert set(sets) == set(REWARD_PRESETS) | {"W"}
    np.testing.assert_array_equal(sets["W"], [0, 2, 0, 0, 0])
    np.testing.assert_array_equal(sets["helpfulness-only"], [0, 1, 0, 0, 0])
    rec = weights_record(spec, REORDERED)
    assert rec["values"] == {
        "correctness": 0.0,
        "helpfulness": 2.0,
        "coherence": 0.0,
        "complexity": 0.0,
        "verbosity": 0.0,
    }
    assert rec["zero_unnamed"] == ["correctness", "coherence", "complexity", "verbosity"]
    assert "zero_unnamed" not in weights_record("goodness", REORDERED)
    assert default_weights(REORDERED) == "70b-rewardbench"


def test_check_weights_names_the_flag_and_the_missing_attribute(tmp_path):
    (tmp_path / "W.json").write_text(json.dumps({"weights": {"helpfulness": 1.0, "harmlessness": 1.0}}))
    with pytest.raises(InputError, match=r"^--weights: .*name harmlessness, which the model does not predict") as e:
        check_weights(str(tmp_path / "W.json"), ATTRIBUTES)
    assert "\n" not in str(e.value)
