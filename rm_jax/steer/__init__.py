"""SteerLM 2.0 with rm_jax's multi-attribute RMs: sample from a policy (:mod:`.sample`), label the samples
with RM-derived importance weights in NeMo-Aligner's format (:mod:`.label`, using :mod:`.attribute_model`
for P(a|x,y)), and evaluate how well a policy follows requested attributes (:mod:`.steer_eval`). The
training objective itself is ``task: steerlm2`` (rm_jax.engine.losses.steerlm2_sums)."""
