"""Where a chunk of new tokens goes in the cache (`CacheSlots`), and one layer's view of the cache
that the model's attention layer takes (`LayerCache`).

Slots are shared by all rows: every row writes its token t at the same slot, and rows of
different lengths are aligned by left padding (pad slots stay invalid and are never attended).
A query at slot i sees slot j iff j <= i and valid[b, j].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lwm.cache.write import write_slots

LAYER_KV_NAMES = ("batch", "act_kv_heads", "length", "head_dim")
"""Logical axes of one layer's keys or values `[B, K, S, H]`."""
LAYER_SCALE_NAMES = ("batch", "act_kv_heads", "length")
"""Logical axes of one layer's 8-bit key or value scales `[B, K, S]` (sharded like the slots)."""
VALID_NAMES = ("batch", "length")
"""Logical axes of the `[B, S]` valid mask."""
POS_NAMES = ("batch",)
"""Logical axes of the `[B]` next positions."""


@dataclasses.dataclass(frozen=True)
class CacheSlots:
    """Where a chunk of `T` new tokens goes in a cache of `S` slots; shared by every layer."""

    start: jax.Array
    """First slot of the chunk (int32 scalar, traced: no recompile per position)."""
    valid_bt: jax.Array
    """`[B, T]` 1 for the chunk's real tokens, 0 for left padding."""
    old_valid_bs: jax.Array
    """`[B, S]` the cache's valid slots before the chunk."""
    valid_bs: jax.Array
    """`[B, S]` valid slots once the chunk is written."""
    q_slots_t: jax.Array
    """`[T]` the chunk's slots, `start + arange(T)`."""
    mesh: Any = None
    """The mesh the cache is sharded on (the model's)."""
    key_block: int = 512
    """Key block of the prefill kernel over the cache."""
    decode_block: int = 2048
    """Key block of the decode kernel: a step reads the local cache shard this many slots at a
    time, up to its last filled slot (the largest divisor of the local slots up to this)."""

    @classmethod
    def for_chunk(
        cls,
        old_valid_bs: jax.Array,
        valid_bt: jax.Array,
        start: jax.Array,
        *,
        mesh: Any = None,
        key_block: int = 512,
        decode_block: int = 2048,
    ) -> CacheSlots:
        t = valid_bt.shape[1]
        valid_bs = write_slots(
            old_valid_bs, valid_bt.astype(jnp.int32), start, mesh, names=VALID_NAMES
        )
        q_slots_t = start + jnp.arange(t, dtype=jnp.int32)
        return cls(
            start=start,
            valid_bt=valid_bt,
            old_valid_bs=old_valid_bs,
            valid_bs=valid_bs,
            q_slots_t=q_slots_t,
            mesh=mesh,
            key_block=key_block,
            decode_block=decode_block,
        )


@dataclasses.dataclass(frozen=True)
class LayerCache:
    """One layer's keys and values `[B, K, S, H]` (head-major, RoPE applied) and the chunk's
    slots. Passing one to the model's attention layer makes it attend to (and extend) the cache.
    An 8-bit cache (`lwm.cache.quant`) also has the scales `[B, K, S]` of its codes."""

    k_bksh: jax.Array
    v_bksh: jax.Array
    slots: CacheSlots
    k_scale_bks: jax.Array | None = None
    v_scale_bks: jax.Array | None = None

    @property
    def quantized(self) -> bool:
        return self.k_scale_bks is not None
