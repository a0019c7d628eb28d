"""core: what every other package stands on — typed errors (:mod:`.errors`), atomic file writes and
readers (:mod:`.files`), attribute names and reward presets (:mod:`.attributes`), typed configs from YAML
with ``key=value`` overrides and their allowed values (:mod:`.config`), the one logging set-up
(:mod:`.console`), FLOP formulas (:mod:`.flops`).

Imports: nothing from rm_jax.
"""
