"""A policy: decoder config + params with an LM head, its tokenizer and chat template, on a mesh."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

import jax
from jax.sharding import Mesh

from rm_jax.core.errors import ConfigError
from rm_jax.models.hf_io import load_hf_causal_lm, load_tokenizer
from rm_jax.models.llama import DecoderConfig
from rm_jax.models.sharding import make_mesh
from rm_jax.runs.read import is_run_dir, load_run, read_meta


@dataclass
class Policy:
    cfg: DecoderConfig
    params: Any
    tokenizer: Any
    template: Optional[str]  # a built-in name or a literal jinja template; None: the tokenizer's own
    mesh: Mesh
    path: str = ""

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0


def load_policy(
    path: str, mesh: Optional[Mesh] = None, dtype: str = "float32", template: Optional[str] = None, **run_options: Any
) -> Policy:
    """``path``: an HF ``*ForCausalLM`` folder (or hub id) or an rm_jax run folder trained with task sft
    or steerlm2 (its kept checkpoint), placed on ``mesh`` (default: one device). ``template``: a built-in
    chat template name (``nemotron``) instead of the tokenizer's own (a run's default: the one it trained
    with). run_options are DecoderConfig run fields (attention, scan_layers, matmul_precision, ...)."""
    mesh = mesh or make_mesh(devices=jax.devices()[:1])
    if is_run_dir(path):
        meta = read_meta(path)
        if meta.get("decoder", {}).get("head", "reward") != "lm":
            raise ConfigError(
                f"{path}: a reward-model run (task {meta.get('task', 'rm')}); a policy needs an lm run "
                f"(task sft or steerlm2) or an HF *ForCausalLM folder"
            )
        cfg, params, meta, tok = load_run(path, mesh, dtype, **run_options)
        return Policy(cfg, params, tok, template or meta.get("template"), mesh, path)
    lm = load_hf_causal_lm(path, mesh, dtype=dtype, **run_options)
    return Policy(lm.cfg, lm.params, load_tokenizer(lm.path), template, mesh, path)


_PROGRAMS: "OrderedDict[Hashable, Callable]" = OrderedDict()
_KEEP = 32


def program(policy: Policy, key: tuple, build: Callable[[], Callable]) -> Callable:
    """A jitted function for this policy's model and ``key`` (shapes, sampling settings), built once per
    process: the parameters are arguments, so reloading a policy, or another policy of the same architecture
    on the same mesh, reuses the compiled program. The least recently used beyond 32 are dropped."""
    full = (repr(policy.cfg), policy.mesh, policy.pad_id, policy.tokenizer.eos_token_id) + tuple(key)
    if full in _PROGRAMS:
        _PROGRAMS.move_to_end(full)
    else:
        _PROGRAMS[full] = build()
        while len(_PROGRAMS) > _KEEP:
            _PROGRAMS.popitem(last=False)
    return _PROGRAMS[full]
