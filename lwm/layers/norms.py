"""RMSNorm (LLaMA): normalise in fp32, scale, cast back to the compute dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lwm.layers.params import ones_param


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, param_dtype, dtype):
        self.scale = ones_param((dim,), ("norm",), dtype=param_dtype)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        x = x_btd.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        # HF LLaMA casts back to the input dtype before scaling; do the same for parity.
        return self.scale[...].astype(self.dtype) * x.astype(self.dtype)
