"""Attention of a chunk of new queries against the KV cache, sharded over the mesh.

Every device holds `S / sp` cache slots (the cache is sharded on `sp` like training activations)
and the queries of the chunk (small: `prefill_chunk` tokens, or one token in decode). Each device
runs a blockwise online-softmax loop over its own slots (`lwm.attention.cached_blocks`), slicing
key blocks out of its cache shard in place and converting (or dequantizing, for an 8-bit cache)
one block at a time. Every chunk reads the cache as it was before the chunk (`decode_attention`):
a decode step up to the last filled slot, a prefill chunk per query chunk up to its last slot,
skipping empty blocks; the chunk's own new keys are attended separately and written afterwards,
in place. Work and temporaries follow the filled slots, not the capacity. Then the per-device
partial results are merged with a log-sum-exp weighted sum over `sp` (two small collectives of
the chunk's size; the cache itself never moves). This is ring attention's math with the roles
reversed: the queries are tiny, so they are replicated instead of the keys being rotated.

Writes go through `lwm.cache.write.write_slots` (each device writes its own shard; an 8-bit
cache writes codes and scales, `lwm.cache.quant`); the cache types (`LayerCache`, `CacheSlots`,
`KVCache`) live in `lwm.cache`; this module holds the sharding and the cache update.

The cache is head-major, `[B, K, S, H]` per layer: both decode products are then matrix-vector
products batched over (row, kv head) that stream the cache once, in place.

Mask: query at slot i sees slot j iff j <= i and valid[b, j] (see `lwm.cache.slots`).

The model's own attention layer calls `attend_cached` when it is given a `LayerCache` (one layer's
keys/values plus the `CacheSlots` of the chunk, shared by all layers), so training and cached
decoding run the same blocks: only this kernel differs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lwm.attention import mesh_sp
from lwm.attention.blockwise import check_heads
from lwm.attention.cached_blocks import (
    CacheArrays,
    decode_partial,
    dense_partial,
    prefill_partial,
)
from lwm.attention.config import AttentionConfig
from lwm.cache.quant import codes_to, dequantize, quantize, to_storage
from lwm.cache.slots import LAYER_KV_NAMES, LAYER_SCALE_NAMES, LayerCache
from lwm.cache.write import write_slots
from lwm.errors import ConfigError
from lwm.sharding import logical_to_spec

SP = "sp"
DENSE_MAX_QUERIES = 8
"""Up to this many queries (decode steps) take the decode path: the cache as it was before the
chunk, read block by block up to its last filled slot, plus the chunk's own keys in one small
dense pass. Longer chunks (prefill) write first and run the blockwise kernel per query chunk."""


def _merge(o, lse, axis_names):
    """Combines per-device softmax partials: o `[..., H]` normalised, lse `[...]` (-inf = saw
    nothing) -> (o, lse) of the attention over the union of the devices' keys."""
    top = lax.pmax(lse, axis_names)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    w = jnp.exp(lse - top)
    num = lax.psum(o * w[..., None], axis_names)
    den = lax.psum(w, axis_names)
    lse = jnp.where(den == 0.0, -jnp.inf, top + jnp.log(jnp.where(den == 0.0, 1.0, den)))
    return num / jnp.where(den == 0.0, 1.0, den)[..., None], lse


def _combine(o1, lse1, o2, lse2):
    """Attention over the union of two disjoint key sets from each set's (o, lse)."""
    top = jnp.maximum(lse1, lse2)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    w1, w2 = jnp.exp(lse1 - top), jnp.exp(lse2 - top)
    den = w1 + w2
    return (o1 * w1[..., None] + o2 * w2[..., None]) / jnp.where(den == 0.0, 1.0, den)[..., None]


def _kv_lo(cache: CacheArrays, merge: bool):
    """The first global slot of this device's shard."""
    return lax.axis_index(SP) * cache[0].shape[2] if merge else 0


def _local_partial(q_btnh, cache, valid_bs, q_slots_t, end, *, key_block, decode_block, merge):
    """This device's (o `[B, T, N, H]`, lse `[B, T, N]`) over its shard's slots before `end`,
    merged over `sp` when sharded: the decode kernel for a few queries, else the prefill one."""
    kv_lo = _kv_lo(cache, merge)
    if q_btnh.shape[1] <= DENSE_MAX_QUERIES:
        o, lse = decode_partial(q_btnh, cache, valid_bs, q_slots_t, kv_lo, end, block=decode_block)
    else:
        o, lse = prefill_partial(
            q_btnh, cache, valid_bs, q_slots_t, kv_lo, end, key_block=key_block
        )
    return _merge(o, lse, SP) if merge else (o, lse)


def check_capacity(capacity: int, mesh: Any) -> int:
    """`sp` of `mesh`; a one-line ConfigError when it does not divide the cache capacity (each
    device holds `capacity / sp` slots)."""
    sp = mesh_sp(mesh)
    if capacity % sp:
        raise ConfigError(f"cache capacity {capacity} is not divisible by sp {sp}")
    return sp


def _check(q_btnh, k_bksh, mesh) -> int:
    check_heads(q_btnh.shape[2], k_bksh.shape[1])
    return check_capacity(k_bksh.shape[2], mesh)


def _specs(q_btnh, k_bksh, mesh, sp):
    """(batch, query heads, kv heads, slots) mesh axes of the sharded cache attention."""
    b, _, n, _ = q_btnh.shape
    batch = logical_to_spec(("batch",), (b,), mesh)[0]
    heads = logical_to_spec(("act_heads",), (n,), mesh)[0]
    kv = logical_to_spec(("act_kv_heads",), (k_bksh.shape[1],), mesh)[0]
    if heads != kv:  # kv heads do not divide tp: keep heads whole on every device
        heads = kv = None
    return batch, heads, kv, (SP if sp > 1 else None)


def _cache_in_specs(batch, heads, kv, seq, quantized: bool):
    """shard_map in_specs of (q, cache arrays, cache valid, query slots)."""
    kv_spec = P(batch, kv, seq, None)
    scale_spec = P(batch, kv, seq)
    arrays = (kv_spec, kv_spec) + ((scale_spec, scale_spec) if quantized else ())
    return (P(batch, None, heads, None), arrays, P(batch, seq), P(None))


def _arrays(k_bksh, v_bksh, k_scale_bks, v_scale_bks) -> CacheArrays:
    if (k_scale_bks is None) != (v_scale_bks is None):
        raise ValueError("an 8-bit cache needs both key and value scales")
    if k_scale_bks is None:
        return (k_bksh, v_bksh)
    return (k_bksh, v_bksh, k_scale_bks, v_scale_bks)


def cached_attention(
    q_btnh: jax.Array,
    k_bksh: jax.Array,
    v_bksh: jax.Array,
    valid_bs: jax.Array,
    q_slots_t: jax.Array,
    *,
    mesh: Mesh | None = None,
    key_block: int = 512,
    k_scale_bks: jax.Array | None = None,
    v_scale_bks: jax.Array | None = None,
    decode_block: int = 2048,
) -> jax.Array:
    """Queries `[B, T, N, H]` at cache slots `q_slots_t` `[T]` against the whole layer cache
    `[B, K, S, H]` (which already holds the queries' own keys; 8-bit codes with their scales
    `[B, K, S]`, or keys/values in any float dtype). Returns `[B, T, N, H]`."""
    sp = _check(q_btnh, k_bksh, mesh)
    cache = _arrays(k_bksh, v_bksh, k_scale_bks, v_scale_bks)

    def local(q, arrays, valid, slots):
        o, _ = _local_partial(
            q,
            arrays,
            valid,
            slots,
            jnp.max(slots) + 1,
            key_block=key_block,
            decode_block=decode_block,
            merge=sp > 1,
        )
        return o.astype(q.dtype)

    if mesh is None or mesh.size == 1:
        return local(q_btnh, cache, valid_bs, q_slots_t)
    batch, heads, kv, seq = _specs(q_btnh, k_bksh, mesh, sp)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=_cache_in_specs(batch, heads, kv, seq, len(cache) == 4),
        out_specs=P(batch, None, heads, None),
        check_vma=False,
    )(q_btnh, cache, valid_bs, q_slots_t)


def decode_attention(
    q_btnh: jax.Array,
    k_bksh: jax.Array,
    v_bksh: jax.Array,
    valid_bs: jax.Array,
    k_bkth: jax.Array,
    v_bkth: jax.Array,
    valid_bt: jax.Array,
    q_slots_t: jax.Array,
    *,
    mesh: Mesh | None = None,
    k_scale_bks: jax.Array | None = None,
    v_scale_bks: jax.Array | None = None,
    block: int = 2048,
    key_block: int = 512,
) -> jax.Array:
    """Queries at slots `q_slots_t` against the layer cache `[B, K, S, H]` as it was *before*
    this chunk (`k/v_bksh`, `valid_bs`; 8-bit codes with their scales or float keys/values)
    plus the chunk's own new keys `k/v_bkth` (causal among themselves, `valid_bt` masks
    padding). Returns `[B, T, N, H]`.

    The cache holds slots before `q_slots_t[0]` only, so each device reads its shard block by
    block up to that slot: `block` slots at a time for a decode step (`T <=
    DENSE_MAX_QUERIES`; a step at 4K filled slots costs the same in a 64K-slot cache as in a 4K
    one, and never converts the whole shard), `key_block` per query chunk for a prefill chunk.

    The cache is only read here, so the caller writes the new keys into it afterwards, in place:
    were the attention to read the updated cache, XLA would have to keep both the old and the
    new buffer alive (or duplicate the update into the reader), copying the whole layer cache
    on every step (and every prefill chunk).
    """
    b, t, n, h = q_btnh.shape
    sp = _check(q_btnh, k_bksh, mesh)
    cache = _arrays(k_bksh, v_bksh, k_scale_bks, v_scale_bks)
    blocks = dict(key_block=key_block, decode_block=block)

    def local(q, arrays, valid, slots):
        return _local_partial(q, arrays, valid, slots, slots[0], merge=sp > 1, **blocks)

    if mesh is None or mesh.size == 1:
        o_c, lse_c = local(q_btnh, cache, valid_bs, q_slots_t)
    else:
        batch, heads, kv, seq = _specs(q_btnh, k_bksh, mesh, sp)
        o_c, lse_c = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=_cache_in_specs(batch, heads, kv, seq, len(cache) == 4),
            out_specs=(P(batch, None, heads, None), P(batch, None, heads)),
            check_vma=False,
        )(q_btnh, cache, valid_bs, q_slots_t)
    if t <= DENSE_MAX_QUERIES:
        causal_tt = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
        mask_btt = causal_tt[None] & (valid_bt > 0)[:, None, :]
        o_n, lse_n = dense_partial(q_btnh, k_bkth, v_bkth, mask_btt)
    else:  # the chunk's own keys as a small cache of T slots starting at the chunk's first
        own = (k_bkth, v_bkth)
        o_n, lse_n = prefill_partial(
            q_btnh, own, valid_bt, q_slots_t, q_slots_t[0], key_block=key_block
        )
    return _combine(o_c, lse_c, o_n, lse_n).astype(q_btnh.dtype)


def check_cache(cfg: AttentionConfig, capacity: int | None, mesh: Any) -> None:
    """The cache attention's rules, before any compute: the model's attention must be
    token-causal (the cached path cannot reproduce block-causal masks), and a fixed capacity
    must split over `sp`."""
    if cfg.causal_block_size:
        raise ConfigError(
            "KV-cache decoding needs token-causal attention; this model uses "
            f"causal_block_size={cfg.causal_block_size}"
        )
    if capacity is not None:
        check_capacity(capacity, mesh)


def _after(x: jax.Array, dep_btnh: jax.Array) -> jax.Array:
    """`x` (new keys `[B, K, T, H]` or their scales `[B, K, T]`) unchanged, but data-dependent
    on `dep` (`dep > inf` is false, NaN included, and XLA does not fold it). Writing the new keys
    only after the attention output exists orders the in-place cache update after every read of
    the old cache; without a data dependency XLA cannot prove that order and copies each layer's
    cache instead."""
    b, k, t = x.shape[:3]
    h = dep_btnh.shape[-1]
    dep = dep_btnh.reshape(b, t, k, -1, h)[:, :, :, 0].transpose(0, 2, 1, 3)  # [B, K, T, H]
    dep = dep if x.ndim == 4 else dep[..., 0]
    return jnp.where(dep > jnp.inf, dep.astype(x.dtype), x)  # compared in dep's float dtype


def _encode(x_bkth: jax.Array, like: jax.Array, scale_like: jax.Array | None):
    """New keys/values as the cache stores them: (what the chunk's own attention sees, the
    stored entries, the scales or None). The chunk sees its stored (rounded, dequantized) keys,
    as later steps will."""
    if scale_like is None:
        stored = to_storage(x_bkth, like.dtype)
        return codes_to(stored, x_bkth.dtype), stored, None
    codes, scale = quantize(x_bkth, like.dtype, scale_like.dtype)
    return dequantize(codes, scale, x_bkth.dtype), codes, scale


def attend_cached(
    q_btnh: jax.Array, k_btkh: jax.Array, v_btkh: jax.Array, cache: LayerCache
) -> tuple[jax.Array, LayerCache]:
    """The chunk's queries against the layer cache plus the chunk's own keys; writes the chunk's
    keys/values at slots `[start, start + T)` (in place when the caller donates the cache), as
    8-bit codes and scales when the cache is quantized.

    Every chunk (decode step or prefill chunk) attends to the cache as it was plus its own
    keys, and writes afterwards, ordered after the output (`_after`), so the update never
    forces a copy of the layer cache (see `decode_attention`).
    """
    slots, k_bksh, v_bksh = cache.slots, cache.k_bksh, cache.v_bksh
    ks_bks, vs_bks = cache.k_scale_bks, cache.v_scale_bks
    start, mesh = slots.start, slots.mesh
    k_seen, k_new, k_scale = _encode(k_btkh.transpose(0, 2, 1, 3), k_bksh, ks_bks)  # [B, K, T, H]
    v_seen, v_new, v_scale = _encode(v_btkh.transpose(0, 2, 1, 3), v_bksh, vs_bks)
    out_btnh = decode_attention(
        q_btnh,
        k_bksh,
        v_bksh,
        slots.old_valid_bs,
        k_seen,
        v_seen,
        slots.valid_bt,
        slots.q_slots_t,
        mesh=mesh,
        k_scale_bks=ks_bks,
        v_scale_bks=vs_bks,
        block=slots.decode_block,
        key_block=slots.key_block,
    )

    def write(x, new, names):
        return write_slots(x, _after(new, out_btnh), start, mesh, names=names)

    k_bksh = write(k_bksh, k_new, LAYER_KV_NAMES)
    v_bksh = write(v_bksh, v_new, LAYER_KV_NAMES)
    if ks_bks is not None:
        ks_bks = write(ks_bks, k_scale, LAYER_SCALE_NAMES)
        vs_bks = write(vs_bks, v_scale, LAYER_SCALE_NAMES)
    layer = LayerCache(k_bksh, v_bksh, slots, k_scale_bks=ks_bks, v_scale_bks=vs_bks)
    return out_btnh, layer
