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

Every field is declared once, with its logical axes (`cache_field`): creation, shardings, growth
(`length` is padded), row copies (`batch` is repeated) and placement map over the fields with
`map_fields`, so a new field needs no edit to any of them. An 8-bit cache (`kv_dtype` int8 or
float8_e4m3fn, `lwm.cache.quant`) is a `QuantKVCache`: the same fields in 8 bits plus one scale
per (row, kv head, slot) and layer, `[B, K, S]` sharded like the slots; other caches carry no
scale arrays at all (`cache_class` picks the class from the config).

The number of slots written is kept on the host by the sampler (never a static jit argument);
the cache has a fixed `capacity` so the decode step compiles once per capacity bucket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lwm.cache.quant import codes_to, dequantize, is_quantized, kv_storage_dtype, stored_dtype
from lwm.cache.slots import (
    LAYER_KV_NAMES,
    LAYER_SCALE_NAMES,
    POS_NAMES,
    VALID_NAMES,
    CacheSlots,
    LayerCache,
)
from lwm.cache.write import SLOT_AXIS
from lwm.dtypes import to_dtype
from lwm.sharding import logical_to_sharding

C = TypeVar("C", bound="KVCache")
ROW_AXIS = "batch"
KV_STORAGE = "kv"
"""A field's `dtype` meaning the cache's storage dtype (`lwm.cache.quant.kv_storage_dtype`)."""
SCALE_STORAGE = "scale"
"""A field's `dtype` meaning the compute dtype as the cache stores it (bf16 as its bits)."""


def cache_field(
    axes: tuple[str, ...], *, dtype: str | None = None, layer: str | None = None
) -> Any:
    """A cache dataclass field: its logical `axes` (sizes from `cache_specs`), its `dtype` (None
    = the model's compute dtype, `KV_STORAGE` / `SCALE_STORAGE` see above) and, for a field
    holding one array per layer, the `LayerCache` field it feeds (`layer`)."""
    return dataclasses.field(metadata={"axes": axes, "dtype": dtype, "layer": layer})


def map_fields(fn: Callable[[Any, tuple[str, ...]], Any], cache: C) -> C:
    """`cache` with `fn(array, logical axes)` applied to every array of every field."""
    return dataclasses.replace(
        cache,
        **{
            f.name: jax.tree.map(lambda x, a=f.metadata["axes"]: fn(x, a), getattr(cache, f.name))
            for f in dataclasses.fields(cache)
        },
    )


def layer_fields(cls: Any) -> list[dataclasses.Field]:
    """The fields holding one array per layer (those that feed a `LayerCache` field)."""
    return [f for f in dataclasses.fields(cls) if f.metadata["layer"] is not None]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    ks: tuple[jax.Array, ...] = cache_field(LAYER_KV_NAMES, dtype=KV_STORAGE, layer="k_bksh")
    """Keys, one `[B, K, S, H]` array per layer (RoPE applied)."""
    vs: tuple[jax.Array, ...] = cache_field(LAYER_KV_NAMES, dtype=KV_STORAGE, layer="v_bksh")
    """Values, one `[B, K, S, H]` array per layer."""
    valid: jax.Array = cache_field(VALID_NAMES, dtype="int32")
    """`[B, S]` int32: 1 = real token in the slot."""
    next_pos: jax.Array = cache_field(POS_NAMES, dtype="int32")
    """`[B]` int32: position of the next token of each row."""

    @property
    def num_layers(self) -> int:
        return len(self.ks)

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    def layers(self, slots: CacheSlots) -> tuple[LayerCache, ...]:
        """The per-layer caches the model takes, for a chunk written at `slots`."""
        fields = layer_fields(self)
        return tuple(
            LayerCache(
                **{f.metadata["layer"]: getattr(self, f.name)[i] for f in fields}, slots=slots
            )
            for i in range(self.num_layers)
        )

    def advance(
        self: C, layers: Sequence[LayerCache], slots: CacheSlots, positions_bt: jax.Array
    ) -> C:
        """The cache after the model wrote a chunk: its layers, valid slots and each row's next
        RoPE position (unchanged for a row whose chunk was all padding)."""
        last_real = slots.valid_bt[:, -1] > 0
        next_pos = jnp.where(last_real, positions_bt[:, -1] + 1, self.next_pos)
        per_layer = {
            f.name: tuple(getattr(c, f.metadata["layer"]) for c in layers)
            for f in layer_fields(self)
        }
        return dataclasses.replace(
            self, **per_layer, valid=slots.valid_bs, next_pos=next_pos.astype(jnp.int32)
        )

    def layer_arrays(self) -> list[jax.Array]:
        """Every per-layer array (keys, values, ...), e.g. to count the cache's bytes."""
        return [x for f in layer_fields(self) for x in getattr(self, f.name)]

    def row_arrays(self) -> list[jax.Array]:
        """The arrays shared by all layers (valid mask, positions, ...)."""
        return [getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata["layer"]]

    @property
    def k(self) -> jax.Array:
        """All keys as one slot-major `[L, B, S, K, H]` array in their float format (a copy: for
        inspection and tests, not hot paths)."""
        return codes_to(jnp.stack(self.ks)).transpose(0, 1, 3, 2, 4)

    @property
    def v(self) -> jax.Array:
        """All values as one slot-major `[L, B, S, K, H]` array (a copy, like `k`)."""
        return codes_to(jnp.stack(self.vs)).transpose(0, 1, 3, 2, 4)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class QuantKVCache(KVCache):
    """An 8-bit cache: `ks`/`vs` hold int8 or float8_e4m3fn codes, and each layer has the scales
    that turn them back into keys/values (`code * scale`, `lwm.cache.quant`)."""

    k_scales: tuple[jax.Array, ...] = cache_field(
        LAYER_SCALE_NAMES, dtype=SCALE_STORAGE, layer="k_scale_bks"
    )
    """Key scales, one `[B, K, S]` array per layer, in the compute dtype (bf16 as its bits)."""
    v_scales: tuple[jax.Array, ...] = cache_field(
        LAYER_SCALE_NAMES, dtype=SCALE_STORAGE, layer="v_scale_bks"
    )
    """Value scales, one `[B, K, S]` array per layer, like `k_scales`."""

    @property
    def k(self) -> jax.Array:
        """All keys dequantized to fp32, slot-major `[L, B, S, K, H]` (a copy, like `KVCache.k`)."""
        k = [dequantize(c, s) for c, s in zip(self.ks, self.k_scales, strict=True)]
        return jnp.stack(k).transpose(0, 1, 3, 2, 4)

    @property
    def v(self) -> jax.Array:
        """All values dequantized to fp32, slot-major `[L, B, S, K, H]`."""
        v = [dequantize(c, s) for c, s in zip(self.vs, self.v_scales, strict=True)]
        return jnp.stack(v).transpose(0, 1, 3, 2, 4)


def cache_class(cfg: Any) -> type[KVCache]:
    """The cache type of model config `cfg`: `QuantKVCache` for an 8-bit `kv_dtype`."""
    return QuantKVCache if is_quantized(getattr(cfg, "kv_dtype", "auto")) else KVCache


def kv_cache_bytes(cfg: Any, batch: int, capacity: int) -> int:
    """Total (all devices) bytes of every per-layer cache array of `cfg` at `capacity` slots:
    keys and values in their storage dtype, plus the scales of an 8-bit cache."""
    specs = cache_specs(cfg, batch, capacity)
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in specs.layer_arrays())


def cache_specs(
    cfg: Any, batch: int, capacity: int, mesh: Mesh | None = None, *, cls: type[C] | None = None
) -> C:
    """The cache of model config `cfg` as `ShapeDtypeStruct`s, with their shardings on `mesh`
    (from each field's logical axes): the abstract cache for ahead-of-time compiles. `cls`
    defaults to `cache_class(cfg)`."""
    cls = cls or cache_class(cfg)
    sizes = {
        ROW_AXIS: batch,
        "act_kv_heads": cfg.num_kv_heads,
        SLOT_AXIS: capacity,
        "head_dim": cfg.head_dim,
    }

    def spec(f: dataclasses.Field):
        axes = f.metadata["axes"]
        shape = tuple(sizes[a] for a in axes)
        name = f.metadata["dtype"]
        if name == KV_STORAGE:
            dtype = kv_storage_dtype(cfg) if hasattr(cfg, "kv_dtype") else to_dtype(cfg.dtype)
        elif name == SCALE_STORAGE:
            dtype = stored_dtype(to_dtype(cfg.dtype))
        else:
            dtype = jnp.dtype(name) if name else to_dtype(cfg.dtype)
        sharding = None if mesh is None else logical_to_sharding(axes, shape, mesh)
        leaf = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        return tuple(leaf for _ in range(cfg.num_layers)) if f.metadata["layer"] else leaf

    return cls(**{f.name: spec(f) for f in dataclasses.fields(cls)})


def init_cache(
    cfg: Any, batch: int, capacity: int, mesh: Mesh | None = None, *, cls: type[C] | None = None
) -> C:
    """An empty cache, each array created directly in its sharding (never whole on one device);
    `cls` defaults to `cache_class(cfg)`."""
    specs = cache_specs(cfg, batch, capacity, mesh, cls=cls)

    def make():
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), specs)

    if mesh is None:
        return jax.jit(make)()
    return jax.jit(make, out_shardings=jax.tree.map(lambda s: s.sharding, specs))()


def place(cache: C, mesh: Mesh | None) -> C:
    """Moves (or reshards) a cache onto its logical-axis shardings."""
    if mesh is None:
        return cache
    return map_fields(
        lambda x, axes: jax.device_put(x, logical_to_sharding(axes, x.shape, mesh)), cache
    )


def grow(cache: C, capacity: int, mesh: Mesh | None = None) -> C:
    """The same cache with `capacity` slots (new slots empty); a no-op when already that big."""
    if capacity <= cache.capacity:
        return cache
    extra = capacity - cache.capacity

    def pad(x, axes):
        if SLOT_AXIS not in axes:
            return x
        widths = [(0, 0)] * x.ndim
        widths[axes.index(SLOT_AXIS)] = (0, extra)
        return jnp.pad(x, widths)

    return place(map_fields(pad, cache), mesh)


def repeat_rows(cache: C, batch: int, mesh: Mesh | None = None) -> C:
    """A one-row cache (a shared prefix) copied to `batch` rows; the source is left untouched."""
    if cache.batch != 1:
        raise ValueError(f"repeat_rows expects a one-row cache, got {cache.batch} rows")
    out = map_fields(lambda x, axes: jnp.repeat(x, batch, axis=axes.index(ROW_AXIS)), cache)
    return place(out, mesh)


def bucket(n: int, multiple: int = 256) -> int:
    """`n` rounded up to a multiple of `multiple` (capacity buckets: few decode compiles)."""
    return -(-max(n, 1) // multiple) * multiple
