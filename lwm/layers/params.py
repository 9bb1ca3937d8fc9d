"""Parameter creation with logical-axis metadata (the sharding rules table resolves the names)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def normal_param(
    rngs: nnx.Rngs,
    shape: Sequence[int],
    logical_axes: Sequence[str],
    *,
    stddev: float,
    dtype,
) -> nnx.Param:
    value = stddev * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)
    return nnx.Param(value.astype(dtype), logical_axes=tuple(logical_axes))


def ones_param(shape: Sequence[int], logical_axes: Sequence[str], *, dtype) -> nnx.Param:
    return nnx.Param(jnp.ones(tuple(shape), dtype), logical_axes=tuple(logical_axes))


def zeros_param(shape: Sequence[int], logical_axes: Sequence[str], *, dtype) -> nnx.Param:
    return nnx.Param(jnp.zeros(tuple(shape), dtype), logical_axes=tuple(logical_axes))
