"""The sharded slot write: a chunk of new entries written at cache slots `[start, start + T)`.

Each device updates its own shard inside a shard_map (the chunk's slots map to (shard, local
offset); a chunk may straddle shards). Left to the SPMD partitioner, a dynamic-update-slice at a
traced slot on the sharded axis gathers the whole layer cache onto every device, so prefill
temporaries grew with the full cache, not the shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from lwm.sharding import logical_to_spec

SP = "sp"
SLOT_AXIS = "length"
"""The logical name of the slot axis of every cache array (sharded over `sp`)."""


def slot_shards(mesh: Any) -> int:
    """How many shards the slot axis is split into: the size of `sp` (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape.get(SP, 1))


def write_local(x: jax.Array, new: jax.Array, start, lo, axis: int) -> jax.Array:
    """Writes `new` (`T` slots on `axis`) at global slot `start` into the local shard `x` that
    holds global slots `[lo, lo + S_local)`; only the part of the chunk inside the shard lands.

    One window of `W = min(T, S_local)` local slots is read, merged with the chunk where the
    chunk covers it, and written back: a dynamic-update-slice of `W` slots on the shard, in
    place, whatever the offset (a chunk may straddle two shards, or miss this one)."""
    t, s_local = new.shape[axis], x.shape[axis]
    w = min(t, s_local)
    a = jnp.clip(start - lo, 0, s_local)  # first local slot the chunk covers
    off = jnp.minimum(a, s_local - w)  # window [off, off + w) contains the covered range
    i0 = lo + off - start  # chunk index of the window's first slot
    pad = [(0, 0)] * new.ndim
    pad[axis] = (w, w)
    src = lax.dynamic_slice_in_dim(jnp.pad(new, pad), jnp.clip(i0 + w, 0, t + w), w, axis)
    idx = i0 + jnp.arange(w, dtype=jnp.int32)
    shape = [1] * new.ndim
    shape[axis] = w
    inside = ((idx >= 0) & (idx < t)).reshape(shape)
    old = lax.dynamic_slice_in_dim(x, off, w, axis)
    return lax.dynamic_update_slice_in_dim(x, jnp.where(inside, src, old), off, axis)


def write_slots(
    x: jax.Array, new: jax.Array, start: jax.Array, mesh: Any, *, names: Sequence[str]
) -> jax.Array:
    """`x` with `new` written at slots `[start, start + T)` of its slot axis; `names` are `x`'s
    logical axes (the slot axis is `length`, sharded over `sp`: e.g. a layer's keys
    `(batch, act_kv_heads, length, head_dim)` or the valid mask `(batch, length)`).

    With `sp > 1` every device writes its own shard inside a shard_map. A dynamic-update-slice
    at a traced offset on a sharded axis, left to the SPMD partitioner, all-gathers the whole
    buffer on every device, updates it and slices it back: a full (unsharded) copy of each
    layer cache in every prefill chunk's temporaries."""
    axis = tuple(names).index(SLOT_AXIS)
    sp = slot_shards(mesh)
    new = new.astype(x.dtype)
    if sp == 1:
        return lax.dynamic_update_slice_in_dim(x, new, start, axis)
    s_local = x.shape[axis] // sp
    spec = logical_to_spec(tuple(names), x.shape, mesh)
    new_spec = P(*(None if i == axis else a for i, a in enumerate(spec)))

    def local(x, new, start):
        return write_local(x, new, start, lax.axis_index(SP) * s_local, axis)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(spec, new_spec, P()),
        out_specs=spec,
        check_vma=False,
    )(x, new, jnp.asarray(start, jnp.int32))
