"""The device mesh and the one table that maps logical axis names onto it.

Every parameter carries logical names (``vocab``, ``embed``, ``heads``, ...); activations use
``act_*`` names. ``RULES`` is the only place that says which mesh axis each one is split over.
A dimension that a mesh axis does not divide is replicated instead (e.g. one kv head on a
tensor axis of 2), so any model loads on any mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rm_jax.core.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes (tried in order; the first that divides the dimension is used, and a
# tuple means all of them together).
RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("attributes", None),
    ("levels", None),  # a distributional head's label levels (rm_jax.models.heads): a handful, never split
    ("lora", None),  # a LoRA adapter's rank: small, never split
    # activations
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
)

_ACTIVE: contextvars.ContextVar[Optional[Mesh]] = contextvars.ContextVar("rm_jax_mesh", default=None)


class MeshError(ConfigError):
    """A mesh shape that does not fit the devices."""


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; one axis may be -1 = the rest of the devices."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise MeshError("mesh: at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"mesh: sizes must be positive or -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise MeshError(f"mesh: {n} devices cannot be split into data={data} fsdp={fsdp} tensor={tensor}")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise MeshError(
            f"mesh: data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
            f"does not match the {n} available devices"
        )
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # irregular device sets (e.g. CPU) have no physical topology to follow
        arr = np.asarray(devices).reshape(sizes)
    return Mesh(arr, MESH_AXES)


def _rule(name: Optional[str]) -> Any:
    if name is None:
        return None
    for k, v in RULES:
        if k == name:
            return v
    raise KeyError(f"logical axis {name!r} has no rule in rm_jax.models.sharding.RULES")


def logical_to_spec(axes: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh) -> P:
    """Logical names + the array's shape -> a PartitionSpec that divides evenly and uses each mesh axis once."""
    used: set[str] = set()
    out = []
    for name, dim in zip(axes, shape):
        target = _rule(name)
        if target is None:
            out.append(None)
            continue
        group = (target,) if isinstance(target, str) else tuple(target)
        group = tuple(a for a in group if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in group)
        if not group or dim % size:
            out.append(None)
            continue
        used.update(group)
        out.append(group[0] if len(group) == 1 else group)
    return P(*out)


def logical_sharding(axes: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))


def param_shardings(logical_specs: Any, abstract_params: Any, mesh: Mesh) -> Any:
    """Tree of logical PartitionSpecs (from ``nn.get_partition_spec``) + shapes -> NamedShardings."""
    return jax.tree.map(
        lambda spec, a: logical_sharding(tuple(spec) + (None,) * (len(a.shape) - len(spec)), a.shape, mesh),
        logical_specs,
        abstract_params,
        is_leaf=lambda x: isinstance(x, P),
    )


@contextlib.contextmanager
def activate(mesh: Optional[Mesh]) -> Iterator[Optional[Mesh]]:
    """Make activation constraints (``constrain``) apply on this mesh while tracing."""
    token = _ACTIVE.set(mesh)
    try:
        yield mesh
    finally:
        _ACTIVE.reset(token)


def active_mesh() -> Optional[Mesh]:
    """The mesh :func:`activate` set for this trace, or None."""
    return _ACTIVE.get()


def constrain(x: jax.Array, axes: Sequence[Optional[str]]) -> jax.Array:
    """Sharding constraint on an activation by logical names; a no-op outside ``activate``."""
    mesh = _ACTIVE.get()
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_sharding(axes, x.shape, mesh))


def data_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batches: leading (batch) dimension over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
