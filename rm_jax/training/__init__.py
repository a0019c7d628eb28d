"""The training loop and what it builds before the first step (:mod:`.setup`), reports while it runs
(:mod:`.logs`) and does per step (:mod:`.loop` wires a run; :mod:`.trainer` runs the steps and hooks;
:mod:`.hooks` logs, validates, checkpoints and probes; :mod:`.tasks` is what is trained, with
:mod:`.validators`; the step itself is :mod:`rm_jax.engine.train_step`)."""
