"""The KV cache: per-layer keys/values laid out and sharded like training activations.

Arrays (L layers, B rows, S slots, K kv heads, H head dim):
  k, v:   [L, B, S, K, H]  logical axes (layers, batch, length, act_kv_heads, head_dim), so the
          slot axis is sharded over `sp`, kv heads over `tp` and rows over dp x fsdp: a cache of
          millions of tokens spans the mesh exactly like the activations of a training step.
  valid:  [B, S] int32     1 where the slot holds a real token, 0 for padding or not yet written.
  next_pos: [B] int32      RoPE position of each row's next token (real tokens only, so left
                           padding and padding between a shared prefix and a suffix shift nothing).

Slots are shared by all rows: every row writes its token t at the same slot, and rows of
different lengths are aligned by left padding (pad slots stay invalid and are never attended).
A query at slot i sees slot j iff j <= i and valid[b, j]. The number of slots written is kept on
the host by the sampler (never a static jit argument); the cache has a fixed `capacity` so the
decode step compiles once per capacity bucket.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from lwm.models.config import ModelConfig, to_dtype
from lwm.sharding import logical_to_sharding

KV_NAMES = ("layers", "batch", "length", "act_kv_heads", "head_dim")
VALID_NAMES = ("batch", "length")
POS_NAMES = ("batch",)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    k: jax.Array
    """Keys `[L, B, S, K, H]` (RoPE applied)."""
    v: jax.Array
    """Values `[L, B, S, K, H]`."""
    valid: jax.Array
    """`[B, S]` int32: 1 = real token in the slot."""
    next_pos: jax.Array
    """`[B]` int32: position of the next token of each row."""

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        return self.k.shape[2]


def cache_shardings(
    shape_lbskh: tuple[int, ...], mesh: Mesh | None
) -> tuple[NamedSharding, NamedSharding, NamedSharding] | None:
    """Shardings of (k/v, valid, next_pos) for a cache of this shape; None without a mesh."""
    if mesh is None:
        return None
    _, b, s, _, _ = shape_lbskh
    return (
        logical_to_sharding(KV_NAMES, shape_lbskh, mesh),
        logical_to_sharding(VALID_NAMES, (b, s), mesh),
        logical_to_sharding(POS_NAMES, (b,), mesh),
    )


def place(cache: KVCache, mesh: Mesh | None) -> KVCache:
    """Moves (or reshards) a cache onto its logical-axis shardings."""
    shardings = cache_shardings(cache.k.shape, mesh)
    if shardings is None:
        return cache
    kv, valid, pos = shardings
    return KVCache(
        jax.device_put(cache.k, kv),
        jax.device_put(cache.v, kv),
        jax.device_put(cache.valid, valid),
        jax.device_put(cache.next_pos, pos),
    )


def init_cache(cfg: ModelConfig, batch: int, capacity: int, mesh: Mesh | None = None) -> KVCache:
    """An empty cache, each array created directly in its sharding (never whole on one device)."""
    shape = (cfg.num_layers, batch, capacity, cfg.num_kv_heads, cfg.head_dim)
    dt = to_dtype(cfg.dtype)

    def make():
        return KVCache(
            jnp.zeros(shape, dt),
            jnp.zeros(shape, dt),
            jnp.zeros((batch, capacity), jnp.int32),
            jnp.zeros((batch,), jnp.int32),
        )

    shardings = cache_shardings(shape, mesh)
    if shardings is None:
        return make()
    kv, valid, pos = shardings
    out = KVCache(kv, kv, valid, pos)
    return jax.jit(make, out_shardings=out)()


def grow(cache: KVCache, capacity: int, mesh: Mesh | None = None) -> KVCache:
    """The same cache with `capacity` slots (new slots empty); a no-op when already that big."""
    if capacity <= cache.capacity:
        return cache
    extra = capacity - cache.capacity

    def pad(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, extra)
        return jnp.pad(x, widths)

    out = KVCache(pad(cache.k, 2), pad(cache.v, 2), pad(cache.valid, 1), cache.next_pos)
    return place(out, mesh)


def repeat_rows(cache: KVCache, batch: int, mesh: Mesh | None = None) -> KVCache:
    """A one-row cache (a shared prefix) copied to `batch` rows; the source is left untouched."""
    if cache.batch != 1:
        raise ValueError(f"repeat_rows expects a one-row cache, got {cache.batch} rows")

    def rep(x, axis):
        return jnp.repeat(x, batch, axis=axis)

    out = KVCache(rep(cache.k, 1), rep(cache.v, 1), rep(cache.valid, 0), rep(cache.next_pos, 0))
    return place(out, mesh)


def bucket(n: int, multiple: int = 256) -> int:
    """`n` rounded up to a multiple of `multiple` (capacity buckets: few decode compiles)."""
    return -(-max(n, 1) // multiple) * multiple
