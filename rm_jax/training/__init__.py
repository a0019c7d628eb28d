"""training: one run — what it builds before the first step (:mod:`.setup`), reports while it runs
(:mod:`.logs`) and does per step (:mod:`.loop` wires a run; :mod:`.trainer` runs the steps and hooks;
:mod:`.hooks` logs, validates, checkpoints and probes; :mod:`.tasks` is what is trained, with
:mod:`.validators`; the step itself is :mod:`rm_jax.engine.train_step`), then the kept checkpoint's
evaluation (:mod:`.final_eval`) and ``DONE`` (:mod:`.run`: ``train(cfg)``).

Imports: core, data, models, engine, runs, evaluation, policy, steer.
"""
