"""evaluation: reward models judged — from predictions to metrics, prediction files and reports.

Modules along the data flow: :mod:`.evaluate` (rows -> predictions -> results; ``rm-jax eval`` as a
library), :mod:`.metrics`, :mod:`.rewardbench` and :mod:`.rewardbench2` (metrics from predictions alone:
per-attribute, pairwise, RewardBench sections, RewardBench 2 best-of-N and Ties), :mod:`.weights` (reward
weightings), :mod:`.weight_fit` (attribute weights fitted from preferences, ``rm-jax weights fit``),
:mod:`.predictions` (prediction files) and :mod:`.report_text` (readable tables). The evaluation a training
run writes for its kept checkpoint is rm_jax.training.final_eval.

Imports: core, data, models, engine, runs.
"""
