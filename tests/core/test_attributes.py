"""Reward weights are matched to a model's attributes by name (presets, W.json, mappings); a plain list of
numbers is positional in the model's own order."""

import json

import numpy as np
import pytest

from rm_jax.core.attributes import (
    ATTRIBUTES,
    REWARD_PRESETS,
    check_weight_spec,
    eval_weightings,
    resolve_reward_weights,
    unnamed_attributes,
    weights_note,
)

REORDERED = ["correctness", "helpfulness", "coherence", "complexity", "verbosity"]


def _w_json(path, weights):
    path.write_text(json.dumps({"weights": weights, "heldout_accuracy": {"mean": 0.7}}))
    return str(path)


def test_w_json_naming_only_helpfulness_weighs_the_helpfulness_column(tmp_path):
    spec = _w_json(tmp_path / "W.json", {"helpfulness": 1.0})
    w = resolve_reward_weights(spec, REORDERED)
    pred = np.random.default_rng(0).normal(size=(6, 5))
    np.testing.assert_array_equal(pred @ w, pred[:, REORDERED.index("helpfulness")])
    assert unnamed_attributes(spec, REORDERED) == ["correctness", "coherence", "complexity", "verbosity"]
    note = weights_note(spec, REORDERED)
    assert "correctness, coherence, complexity, verbosity" in note and "weight 0" in note


def test_w_json_with_every_attribute_is_matched_by_name_in_any_order(tmp_path):
    given = {a: float(i + 1) for i, a in enumerate(reversed(ATTRIBUTES))}  # file order differs from both
    spec = _w_json(tmp_path / "W.json", given)
    np.testing.assert_array_equal(resolve_reward_weights(spec, REORDERED), [given[a] for a in REORDERED])
    np.testing.assert_array_equal(resolve_reward_weights(spec, ATTRIBUTES), [given[a] for a in ATTRIBUTES])
    assert unnamed_attributes(spec, REORDERED) == [] and weights_note(spec, REORDERED) is None
    # the same weights as a mapping (config values, serve requests)
    np.testing.assert_array_equal(resolve_reward_weights(given, REORDERED), [given[a] for a in REORDERED])


def test_a_name_the_model_lacks_is_a_one_line_error_naming_it(tmp_path):
    spec = _w_json(tmp_path / "W.json", {"helpfulness": 1.0, "safety": 0.5})
    with pytest.raises(ValueError, match="name safety, which the model does not predict") as e:
        resolve_reward_weights(spec, REORDERED)
    assert "\n" not in str(e.value) and "W.json" in str(e.value)
    with pytest.raises(ValueError, match="name safety"):
        resolve_reward_weights({"safety": 1.0}, ["helpfulness"])


def test_presets_are_matched_by_name():
    for name, values in REWARD_PRESETS.items():
        by_name = dict(zip(ATTRIBUTES, values))
        np.testing.assert_array_equal(resolve_reward_weights(name, REORDERED), [by_name[a] for a in REORDERED])
    np.testing.assert_array_equal(resolve_reward_weights("helpfulness-only", ["helpfulness"]), [1.0])
    with pytest.raises(ValueError, match="the model lacks correctness, coherence, complexity, verbosity"):
        resolve_reward_weights("70b-rewardbench", ["helpfulness"])
    with pytest.raises(ValueError, match="does not weigh the model's safety"):
        resolve_reward_weights("helpfulness-only", ["helpfulness", "safety"])


def test_a_list_of_numbers_is_positional_in_the_models_order():
    np.testing.assert_array_equal(resolve_reward_weights("1,2,3,4,5", REORDERED), [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(resolve_reward_weights([0, 2], ["a", "b"]), [0, 2])
    with pytest.raises(ValueError, match="have 2 values; expected 5, one per attribute in the model's order"):
        resolve_reward_weights([1.0, 2.0], REORDERED)
    with pytest.raises(ValueError, match="non-finite"):
        resolve_reward_weights("1,nan", ["a", "b"])
    with pytest.raises(TypeError, match="attribute names, not a count"):
        resolve_reward_weights("70b-rewardbench", 5)


def test_what_is_checked_before_the_model_is_known(tmp_path):
    check_weight_spec("goodness")
    check_weight_spec("1,2")  # its length is checked against the model later
    check_weight_spec(_w_json(tmp_path / "W.json", {"anything": 1.0}))  # its names too
    with pytest.raises(ValueError, match="unknown reward-weight preset 'goodnes'"):
        check_weight_spec("goodnes")
    with pytest.raises(ValueError, match="unknown reward-weight preset"):
        check_weight_spec(str(tmp_path / "W.json"), allow_file=False)  # a server request never reads a file
    (tmp_path / "bad.json").write_text(json.dumps({"weights": {"helpfulness": "x"}}))
    with pytest.raises(ValueError, match=r"bad.json: weights.helpfulness is not a number"):
        check_weight_spec(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="missing.json"):
        check_weight_spec(str(tmp_path / "missing.json"))


def test_eval_weightings_keep_presets_for_helpsteer_attributes_in_any_order():
    specs = ["70b-rewardbench", "helpfulness-only", "1,0"]
    assert eval_weightings(specs, REORDERED) == specs
    assert eval_weightings(specs, ["a", "b"]) == ["1,0"]


def test_reward_head_spec_picks_the_separate_output_and_others_give_it_zero(tmp_path):
    from rm_jax.core.attributes import REWARD_HEAD

    outputs = REORDERED + [REWARD_HEAD]
    np.testing.assert_array_equal(resolve_reward_weights("reward_head", outputs), [0, 0, 0, 0, 0, 1])
    preset = resolve_reward_weights("70b-rewardbench", outputs)
    np.testing.assert_array_equal(preset[:5], resolve_reward_weights("70b-rewardbench", REORDERED))
    assert preset[5] == 0
    assert resolve_reward_weights("1,2,3,4,5", outputs).tolist() == [1, 2, 3, 4, 5, 0]  # positional: attributes
    named = _w_json(tmp_path / "W.json", {"correctness": 2.0})
    assert resolve_reward_weights(named, outputs).tolist() == [2, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="no separate reward output"):
        resolve_reward_weights("reward_head", REORDERED)
    check_weight_spec("reward_head")
