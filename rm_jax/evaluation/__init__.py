"""Evaluation of reward models: from predictions to metrics, prediction files and reports.

Modules along the data flow: :mod:`.evaluate` (rows -> predictions -> results; ``rm-jax eval`` as a
library), :mod:`.metrics` and :mod:`.rewardbench` (metrics from predictions alone), :mod:`.weights`
(reward weightings), :mod:`.predictions` (prediction files), :mod:`.reports` (readable tables) and
:mod:`.run_eval` (the evaluation a training run writes for its kept checkpoint).
"""
