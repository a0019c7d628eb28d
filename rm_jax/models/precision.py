"""Matmul precision: one setting (``model.matmul_precision``) for every dot of the model.

Why explicit: on a GPU a float32 ``jnp.dot`` defaults to TF32 (relative error ~3e-4 against
float64; measured on an H100, docs/performance.md), which breaks fp32 parity with transformers;
TPUs default to one bfloat16 pass. The CPU computes float32 dots exactly whatever the setting, so
tests check the lowered program carries the precision instead of checking numbers.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, get_args

import jax
from jax import lax

from rm_jax.core.config import MatmulPrecision

PRECISIONS = get_args(MatmulPrecision)

_BY_NAME = {"default": lax.Precision.DEFAULT, "high": lax.Precision.HIGH, "highest": lax.Precision.HIGHEST}


def resolve_precision(name: Optional[str], dtype: str) -> lax.Precision:
    """``None`` -> ``highest`` for float32 compute (scoring and parity must match transformers'
    fp32) and ``default`` for bfloat16 (the operands are already rounded; the MXU/tensor cores'
    native pass is what training wants)."""
    if name is None:
        name = "highest" if dtype == "float32" else "default"
    if name not in _BY_NAME:
        raise ValueError(f"model.matmul_precision={name!r}; choose null or one of {', '.join(PRECISIONS)}")
    return _BY_NAME[name]


@contextlib.contextmanager
def dots_inside(precision: Optional[lax.Precision]) -> Iterator[None]:
    """Third-party kernels (Pallas splash attention) call ``dot_general`` without a precision;
    JAX resolves a missing precision from this config at trace time, so wrap their call in it."""
    if precision is None:
        yield
        return
    with jax.default_matmul_precision(precision.name.lower()):
        yield
