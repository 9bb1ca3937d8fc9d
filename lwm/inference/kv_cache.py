"""The KV cache: per-layer keys/values laid out and sharded like training activations.

Arrays (L layers, B rows, S slots, K kv heads, H head dim):
  ks, vs: L separate head-major `[B, K, S, H]` arrays, logical axes (batch, act_kv_heads, length,
          head_dim), so the slot axis is sharded over `sp`, kv heads over `tp` and rows over
          dp x fsdp: a cache of millions of tokens spans the mesh exactly like the activations of
          a training step.
  valid:  [B, S] int32     1 where the slot holds a real token, 0 for padding or not yet written.
  next_pos: [B] int32      RoPE position of each row's next token (real tokens only, so left
                           padding and padding between a shared prefix and a suffix shift nothing).

One buffer per layer, not one stacked `[L, ...]` array: a decode step donates the cache, writes
one slot per layer in place and hands each layer's buffer straight to the attention. Reading a
layer out of a stacked buffer is a slice, which XLA materialises as a copy of the whole layer
cache whenever its consumer is a library matmul (XLA:CPU) — every token then moved the whole
cache twice more than needed. Head-major so that decode attention is a matrix-vector product per
(row, kv head) over contiguous `[S, H]` blocks (see `lwm.attention.cached`).

Slots are shared by all rows: every row writes its token t at the same slot, and rows of
different lengths are aligned by left padding (pad slots stay invalid and are never attended).
A query at slot i sees slot j iff j <= i and valid[b, j]. The number of slots written is kept on
the host by the sampler (never a static jit argument); the cache has a fixed `capacity` so the
decode step compiles once per capacity bucket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from lwm.attention.cached import CacheSlots, LayerCache
from lwm.dtypes import to_dtype
from lwm.models.config import ModelConfig
from lwm.sharding import logical_to_sharding

LAYER_KV_NAMES = ("batch", "act_kv_heads", "length", "head_dim")
"""Logical axes of one layer's keys or values `[B, K, S, H]`."""
KV_NAMES = ("layers", "batch", "length", "act_kv_heads", "head_dim")
"""Logical axes of the stacked slot-major view `KVCache.k` / `KVCache.v` `[L, B, S, K, H]`."""
VALID_NAMES = ("batch", "length")
POS_NAMES = ("batch",)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    ks: tuple[jax.Array, ...]
    """Keys, one `[B, K, S, H]` array per layer (RoPE applied)."""
    vs: tuple[jax.Array, ...]
    """Values, one `[B, K, S, H]` array per layer."""
    valid: jax.Array
    """`[B, S]` int32: 1 = real token in the slot."""
    next_pos: jax.Array
    """`[B]` int32: position of the next token of each row."""

    @property
    def num_layers(self) -> int:
        return len(self.ks)

    @property
    def batch(self) -> int:
        return self.ks[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.ks[0].shape[2]

    def layers(self, slots: CacheSlots) -> tuple[LayerCache, ...]:
        """The per-layer caches the model takes, for a chunk written at `slots`."""
        return tuple(LayerCache(k, v, slots) for k, v in zip(self.ks, self.vs, strict=True))

    def advance(
        self, layers: Sequence[LayerCache], slots: CacheSlots, positions_bt: jax.Array
    ) -> KVCache:
        """The cache after the model wrote a chunk: its layers, valid slots and each row's next
        RoPE position (unchanged for a row whose chunk was all padding)."""
        last_real = slots.valid_bt[:, -1] > 0
        next_pos = jnp.where(last_real, positions_bt[:, -1] + 1, self.next_pos)
        return KVCache(
            tuple(c.k_bksh for c in layers),
            tuple(c.v_bksh for c in layers),
            slots.valid_bs,
            next_pos.astype(jnp.int32),
        )

    @property
    def k(self) -> jax.Array:
        """All keys as one slot-major `[L, B, S, K, H]` array (a copy: for inspection and tests,
        not hot paths)."""
        return jnp.stack(self.ks).transpose(0, 1, 3, 2, 4)

    @property
    def v(self) -> jax.Array:
        """All values as one slot-major `[L, B, S, K, H]` array (a copy, like `k`)."""
        return jnp.stack(self.vs).transpose(0, 1, 3, 2, 4)


def cache_shardings(
    shape_bksh: tuple[int, ...], mesh: Mesh | None
) -> tuple[NamedSharding, NamedSharding, NamedSharding] | None:
    """Shardings of (each layer's k/v, valid, next_pos) for layer caches of shape `[B, K, S, H]`;
    None without a mesh."""
    if mesh is None:
        return None
    b, _, s, _ = shape_bksh
    return (
        logical_to_sharding(LAYER_KV_NAMES, shape_bksh, mesh),
        logical_to_sharding(VALID_NAMES, (b, s), mesh),
        logical_to_sharding(POS_NAMES, (b,), mesh),
    )


def place(cache: KVCache, mesh: Mesh | None) -> KVCache:
    """Moves (or reshards) a cache onto its logical-axis shardings."""
    shardings = cache_shardings(cache.ks[0].shape, mesh)
    if shardings is None:
        return cache
    kv, valid, pos = shardings
    return KVCache(
        tuple(jax.device_put(x, kv) for x in cache.ks),
        tuple(jax.device_put(x, kv) for x in cache.vs),
        jax.device_put(cache.valid, valid),
        jax.device_put(cache.next_pos, pos),
    )


def init_cache(cfg: ModelConfig, batch: int, capacity: int, mesh: Mesh | None = None) -> KVCache:
    """An empty cache, each array created directly in its sharding (never whole on one device)."""
    shape = (batch, cfg.num_kv_heads, capacity, cfg.head_dim)
    dt = to_dtype(cfg.dtype)
    layers = cfg.num_layers

    def make():
        return KVCache(
            tuple(jnp.zeros(shape, dt) for _ in range(layers)),
            tuple(jnp.zeros(shape, dt) for _ in range(layers)),
            jnp.zeros((batch, capacity), jnp.int32),
            jnp.zeros((batch,), jnp.int32),
        )

    shardings = cache_shardings(shape, mesh)
    if shardings is None:
        return jax.jit(make)()
    kv, valid, pos = shardings
    out = KVCache((kv,) * layers, (kv,) * layers, valid, pos)
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

    out = KVCache(
        tuple(pad(x, 2) for x in cache.ks),
        tuple(pad(x, 2) for x in cache.vs),
        pad(cache.valid, 1),
        cache.next_pos,
    )
    return place(out, mesh)


def repeat_rows(cache: KVCache, batch: int, mesh: Mesh | None = None) -> KVCache:
    """A one-row cache (a shared prefix) copied to `batch` rows; the source is left untouched."""
    if cache.batch != 1:
        raise ValueError(f"repeat_rows expects a one-row cache, got {cache.batch} rows")

    def rep(x):
        return jnp.repeat(x, batch, axis=0)

    out = KVCache(
        tuple(rep(x) for x in cache.ks),
        tuple(rep(x) for x in cache.vs),
        rep(cache.valid),
        rep(cache.next_pos),
    )
    return place(out, mesh)


def bucket(n: int, multiple: int = 256) -> int:
    """`n` rounded up to a multiple of `multiple` (capacity buckets: few decode compiles)."""
    return -(-max(n, 1) // multiple) * multiple
