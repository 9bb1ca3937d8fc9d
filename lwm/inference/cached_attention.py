"""Attention of a chunk of new queries against the KV cache, sharded over the mesh.

Every device holds `S / sp` cache slots (the cache is sharded on `sp` like training activations)
and the queries of the chunk (small: `prefill_chunk` tokens, or one token in decode). For a
prefill chunk each device runs the blockwise online-softmax kernel of `lwm.attention.blockwise`
over its own slots — key blocks that are empty, padding-only or in the causal future are skipped,
so work follows the filled part of the cache, and scores never exceed `[chunk, key_block]`; a
decode step (one query) takes a single masked dense pass over the local slots. Then the per-device
partial results are merged with a log-sum-exp weighted sum over `sp` (two small collectives of
the chunk's size; the cache itself never moves). This is ring attention's math with the roles
reversed: the queries are tiny, so they are replicated instead of the keys being rotated.

Mask: query at slot i sees slot j iff j <= i and valid[b, j] (see `lwm.inference.kv_cache`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lwm.attention.blockwise import (
    MaskSpec,
    chunk_kv,
    chunk_q,
    chunk_rows,
    finalize,
    forward_step,
    init_state,
    unchunk_q,
)
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
    nothing) -> the attention over the union of the devices' keys."""
    top = lax.pmax(lse, axis_names)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    w = jnp.exp(lse - top)
    num = lax.psum(o * w[..., None], axis_names)
    den = lax.psum(w, axis_names)
    return num / jnp.where(den == 0.0, 1.0, den)[..., None]


def _local_dense(q_btnh, k_bskh, v_bskh, valid_bs, q_slots_t, *, merge):
    """Few queries (decode): one masked pass over the local slots, no chunk transposes."""
    b, t, n, h = q_btnh.shape
    s_local, kv_heads = k_bskh.shape[1], k_bskh.shape[2]
    g = n // kv_heads
    shard = lax.axis_index(SP) if merge else 0
    kv_slots = shard * s_local + jnp.arange(s_local, dtype=jnp.int32)
    q = (q_btnh * jnp.asarray(h**-0.5, q_btnh.dtype)).reshape(b, t, kv_heads, g, h)
    # Block-diagonal queries: one plain [S, K*H] x [K*H, T*K*G] matmul per row reads the cache
    # in its stored [S, K, H] layout (a head-batched einsum would transpose the whole layer
    # cache first). The zero blocks cost K x the (tiny) decode FLOPs, not memory traffic.
    eye = jnp.eye(kv_heads, dtype=q.dtype)
    q_bd = jnp.einsum("btkgh,kj->bkhtjg", q, eye).reshape(b, kv_heads * h, t * kv_heads * g)
    k_flat = k_bskh.reshape(b, s_local, kv_heads * h)
    scores = jnp.einsum("bsx,bxy->bsy", k_flat, q_bd, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, s_local, t, kv_heads, g)
    mask = (kv_slots[None, :] <= q_slots_t[:, None]).T[None] & (valid_bs > 0)[:, :, None]
    scores = jnp.where(mask[..., None, None], scores, -jnp.inf)  # [b, s, t, k, g]
    m = scores.max(1)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(scores - m_safe[:, None])
    l = p.sum(1)  # [b, t, k, g]
    p_flat = p.reshape(b, s_local, t * kv_heads * g).astype(v_bskh.dtype)
    v_flat = v_bskh.reshape(b, s_local, kv_heads * h)
    full = jnp.einsum("bsy,bsx->byx", p_flat, v_flat, preferred_element_type=jnp.float32)
    full = full.reshape(b, t, kv_heads, g, kv_heads, h)
    o = jnp.einsum("btkgjh,kj->btkgh", full, eye.astype(jnp.float32))
    o = o / jnp.where(l == 0.0, 1.0, l)[..., None]
    if merge:
        lse = jnp.where(l == 0.0, -jnp.inf, m_safe + jnp.log(jnp.where(l == 0.0, 1.0, l)))
        o = _merge(o, lse, SP)
    return o.reshape(b, t, n, h).astype(q_btnh.dtype)


def _local_attention(q_btnh, k_bskh, v_bskh, valid_bs, q_slots_t, *, key_block, sp, merge):
    b, t, n, h = q_btnh.shape
    if t <= DENSE_MAX_QUERIES:
        return _local_dense(q_btnh, k_bskh, v_bskh, valid_bs, q_slots_t, merge=merge)
    s_local, kv_heads = k_bskh.shape[1], k_bskh.shape[2]
    q_chunk = _largest_divisor(t, 512)
    k_chunk = _largest_divisor(s_local, key_block)
    spec = MaskSpec(causal=True, causal_block_size=None, q_chunk=q_chunk, k_chunk=k_chunk)
    shard = lax.axis_index(SP) if merge else 0
    kv_slots = shard * s_local + jnp.arange(s_local, dtype=jnp.int32)
    q = chunk_q(q_btnh * jnp.asarray(h**-0.5, q_btnh.dtype), kv_heads, q_chunk)
    state = forward_step(
        q,
        chunk_kv(k_bskh, k_chunk),
        chunk_kv(v_bskh, k_chunk),
        chunk_rows(q_slots_t, q_chunk),
        chunk_rows(kv_slots, k_chunk),
        chunk_rows(jnp.ones((b, t), jnp.int32), q_chunk),
        chunk_rows(valid_bs.astype(jnp.int32), k_chunk),
        init_state(q),
        spec,
    )
    o, lse = finalize(state)  # rows that saw no slot here: o = 0, lse = -inf
    if merge:
        o = _merge(o, lse, SP)
    return unchunk_q(o).astype(q_btnh.dtype)


def cached_attention(
    q_btnh: jax.Array,
    k_bskh: jax.Array,
    v_bskh: jax.Array,
    valid_bs: jax.Array,
    q_slots_t: jax.Array,
    *,
    mesh: Mesh | None = None,
    key_block: int = 512,
) -> jax.Array:
    """Queries `[B, T, N, H]` at cache slots `q_slots_t` `[T]` against the whole layer cache
    `[B, S, K, H]` (which already holds the queries' own keys). Returns `[B, T, N, H]`."""
    b, t, n, _ = q_btnh.shape
    s, kv_heads = k_bskh.shape[1], k_bskh.shape[2]
    if n % kv_heads:
        raise ConfigError(f"num_kv_heads {kv_heads} does not divide num_heads {n}")
    sp = mesh.shape.get(SP, 1) if mesh is not None else 1
    if s % sp:
        raise ConfigError(f"cache capacity {s} is not divisible by sp {sp}")

    def local(q, k, v, valid, slots):
        return _local_attention(q, k, v, valid, slots, key_block=key_block, sp=sp, merge=sp > 1)

    if mesh is None or mesh.size == 1:
        return local(q_btnh, k_bskh, v_bskh, valid_bs, q_slots_t)
    batch = logical_to_spec(("batch",), (b,), mesh)[0]
    heads = logical_to_spec(("act_heads",), (n,), mesh)[0]
    kv = logical_to_spec(("act_kv_heads",), (kv_heads,), mesh)[0]
    if heads != kv:  # kv heads do not divide tp: keep heads whole on every device
        heads = kv = None
    seq = SP if sp > 1 else None
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(
            P(batch, None, heads, None),
            P(batch, seq, kv, None),
            P(batch, seq, kv, None),
            P(batch, seq),
            P(None),
        ),
        out_specs=P(batch, None, heads, None),
        check_vma=False,
    )(q_btnh, k_bskh, v_bskh, valid_bs, q_slots_t)
