"""The training loop and what it builds before the first step (:mod:`.setup`), reports while it runs
(:mod:`.logs`) and does per step (:mod:`.loop`; the step itself is :mod:`rm_jax.engine.train_step`)."""
