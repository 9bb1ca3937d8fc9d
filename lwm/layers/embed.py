"""Token embeddings: a text table and, for LWM vision models, a separate vision-code table.

`vision_mask` picks per position which table a token id indexes (LWM's interleaved video/text).
Ids are clamped to 0 where the other table applies, so out-of-range ids never reach a gather.

On a mesh, a table's embedding dimension is gathered whole for the lookup (as FSDP gathers every
weight) while the ids stay sharded like the activations (batch, length): a lookup into a table
sharded on that dimension would come out sharded on it, and XLA can only move such an output to
the activations' sharding by materialising the full `[B, T, D]` activation on every device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from lwm.layers.params import normal_param
from lwm.sharding import with_logical_constraint


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
        mesh: Mesh | None = None,
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
        self.mesh = mesh

    def _lookup(self, table_vd: jax.Array, ids_bt: jax.Array, gather_table: bool) -> jax.Array:
        if gather_table:
            table_vd = with_logical_constraint(table_vd, ("vocab", None), self.mesh)
            ids_bt = with_logical_constraint(ids_bt, ("batch", "length"), self.mesh)
        else:  # every device looks up its slice of the embedding dimension for all the ids
            ids_bt = with_logical_constraint(ids_bt, ("batch", None), self.mesh)
        return jnp.take(table_vd, ids_bt, axis=0).astype(self.dtype)

    def __call__(
        self,
        tokens_bt: jax.Array,
        vision_mask_bt: jax.Array | None = None,
        *,
        gather_table: bool = True,
    ) -> jax.Array:
        """Embeddings `[B, T, D]`. `gather_table=False` looks the ids up in the tables as they
        are sharded and leaves moving the `[B, T, D]` result to XLA: cheaper for the few tokens
        of a cached chunk, too costly for a training sequence (see the module docstring)."""
        if self.vision is None or vision_mask_bt is None:
            return self._lookup(self.text[...], tokens_bt, gather_table)
        text_ids = jnp.where(vision_mask_bt, 0, tokens_bt)
        vision_ids = jnp.where(vision_mask_bt, tokens_bt, 0)
        text_btd = self._lookup(self.text[...], text_ids, gather_table)
        vision_btd = self._lookup(self.vision[...], vision_ids, gather_table)
        return jnp.where(vision_mask_bt[..., None], vision_btd, text_btd)
