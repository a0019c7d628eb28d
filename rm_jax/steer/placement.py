"""Loading the policies and the RM a SteerLM 2.0 step uses, on one device or sharded over all of them."""

from __future__ import annotations

from typing import Any

import jax

from rm_jax.core.errors import InputError
from rm_jax.models.sharding import make_mesh

DEVICES = ("one", "all")


def step_mesh(devices: str = "one") -> Any:
    """``one``: the first device (small models); ``all``: parameters split over every local device (fsdp),
    e.g. a 70B policy in bf16 over a node of 8 GPUs."""
    if devices not in DEVICES:
        raise InputError(f"devices: {devices!r} is not one of {', '.join(DEVICES)}")
    return (
        make_mesh(devices=jax.local_devices()[:1])
        if devices == "one"
        else make_mesh(fsdp=-1, devices=jax.local_devices())
    )


def policy(path_or_policy: Any, devices: str = "one", dtype: str = "float32") -> Any:
    from rm_jax.policy import load_policy

    return (
        load_policy(path_or_policy, mesh=step_mesh(devices), dtype=dtype)
        if isinstance(path_or_policy, str)
        else path_or_policy
    )


def reward_model(path: str, devices: str = "one", dtype: str = "float32") -> Any:
    from rm_jax.runs.read import load_scoring_model

    return load_scoring_model(path, mesh=step_mesh(devices), dtype=dtype)
