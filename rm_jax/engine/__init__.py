"""engine: the pure training computation and the state it carries — losses as (sum, count)
(:mod:`.losses`), the jitted step over a mesh (:mod:`.train_step`), Orbax checkpoints with fallback past
damaged steps (:mod:`.checkpoint`), packed batched forward passes (:mod:`.scoring`, ``rm-jax score`` as a
library).

Imports: core, data, models.
"""
