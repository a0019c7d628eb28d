"""rm_jax: HelpSteer2-style multi-attribute reward models in JAX."""

from rm_jax.core.attributes import ATTRIBUTES, REWARD_PRESETS, resolve_reward_weights

__version__ = "0.1.0"
__all__ = ["ATTRIBUTES", "REWARD_PRESETS", "resolve_reward_weights", "__version__"]
