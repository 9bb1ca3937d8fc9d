"""Attention of a chunk of new queries against the KV cache, sharded over the mesh.

Every device holds `S / sp` cache slots (the cache is sharded on `sp` like training activations)
and the queries of the chunk (small: `prefill_chunk` tokens, or one token in decode). For a
prefill chunk each device runs a blockwise online-softmax loop over its own slots, slicing key
blocks out of its cache shard in place — key blocks that are empty, padding-only or in the causal
future are skipped, so work follows the filled part of the cache, and scores never exceed
`[chunk, key_block]`; a
decode step (one query) takes a single masked dense pass over the local slots of the cache as it
was before the step, and adds its own new key afterwards (`decode_attention`). Then the per-device
partial results are merged with a log-sum-exp weighted sum over `sp` (two small collectives of
the chunk's size; the cache itself never moves). This is ring attention's math with the roles
reversed: the queries are tiny, so they are replicated instead of the keys being rotated.

Writes go through `lwm.cache.write.write_slots` (each device writes its own shard); the cache
types (`LayerCache`, `CacheSlots`, `KVCache`) live in `lwm.cache`; this module holds the kernels.

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
from lwm.attention.blockwise import (
    check_heads,
    chunk_q,
    chunk_rows,
    finalize,
    init_state,
    unchunk_q,
)
from lwm.attention.config import AttentionConfig
from lwm.cache.slots import LAYER_KV_NAMES, LayerCache
from lwm.cache.write import write_slots
from lwm.errors import ConfigError
from lwm.sharding import logical_to_spec

SP = "sp"
DENSE_MAX_QUERIES = 8
"""Up to this many queries (decode steps) use one dense masked pass over the local slots: its
scores are only `[queries, S / sp]`, and it reads the cache in place. Longer chunks (prefill) use
the blockwise kernel, whose memory is bounded by `chunk x key_block` whatever the cache length."""


def _largest_divisor(n: int, at_most: int) -> int:
    c = max(1, min(n, at_most))
    while n % c:
        c -= 1
    return c


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


def _dense_partial(q_btkgh, k_bksh, v_bksh, mask_bts):
    """Few queries (decode) against `S` keys in one masked pass; `q` is pre-scaled.

    Returns fp32 (o `[B, T, K, G, H]` normalised, lse `[B, T, K, G]`; -inf where a query sees
    no key). Both products are batched over (row, kv head), the major axes of the head-major
    cache, so they read keys and values in place: no transpose of the cache, and no FLOPs spent
    on other heads' keys.
    """
    b, t, kv_heads, g, h = q_btkgh.shape
    s = k_bksh.shape[2]
    q = q_btkgh.transpose(0, 2, 1, 3, 4).reshape(b, kv_heads, t * g, h)
    scores = jnp.einsum("bksh,bkqh->bkqs", k_bksh, q, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kv_heads, t, g, s)
    scores = jnp.where(mask_bts[:, None, :, None, :], scores, -jnp.inf)
    m = scores.max(-1)  # [b, k, t, g]
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(scores - m_safe[..., None])
    l = p.sum(-1)
    p = p.reshape(b, kv_heads, t * g, s).astype(v_bksh.dtype)
    o = jnp.einsum("bkqs,bksh->bkqh", p, v_bksh, preferred_element_type=jnp.float32)
    o = o.reshape(b, kv_heads, t, g, h).transpose(0, 2, 1, 3, 4)
    seen = l > 0.0
    l_safe = jnp.where(seen, l, 1.0)
    lse = jnp.where(seen, m_safe + jnp.log(l_safe), -jnp.inf).transpose(0, 2, 1, 3)
    return o / l_safe.transpose(0, 2, 1, 3)[..., None], lse


def _scaled_q(q_btnh, kv_heads):
    b, t, n, h = q_btnh.shape
    q = q_btnh * jnp.asarray(h**-0.5, q_btnh.dtype)
    return q.reshape(b, t, kv_heads, n // kv_heads, h)


def _local_dense(q_btnh, k_bksh, v_bksh, valid_bs, q_slots_t, *, merge):
    """Few queries against the local cache slots (slot j visible from slot i iff j <= i and
    valid); merged over `sp` when sharded. Returns fp32 (o `[B, T, K, G, H]`, lse)."""
    kv_heads, s_local = k_bksh.shape[1], k_bksh.shape[2]
    shard = lax.axis_index(SP) if merge else 0
    kv_slots = shard * s_local + jnp.arange(s_local, dtype=jnp.int32)
    mask = (kv_slots[None, :] <= q_slots_t[:, None])[None] & (valid_bs > 0)[:, None, :]
    o, lse = _dense_partial(_scaled_q(q_btnh, kv_heads), k_bksh, v_bksh, mask)
    if merge:
        o, lse = _merge(o, lse, SP)
    return o, lse


def _prefill_partial(q_btnh, k_bksh, v_bksh, valid_bs, q_slots_t, kv_lo, *, key_block):
    """A prefill chunk against the local slots `[kv_lo, kv_lo + S_local)`: online softmax over
    key blocks sliced from the head-major cache in place (no transposed copy of the cache), and
    only over the blocks up to the chunk's last slot (the causal future is never visited).
    Scores never exceed `[B, K, G, q_chunk, key_block]`. Returns fp32 (o `[nq, B, K, G, cq, H]`
    normalised, lse `[nq, B, K, G, cq]`; -inf where a query saw no slot here)."""
    b, t, n, h = q_btnh.shape
    kv_heads, s_local = k_bksh.shape[1], k_bksh.shape[2]
    cq, ck = _largest_divisor(t, 512), _largest_divisor(s_local, key_block)
    q = chunk_q(q_btnh * jnp.asarray(h**-0.5, q_btnh.dtype), kv_heads, cq)
    qi = chunk_rows(q_slots_t, cq)  # [nq, cq]
    visible = valid_bs > 0

    def q_body(_, xs):
        q_c, qi_c = xs  # [B, K, G, cq, H], [cq]

        def visit(j, mask, carry):
            o, m, l = carry
            k_c = lax.dynamic_slice_in_dim(k_bksh, j * ck, ck, 2)  # [B, K, ck, H]
            v_c = lax.dynamic_slice_in_dim(v_bksh, j * ck, ck, 2)
            s = jnp.einsum("bkgqh,bksh->bkgqs", q_c, k_c, preferred_element_type=jnp.float32)
            s = jnp.where(mask[:, None, None], s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(s - m_safe[..., None])
            corr = jnp.exp(m - m_safe)
            pv = jnp.einsum(
                "bkgqs,bksh->bkgqh", p.astype(v_c.dtype), v_c, preferred_element_type=jnp.float32
            )
            return o * corr[..., None] + pv, m_new, l * corr + p.sum(-1)

        def kv_body(j, carry):
            ki = kv_lo + j * ck + jnp.arange(ck, dtype=jnp.int32)
            mask = (ki[None, :] <= qi_c[:, None])[None] & lax.dynamic_slice_in_dim(
                visible, j * ck, ck, 1
            )[:, None, :]  # [B, cq, ck]
            # Empty or padding-only blocks cost nothing.
            return lax.cond(jnp.any(mask), lambda c: visit(j, mask, c), lambda c: c, carry)

        # Blocks holding a slot <= the chunk's last query slot; the rest is causal future.
        n_blocks = jnp.clip((qi_c.max() - kv_lo) // ck + 1, 0, s_local // ck)
        state = lax.fori_loop(0, n_blocks, kv_body, init_state(q_c))
        return None, finalize(state)

    _, (o, lse) = lax.scan(q_body, None, (q, qi))
    return o, lse


def _local_attention(q_btnh, k_bksh, v_bksh, valid_bs, q_slots_t, *, key_block, merge):
    b, t, n, h = q_btnh.shape
    if t <= DENSE_MAX_QUERIES:
        o, _ = _local_dense(q_btnh, k_bksh, v_bksh, valid_bs, q_slots_t, merge=merge)
        return o.reshape(b, t, n, h).astype(q_btnh.dtype)
    kv_lo = lax.axis_index(SP) * k_bksh.shape[2] if merge else 0
    o, lse = _prefill_partial(
        q_btnh, k_bksh, v_bksh, valid_bs, q_slots_t, kv_lo, key_block=key_block
    )
    if merge:
        o, _ = _merge(o, lse, SP)
    return unchunk_q(o).astype(q_btnh.dtype)


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


def _cache_in_specs(batch, heads, kv, seq):
    """shard_map in_specs of (q, cache k, cache v, cache valid, query slots)."""
    return (
        P(batch, None, heads, None),
        P(batch, kv, seq, None),
        P(batch, kv, seq, None),
        P(batch, seq),
        P(None),
    )


def cached_attention(
    q_btnh: jax.Array,
    k_bksh: jax.Array,
    v_bksh: jax.Array,
    valid_bs: jax.Array,
    q_slots_t: jax.Array,
    *,
    mesh: Mesh | None = None,
    key_block: int = 512,
) -> jax.Array:
    """Queries `[B, T, N, H]` at cache slots `q_slots_t` `[T]` against the whole layer cache
    `[B, K, S, H]` (which already holds the queries' own keys). Returns `[B, T, N, H]`."""
    sp = _check(q_btnh, k_bksh, mesh)

    def local(q, k, v, valid, slots):
        return _local_attention(q, k, v, valid, slots, key_block=key_block, merge=sp > 1)

    if mesh is None or mesh.size == 1:
        return local(q_btnh, k_bksh, v_bksh, valid_bs, q_slots_t)
    batch, heads, kv, seq = _specs(q_btnh, k_bksh, mesh, sp)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=_cache_in_specs(batch, heads, kv, seq),
        out_specs=P(batch, None, heads, None),
        check_vma=False,
    )(q_btnh, k_bksh, v_bksh, valid_bs, q_slots_t)


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
) -> jax.Array:
    """A few queries (decode, `T <= DENSE_MAX_QUERIES`) at slots `q_slots_t` against the layer
    cache `[B, K, S, H]` as it was *before* this chunk (`k/v_bksh`, `valid_bs`) plus the chunk's
    own new keys `k/v_bkth` (causal among themselves, `valid_bt` masks padding). Returns
    `[B, T, N, H]`.

    The cache is only read here, so the caller writes the new keys into it afterwards, in place:
    were the attention to read the updated cache, XLA would have to keep both the old and the
    new buffer alive (or duplicate the update into the reader), copying the whole layer cache
    on every step.
    """
    b, t, n, h = q_btnh.shape
    kv_heads = k_bksh.shape[1]
    sp = _check(q_btnh, k_bksh, mesh)

    def local(q, k, v, valid, slots):
        return _local_dense(q, k, v, valid, slots, merge=sp > 1)

    if mesh is None or mesh.size == 1:
        o_c, lse_c = local(q_btnh, k_bksh, v_bksh, valid_bs, q_slots_t)
    else:
        batch, heads, kv, seq = _specs(q_btnh, k_bksh, mesh, sp)
        o_c, lse_c = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=_cache_in_specs(batch, heads, kv, seq),
            out_specs=(P(batch, None, kv, None, None), P(batch, None, kv, None)),
            check_vma=False,
        )(q_btnh, k_bksh, v_bksh, valid_bs, q_slots_t)
    causal_tt = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]
    mask_btt = causal_tt[None] & (valid_bt > 0)[:, None, :]
    o_n, lse_n = _dense_partial(_scaled_q(q_btnh, kv_heads), k_bkth, v_bkth, mask_btt)
    o = _combine(o_c, lse_c, o_n, lse_n)
    return o.reshape(b, t, n, h).astype(q_btnh.dtype)


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


def _after(x_bkth: jax.Array, dep_btnh: jax.Array) -> jax.Array:
    """`x` unchanged, but data-dependent on `dep` (`dep > inf` is false, NaN included, and XLA
    does not fold it). Writing the new keys only after the attention output exists orders the
    in-place cache update after every read of the old cache; without a data dependency XLA
    cannot prove that order and copies each layer's cache instead."""
    b, k, t, h = x_bkth.shape
    dep = dep_btnh.reshape(b, t, k, -1, h)[:, :, :, 0].transpose(0, 2, 1, 3).astype(x_bkth.dtype)
    return jnp.where(dep > jnp.inf, dep, x_bkth)


def attend_cached(
    q_btnh: jax.Array, k_btkh: jax.Array, v_btkh: jax.Array, cache: LayerCache
) -> tuple[jax.Array, LayerCache]:
    """The chunk's queries against the layer cache plus the chunk's own keys; writes the chunk's
    keys/values at slots `[start, start + T)` (in place when the caller donates the cache).

    Decode-sized chunks attend to the cache as it was plus their own keys, and write afterwards,
    so the update never forces a copy of the layer cache (see `decode_attention`). Prefill
    chunks write first and run the blockwise kernel over the updated cache.
    """
    slots, k_bksh, v_bksh = cache.slots, cache.k_bksh, cache.v_bksh
    k_new = k_btkh.transpose(0, 2, 1, 3).astype(k_bksh.dtype)  # head-major [B, K, T, H]
    v_new = v_btkh.transpose(0, 2, 1, 3).astype(v_bksh.dtype)
    start, mesh = slots.start, slots.mesh
    if q_btnh.shape[1] <= DENSE_MAX_QUERIES:
        out_btnh = decode_attention(
            q_btnh,
            k_bksh,
            v_bksh,
            slots.old_valid_bs,
            k_new,
            v_new,
            slots.valid_bt,
            slots.q_slots_t,
            mesh=slots.mesh,
        )
        k_bksh = write_slots(k_bksh, _after(k_new, out_btnh), start, mesh, names=LAYER_KV_NAMES)
        v_bksh = write_slots(v_bksh, _after(v_new, out_btnh), start, mesh, names=LAYER_KV_NAMES)
    else:
        k_bksh = write_slots(k_bksh, k_new, start, mesh, names=LAYER_KV_NAMES)
        v_bksh = write_slots(v_bksh, v_new, start, mesh, names=LAYER_KV_NAMES)
        out_btnh = cached_attention(
            q_btnh,
            k_bksh,
            v_bksh,
            slots.valid_bs,
            slots.q_slots_t,
            mesh=slots.mesh,
            key_block=slots.key_block,
        )
    return out_btnh, LayerCache(k_bksh=k_bksh, v_bksh=v_bksh, slots=slots)
