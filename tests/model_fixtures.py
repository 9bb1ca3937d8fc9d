"""Tiny models with random weights drawn on the host, shared by the inference tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def random_model(ctor, *, seed: int = 0, std: float = 0.2):
    """Random weights drawn on the host (no per-parameter XLA compiles, unlike eager init):
    norm scales near 1, biases 0, other weights N(0, std) (large enough for O(1) logits)."""
    abstract = nnx.eval_shape(ctor)
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = str(path[-1])
        if "scale" in name:
            value = 1.0 + 0.1 * rng.standard_normal(x.shape)
        elif "bias" in name or "usage" in name:
            value = np.zeros(x.shape)
        else:
            value = std * rng.standard_normal(x.shape)
        return jnp.asarray(value.astype(x.dtype))

    pure = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)
