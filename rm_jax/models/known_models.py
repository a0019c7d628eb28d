"""config.json figures of the models the shipped experiment files name, so `rm-jax plan` can size them with no
network and no weights (copied from the models' config.json on the Hugging Face hub)."""

from __future__ import annotations

from typing import Optional

_LLAMA3 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "attention_bias": False,
}
_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32}
_70B = {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64}
_ROPE31 = {
    "max_position_embeddings": 131072,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
}

KNOWN_CONFIGS: dict[str, dict] = {
    "meta-llama/Meta-Llama-3-8B": {**_LLAMA3, **_8B},
    "meta-llama/Meta-Llama-3-8B-Instruct": {**_LLAMA3, **_8B},
    "meta-llama/Meta-Llama-3-70B": {**_LLAMA3, **_70B},
    "meta-llama/Meta-Llama-3-70B-Instruct": {**_LLAMA3, **_70B},
    "meta-llama/Llama-3.1-8B": {**_LLAMA3, **_8B, **_ROPE31},
    "meta-llama/Llama-3.1-8B-Instruct": {**_LLAMA3, **_8B, **_ROPE31},
    "meta-llama/Llama-3.1-70B": {**_LLAMA3, **_70B, **_ROPE31},
    "meta-llama/Llama-3.1-70B-Instruct": {**_LLAMA3, **_70B, **_ROPE31},
}


def known_config(model_id: str) -> Optional[dict]:
    """The config.json of a model in the table (a copy), or None."""
    cfg = KNOWN_CONFIGS.get(model_id)
    return dict(cfg) if cfg is not None else None
