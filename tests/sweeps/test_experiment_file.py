"""Experiment files: a prompt gate named as a sweep's reward weighting stops before anything runs (each
member trains its own RM; a gate weighs only the RM it was fitted on), never scored as a constant."""

from __future__ import annotations

import pytest
import yaml

from rm_jax.core.errors import ConfigError
from rm_jax.sweeps.experiment_file import expand, load_experiment
from tests.helpers import tiny_base


@pytest.mark.parametrize("where", ["base", "sweep"])
def test_a_gate_in_eval_reward_weights_is_refused_at_expansion(tmp_path, data_files, where):
    (tmp_path / "G").mkdir()
    (tmp_path / "G" / "gate.json").write_text("{}")
    gate = str(tmp_path / "G")
    base = tiny_base(data_files)
    exp = {"base": base, "sweep": {"data.fraction": [0.5, 1.0]}}
    if where == "base":
        base.setdefault("eval", {})["reward_weights"] = ["70b-rewardbench", gate]
    else:
        exp["sweep"]["eval.reward_weights"] = ["70b-rewardbench", gate]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    with pytest.raises(ConfigError, match="eval.reward_weights .*is a prompt gate .*rm-jax eval --model RUN"):
        expand(load_experiment(str(path), [f"sweep_dir={tmp_path / 's'}"]))
