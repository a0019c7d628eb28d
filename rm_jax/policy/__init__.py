"""The policy side: a causal LM on rm_jax's decoder, loaded from an HF ``*ForCausalLM`` folder or an
rm_jax lm run (:mod:`.load`), sampled with a KV cache (:mod:`.generate`), scored by response
log-probabilities (:mod:`.logprob`), and applied to JSON-lines rows (:mod:`.rows`: ``rm-jax lm``)."""

from rm_jax.policy.generate import Generation, generate, generate_tokens
from rm_jax.policy.load import Policy, load_policy
from rm_jax.policy.logprob import response_logprobs
from rm_jax.policy.rows import generate_rows, logprob_rows, read_prompt_rows, read_response_rows

__all__ = [
    "Generation",
    "Policy",
    "generate",
    "generate_tokens",
    "generate_rows",
    "load_policy",
    "logprob_rows",
    "read_prompt_rows",
    "read_response_rows",
    "response_logprobs",
]
