"""The per-device kernels of the cache attention: queries against one device's cache shard, read
key block by key block, in place.

One loop serves prefill chunks and decode steps (`block_scan`): a dynamic number of key blocks
is sliced out of the head-major shard `[B, K, S_local, H]`, each block converted from its stored
dtype to the compute dtype on its own (an 8-bit block's scales are applied to its scores and
probabilities, `[.., block]`-sized, instead of to the block), scored and accumulated with an
online softmax in fp32. Only blocks that can hold a visible slot are visited, so the work and the
temporaries follow the filled part of the shard, never its capacity: no full-precision or
converted copy of the cache is ever made. Prefill additionally skips blocks whose mask is empty
(padding only); a decode step's blocks are all filled, so it skips that test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from lwm.attention.blockwise import chunk_q, chunk_rows, finalize, init_state
from lwm.cache.quant import codes_to

TAIL_BLOCK = 256
"""Decode reads the shard's last, partly filled block in blocks of at most this many slots."""
CacheArrays = tuple
"""One layer's cache shard `(k_bksh, v_bksh)` or, 8-bit, `(k_bksh, v_bksh, k_scale_bks,
v_scale_bks)`."""


def combine_partials(o1, lse1, o2, lse2) -> tuple[jax.Array, jax.Array]:
    """(o, lse) of attention over the union of two disjoint key sets from each set's (o
    normalised `[..., H]`, lse `[...]`; -inf = saw nothing)."""
    top = jnp.maximum(lse1, lse2)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    w1, w2 = jnp.exp(lse1 - top), jnp.exp(lse2 - top)
    den = w1 + w2
    seen = den > 0.0
    den_safe = jnp.where(seen, den, 1.0)
    o = (o1 * w1[..., None] + o2 * w2[..., None]) / den_safe[..., None]
    return o, jnp.where(seen, top + jnp.log(den_safe), -jnp.inf)


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of `n` that is at most `at_most` (at least 1)."""
    c = max(1, min(n, at_most))
    while n % c:
        c -= 1
    return c


def _slice(x, start, ck):
    return lax.dynamic_slice_in_dim(x, start, ck, 2)


def block_scan(
    q_bkgqh: jax.Array,
    cache: CacheArrays,
    visible_bs: jax.Array,
    q_slots_q: jax.Array,
    kv_lo,
    ck: int,
    n_blocks,
    *,
    skip_empty: bool,
    base=0,
) -> tuple[jax.Array, jax.Array]:
    """Pre-scaled queries `[B, K, G, q, H]` at global slots `q_slots_q` against `n_blocks`
    (traced) key blocks of `ck` slots of the local shard from local slot `base` (traced; global
    slots from `kv_lo`).
    A slot is seen iff visible and not after the query. Returns fp32 (o `[B, K, G, q, H]`
    normalised, lse `[B, K, G, q]`, -inf where a query saw nothing)."""
    scales = len(cache) == 4
    cdt = q_bkgqh.dtype
    b, kh, g, nq, h = q_bkgqh.shape
    q_flat = q_bkgqh.reshape(b, kh, g * nq, h)

    def visit(j, mask, carry):
        o, m, l = carry
        # The barrier keeps the block reads inside the loop: without it XLA rewrites
        # `dot(q, slice(K))` into `slice(dot(q, K))` and hoists the dot over the whole shard out
        # of the loop (every step then reads every slot, and scores span the capacity).
        blocks = lax.optimization_barrier(tuple(_slice(x, base + j * ck, ck) for x in cache))
        k_c, v_c = (
            codes_to(blocks[0], cdt),
            codes_to(blocks[1], cdt),
        )  # one block converted, not all
        # Keys as the left operand, as stored ([ck, H] per (row, kv head)): the other order
        # makes XLA:CPU want the shard transposed, and it hoists that copy out of the loop.
        s = jnp.einsum("bksh,bkqh->bkqs", k_c, q_flat, preferred_element_type=jnp.float32)
        s = s.reshape(b, kh, g, nq, ck)
        if scales:
            s = s * codes_to(blocks[2], jnp.float32)[:, :, None, None, :]
        s = jnp.where(mask[:, None, None], s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        corr = jnp.exp(m - m_safe)
        l = l * corr + p.sum(-1)
        if scales:
            p = p * codes_to(blocks[3], jnp.float32)[:, :, None, None, :]
        pv = jnp.einsum("bkgqs,bksh->bkgqh", p.astype(cdt), v_c, preferred_element_type=jnp.float32)
        return o * corr[..., None] + pv, m_new, l

    def body(j, carry):
        ki = kv_lo + base + j * ck + jnp.arange(ck, dtype=jnp.int32)
        seen = lax.dynamic_slice_in_dim(visible_bs, base + j * ck, ck, 1)
        mask = (ki[None, :] <= q_slots_q[:, None])[None] & seen[:, None, :]  # [B, q, ck]
        if not skip_empty:
            return visit(j, mask, carry)
        return lax.cond(jnp.any(mask), lambda c: visit(j, mask, c), lambda c: c, carry)

    return finalize(lax.fori_loop(0, n_blocks, body, init_state(q_bkgqh)))


def _scale_q(q_btnh):
    return q_btnh * jnp.asarray(q_btnh.shape[-1] ** -0.5, q_btnh.dtype)


def _block(s_local: int, block: int) -> int:
    # At least two blocks: a block that is the whole shard is loop-invariant, and XLA hoists
    # its conversion and product out of the loop (paid even when the shard holds nothing).
    return largest_divisor(s_local, min(block, max(1, s_local // 2)))


def _unchunk(o, lse):
    """(o `[.., B, K, G, q, H]`, lse `[.., B, K, G, q]`) with leading query chunks -> (o
    `[B, T, N, H]`, lse `[B, T, N]`)."""
    nq, b, k, g, cq, h = o.shape
    o = o.transpose(1, 0, 4, 2, 3, 5).reshape(b, nq * cq, k * g, h)
    return o, lse.transpose(1, 0, 4, 2, 3).reshape(b, nq * cq, k * g)


def prefill_partial(
    q_btnh: jax.Array,
    cache: CacheArrays,
    valid_bs: jax.Array,
    q_slots_t: jax.Array,
    kv_lo,
    end=None,
    *,
    key_block: int,
) -> tuple[jax.Array, jax.Array]:
    """A prefill chunk against the local slots `[kv_lo, kv_lo + S_local)` (before global slot
    `end` when given): per query chunk, the key blocks up to its last slot (the causal future is
    never visited), empty blocks skipped. Scores never exceed `[B, K, G, q_chunk, key_block]`.
    Returns fp32 (o `[B, T, N, H]` normalised, lse `[B, T, N]`)."""
    t = q_btnh.shape[1]
    kv_heads, s_local = cache[0].shape[1], cache[0].shape[2]
    cq, ck = largest_divisor(t, 512), _block(s_local, key_block)
    q = chunk_q(_scale_q(q_btnh), kv_heads, cq)
    qi = chunk_rows(q_slots_t, cq)  # [nq, cq]
    visible = valid_bs > 0
    limit = s_local // ck
    if end is not None:
        limit = jnp.clip((end - kv_lo + ck - 1) // ck, 0, limit)

    def q_body(_, xs):
        q_c, qi_c = xs  # [B, K, G, cq, H], [cq]
        n_blocks = jnp.clip((qi_c.max() - kv_lo) // ck + 1, 0, limit)
        return None, block_scan(q_c, cache, visible, qi_c, kv_lo, ck, n_blocks, skip_empty=True)

    _, (o, lse) = lax.scan(q_body, None, (q, qi))
    return _unchunk(o, lse)


def decode_partial(
    q_btnh: jax.Array,
    cache: CacheArrays,
    valid_bs: jax.Array,
    q_slots_t: jax.Array,
    kv_lo,
    end,
    *,
    block: int,
) -> tuple[jax.Array, jax.Array]:
    """A few queries against the local slots `[kv_lo, kv_lo + S_local)`, of which only those
    before global slot `end` (traced) can be filled: the loop stops at the block holding
    `end - 1`, so a step's cost follows the filled slots, not the capacity. Returns fp32 (o
    `[B, T, N, H]` normalised, lse `[B, T, N]`)."""
    t = q_btnh.shape[1]
    kv_heads, s_local = cache[0].shape[1], cache[0].shape[2]
    ck = _block(s_local, block)
    q = chunk_q(_scale_q(q_btnh), kv_heads, t)[0]  # [B, K, G, T, H]
    visible = valid_bs > 0
    filled = jnp.clip(end - kv_lo, 0, s_local)
    n_full = filled // ck
    o, lse = block_scan(q, cache, visible, q_slots_t, kv_lo, ck, n_full, skip_empty=False)
    # The partly filled last block in small blocks: reading it whole would make a step at 4,097
    # filled slots read 6,144 with 2,048-slot blocks (1.4x the filled part).
    cs = largest_divisor(ck, TAIL_BLOCK)
    n_tail = (filled - n_full * ck + cs - 1) // cs
    tail = block_scan(
        q, cache, visible, q_slots_t, kv_lo, cs, n_tail, skip_empty=False, base=n_full * ck
    )
    o, lse = combine_partials(o, lse, *tail)
    return _unchunk(o[None], lse[None])


def dense_partial(q_btnh, k_bkth, v_bkth, mask_btt) -> tuple[jax.Array, jax.Array]:
    """A few queries against a few keys `[B, K, T', H]` (a decode chunk's own new keys) in one
    masked pass. Returns fp32 (o `[B, T, N, H]` normalised, lse `[B, T, N]`; -inf where a query
    sees no key)."""
    b, t, n, h = q_btnh.shape
    kv_heads = k_bkth.shape[1]
    q = chunk_q(_scale_q(q_btnh), kv_heads, t)[0]  # [B, K, G, T, H]
    s = jnp.einsum(
        "bkgqh,bksh->bkgqs", q, k_bkth.astype(q.dtype), preferred_element_type=jnp.float32
    )
    s = jnp.where(mask_btt[:, None, None], s, -jnp.inf)
    m = s.max(-1)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(s - m_safe[..., None])
    l = p.sum(-1)
    o = jnp.einsum(
        "bkgqs,bksh->bkgqh",
        p.astype(q.dtype),
        v_bkth.astype(q.dtype),
        preferred_element_type=jnp.float32,
    )
    seen = l > 0.0
    l_safe = jnp.where(seen, l, 1.0)
    lse = jnp.where(seen, m_safe + jnp.log(l_safe), -jnp.inf)
    o = (o / l_safe[..., None]).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
    return o, lse.transpose(0, 3, 1, 2).reshape(b, t, n)
