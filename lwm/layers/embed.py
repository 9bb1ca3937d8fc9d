"""Token embeddings: a text table and, for LWM vision models, a separate vision-code table.

`vision_mask` picks per position which table a token id indexes (LWM's interleaved video/text).
Ids are clamped to 0 where the other table applies, so out-of-range ids never reach a gather.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lwm.layers.params import normal_param


class Embedder(nnx.Module):
    def __init__(
        self,
        vocab_size: int,
        vision_vocab_size: int,
        dim: int,
        *,
        rngs: nnx.Rngs,
        stddev: float,
        param_dtype,
        dtype,
    ):
        self.text = normal_param(
            rngs, (vocab_size, dim), ("vocab", "embed"), stddev=stddev, dtype=param_dtype
        )
        self.vision = (
            normal_param(
                rngs, (vision_vocab_size, dim), ("vocab", "embed"), stddev=stddev, dtype=param_dtype
            )
            if vision_vocab_size
            else None
        )
        self.dtype = dtype

    def __call__(self, tokens_bt: jax.Array, vision_mask_bt: jax.Array | None = None) -> jax.Array:
        if self.vision is None or vision_mask_bt is None:
            return jnp.take(self.text[...], tokens_bt, axis=0).astype(self.dtype)
        text_ids = jnp.where(vision_mask_bt, 0, tokens_bt)
        vision_ids = jnp.where(vision_mask_bt, tokens_bt, 0)
        text_btd = jnp.take(self.text[...], text_ids, axis=0).astype(self.dtype)
        vision_btd = jnp.take(self.vision[...], vision_ids, axis=0).astype(self.dtype)
        return jnp.where(vision_mask_bt[..., None], vision_btd, text_btd)
