"""Blockwise (flash-style) attention: online softmax over query x key chunks, recompute in backward.

The chunk kernels here are also ring attention's xla step (lwm/attention/ring_steps.py): one "step"
attends a block of local queries to one block of keys/values, given the *natural* sequence index of
every row (so the mask is right whatever layout the rows are stored in). Arrays inside the kernels
are chunked and head-major:

  q, o, do:  [nq, B, K, G, cq, H]   (K kv heads, G query heads each: GQA, K/V never repeated)
  k, v:      [nk, B, K, ck, H]
  m, l, lse: [nq, B, K, G, cq]      (fp32 running max / denominator / log-sum-exp)
  index:     [n, c] natural positions;  segment ids: [n, B, c]

Every (query chunk, key chunk) pair is classified before the loops as skipped (fully masked: no
FLOPs), full (no mask needed) or partial (mask built from indices and segment ids), and a
`lax.switch` runs only that branch, in forward and backward alike.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lwm.attention.base import AttentionOp, register_backend
from lwm.attention.dense import attention_mask
from lwm.attention.pallas.ops import choose_kernel, flash_attention, usable_kernel
from lwm.errors import ConfigError

SKIP, FULL, PARTIAL = 0, 1, 2
State = tuple[jax.Array, jax.Array, jax.Array]  # (o, m, l) online-softmax accumulators


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """Static description of the mask and chunking (hashable: a jit/custom_vjp static argument)."""

    causal: bool
    causal_block_size: int | None
    q_chunk: int
    k_chunk: int


# ----------------------------------------------------------------------------- validation


def check_heads(num_heads: int, num_kv_heads: int) -> int:
    """Query heads per kv head; raises a ConfigError naming both numbers when they do not divide."""
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ConfigError(f"num_kv_heads {num_kv_heads} does not divide num_heads {num_heads}")
    return num_heads // num_kv_heads


def resolve_chunk(name: str, chunk: int, block: int, what: str) -> int:
    """The chunk size used on a block of `block` rows: clamped to the block, must divide it."""
    if chunk <= 0:
        raise ConfigError(f"{name} must be positive, got {chunk}")
    c = min(chunk, block)
    if block % c:
        raise ConfigError(f"{name} {chunk} does not divide {what} of {block} tokens")
    return c


def blockwise_chunks(seq_len: int, query_chunk_size: int, key_chunk_size: int) -> tuple[int, int]:
    """The (query, key) chunk sizes blockwise attention uses on a sequence of `seq_len`; the one
    place its shape rule lives (the kernel and `BlockwiseAttentionOp.check` both call it)."""
    return (
        resolve_chunk("query_chunk_size", query_chunk_size, seq_len, "the sequence"),
        resolve_chunk("key_chunk_size", key_chunk_size, seq_len, "the sequence"),
    )


# ----------------------------------------------------------------------------- chunked layouts


def chunk_q(q_btnh: jax.Array, num_kv_heads: int, q_chunk: int) -> jax.Array:
    """[B, T, N, H] -> [nq, B, K, G, cq, H] (query head n = k * G + g)."""
    b, t, n, h = q_btnh.shape
    g = n // num_kv_heads
    x = q_btnh.reshape(b, t // q_chunk, q_chunk, num_kv_heads, g, h)
    return x.transpose(1, 0, 3, 4, 2, 5)


def unchunk_q(x: jax.Array) -> jax.Array:
    """Inverse of `chunk_q`."""
    nq, b, k, g, cq, h = x.shape
    return x.transpose(1, 0, 4, 2, 3, 5).reshape(b, nq * cq, k * g, h)


def chunk_kv(k_btkh: jax.Array, k_chunk: int) -> jax.Array:
    """[B, S, K, H] -> [nk, B, K, ck, H]."""
    b, s, kh, h = k_btkh.shape
    return k_btkh.reshape(b, s // k_chunk, k_chunk, kh, h).transpose(1, 0, 3, 2, 4)


def unchunk_kv(x: jax.Array) -> jax.Array:
    """Inverse of `chunk_kv`."""
    nk, b, kh, ck, h = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, nk * ck, kh, h)


def chunk_rows(x: jax.Array | None, chunk: int) -> jax.Array | None:
    """Indices `[T]` -> `[n, c]`; segment ids `[B, T]` -> `[n, B, c]`; None stays None."""
    if x is None:
        return None
    if x.ndim == 1:
        return x.reshape(-1, chunk)
    b, t = x.shape
    return x.reshape(b, t // chunk, chunk).transpose(1, 0, 2)


def chunk_stats(x_bnt: jax.Array, num_kv_heads: int, q_chunk: int) -> jax.Array:
    """[B, N, T] -> [nq, B, K, G, cq]."""
    b, n, t = x_bnt.shape
    x = x_bnt.reshape(b, num_kv_heads, n // num_kv_heads, t // q_chunk, q_chunk)
    return x.transpose(3, 0, 1, 2, 4)


def unchunk_stats(x: jax.Array) -> jax.Array:
    """Inverse of `chunk_stats`."""
    nq, b, k, g, cq = x.shape
    return x.transpose(1, 2, 3, 0, 4).reshape(b, k * g, nq * cq)


# ----------------------------------------------------------------------------- masks


def block_kinds(
    q_idx: jax.Array,
    kv_idx: jax.Array,
    q_seg: jax.Array | None,
    kv_seg: jax.Array | None,
    spec: MaskSpec,
) -> jax.Array:
    """`[nq, nk]` int32: SKIP (fully masked), FULL (all visible) or PARTIAL, per chunk pair.

    Conservative: a pair is SKIP/FULL only when that holds for every batch row.
    """
    nq, nk = q_idx.shape[0], kv_idx.shape[0]
    skip = jnp.zeros((nq, nk), bool)
    full = jnp.ones((nq, nk), bool)
    if spec.causal:
        qi, ki = q_idx, kv_idx
        if spec.causal_block_size:
            qi, ki = qi // spec.causal_block_size, ki // spec.causal_block_size
        skip = qi.max(1)[:, None] < ki.min(1)[None, :]
        full = qi.min(1)[:, None] >= ki.max(1)[None, :]
    if q_seg is not None:
        qlo, qhi = q_seg.min(-1), q_seg.max(-1)  # [nq, B]
        klo, khi = kv_seg.min(-1), kv_seg.max(-1)  # [nk, B]
        disjoint = (qhi[:, None] < klo[None]) | (qlo[:, None] > khi[None])  # [nq, nk, B]
        same = (qlo == qhi)[:, None] & (klo == khi)[None] & (qlo[:, None] == klo[None])
        skip = skip | disjoint.all(-1)
        full = full & same.all(-1)
    return jnp.where(skip, SKIP, jnp.where(full, FULL, PARTIAL)).astype(jnp.int32)


def _chunk_mask(qi, ki, qs, ks, spec: MaskSpec) -> jax.Array:
    """Mask broadcastable to scores `[B, K, G, cq, ck]`."""
    mask = attention_mask(
        qi,
        ki,
        causal=spec.causal,
        causal_block_size=spec.causal_block_size,
        q_segment_ids=qs,
        kv_segment_ids=ks,
    )
    if mask is None:  # no causal and no segment ids: never PARTIAL, but the branch is traced
        return jnp.ones((), bool)
    return mask[:, None, None] if mask.ndim == 3 else mask


def _scores(q_c, k_c):
    return jnp.einsum("bkgqh,bksh->bkgqs", q_c, k_c, preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------- forward


def init_state(q: jax.Array) -> State:
    """Zero accumulators (o, m, l) for chunked queries `q`."""
    stats = q.shape[:-1]
    return (
        jnp.zeros(q.shape, jnp.float32),
        jnp.full(stats, -jnp.inf, jnp.float32),
        jnp.zeros(stats, jnp.float32),
    )


def _loop_variant(idx: jax.Array, x: jax.Array) -> jax.Array:
    """`idx` with a (value-free) data dependency on `x`.

    Row indices are constants, so under a scan over layers JAX's partial evaluation treats every
    mask built from them as loop-invariant and hoists it out of the layer loop, materialising all
    chunk pairs' masks at once (O(T^2) memory). Tying the indices to this layer's q/k keeps the
    masks inside the chunk loops. The added term is always 0 (also for NaN/inf inputs).
    """
    zero = jnp.where(jnp.isnan(x.reshape(-1)[0]), 0, 0).astype(idx.dtype)
    return idx + zero


def forward_step(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_idx: jax.Array,
    kv_idx: jax.Array,
    q_seg: jax.Array | None,
    kv_seg: jax.Array | None,
    state: State,
    spec: MaskSpec,
) -> State:
    """Attends chunked queries to one key/value block, updating the online-softmax state."""
    q_idx, kv_idx = _loop_variant(q_idx, q), _loop_variant(kv_idx, k)
    kinds = block_kinds(q_idx, kv_idx, q_seg, kv_seg, spec)

    def q_body(_, xs):
        q_c, o_c, m_c, l_c, qi, qs, kinds_row = xs

        def visit(carry, k_c, v_c, ki, ks, masked):
            o, m, l = carry
            s = _scores(q_c, k_c)
            if masked:
                s = jnp.where(_chunk_mask(qi, ki, qs, ks, spec), s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0) if masked else m_new
            p = jnp.exp(s - m_safe[..., None])
            corr = jnp.exp(m - m_safe)
            l = l * corr + p.sum(-1)
            pv = jnp.einsum(
                "bkgqs,bksh->bkgqh", p.astype(v_c.dtype), v_c, preferred_element_type=jnp.float32
            )
            return o * corr[..., None] + pv, m_new, l

        def kv_body(carry, xs2):
            k_c, v_c, ki, ks, kind = xs2
            branches = [
                lambda c: c,
                lambda c: visit(c, k_c, v_c, ki, ks, False),
                lambda c: visit(c, k_c, v_c, ki, ks, True),
            ]
            return lax.switch(kind, branches, carry), None

        carry, _ = lax.scan(kv_body, (o_c, m_c, l_c), (k, v, kv_idx, kv_seg, kinds_row))
        return None, carry

    def run(state):
        o, m, l = state
        return lax.scan(q_body, None, (q, o, m, l, q_idx, q_seg, kinds))[1]

    # A fully masked block (e.g. a later shard's keys with the contiguous layout) costs nothing.
    return lax.cond(jnp.any(kinds != SKIP), run, lambda s: s, state)


def finalize(state: State) -> tuple[jax.Array, jax.Array]:
    """(o, m, l) -> normalized output (fp32) and log-sum-exp per row."""
    o, m, l = state
    l_safe = jnp.where(l == 0.0, 1.0, l)  # rows that see nothing (cannot happen with valid ids)
    return o / l_safe[..., None], m + jnp.log(l_safe)


# ----------------------------------------------------------------------------- backward


def backward_step(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    do: jax.Array,
    lse: jax.Array,
    delta: jax.Array,
    q_idx: jax.Array,
    kv_idx: jax.Array,
    q_seg: jax.Array | None,
    kv_seg: jax.Array | None,
    dq: jax.Array,
    spec: MaskSpec,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gradients of one forward_step block: returns updated dq and this block's (dk, dv), fp32.

    `q` is pre-scaled, so dq here is w.r.t. the scaled queries (the caller multiplies by scale).
    """
    q_idx, kv_idx = _loop_variant(q_idx, q), _loop_variant(kv_idx, k)
    kinds = block_kinds(q_idx, kv_idx, q_seg, kv_seg, spec)
    nq, b, kh, g, cq, h = q.shape
    ck = k.shape[3]
    # Query rows are merged with their group ((g, cq) -> m, a free reshape) so every dot has one
    # contracting axis, and dK/dV are produced transposed ([.., h, ck], contracting m, the
    # scores' leading axis): XLA:CPU runs a dot contracting two axes, or contracting the
    # leading axis into a [ck, h] result, 2-3x slower than these forms.
    kv_zero = jnp.zeros((b, kh, h, ck), jnp.float32)

    def merged(x):  # [nq, B, K, G, cq, ...] -> [nq, B, K, G * cq, ...]
        return x.reshape(nq, b, kh, g * cq, *x.shape[5:])

    def q_body(carry, xs):
        dk_acc, dv_acc = carry
        q_c, do_c, lse_c, delta_c, dq_c, qi, qs, kinds_row = xs

        def visit(dq_c, k_c, v_c, ki, ks, masked):
            s = jnp.einsum("bkmh,bksh->bkms", q_c, k_c, preferred_element_type=jnp.float32)
            p = jnp.exp(s - lse_c[..., None])
            if masked:
                mask = _chunk_mask(qi, ki, qs, ks, spec)
                p = jnp.where(mask, p.reshape(b, kh, g, cq, ck), 0.0).reshape(p.shape)
            dp = jnp.einsum("bkmh,bksh->bkms", do_c, v_c, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_c[..., None])
            dq_c = dq_c + jnp.einsum(
                "bkms,bksh->bkmh", ds.astype(k_c.dtype), k_c, preferred_element_type=jnp.float32
            )
            dk_t = jnp.einsum(
                "bkms,bkmh->bkhs", ds.astype(q_c.dtype), q_c, preferred_element_type=jnp.float32
            )
            dv_t = jnp.einsum(
                "bkms,bkmh->bkhs", p.astype(do_c.dtype), do_c, preferred_element_type=jnp.float32
            )
            return dq_c, (dk_t, dv_t)

        def kv_body(dq_c, xs2):
            k_c, v_c, ki, ks, kind = xs2
            branches = [
                lambda d: (d, (kv_zero, kv_zero)),
                lambda d: visit(d, k_c, v_c, ki, ks, False),
                lambda d: visit(d, k_c, v_c, ki, ks, True),
            ]
            return lax.switch(kind, branches, dq_c)

        dq_c, (dk_parts, dv_parts) = lax.scan(kv_body, dq_c, (k, v, kv_idx, kv_seg, kinds_row))
        return (dk_acc + dk_parts, dv_acc + dv_parts), dq_c

    zeros_t = jnp.zeros((k.shape[0], b, kh, h, ck), jnp.float32)

    def run(dq):
        xs = (merged(q), merged(do), merged(lse), merged(delta), merged(dq), q_idx, q_seg, kinds)
        (dk_t, dv_t), dq = lax.scan(q_body, (zeros_t, zeros_t), xs)
        return dq.reshape(q.shape), dk_t.swapaxes(3, 4), dv_t.swapaxes(3, 4)

    zeros = jnp.zeros(k.shape, jnp.float32)
    return lax.cond(jnp.any(kinds != SKIP), run, lambda dq: (dq, zeros, zeros), dq)


def row_delta(do: jax.Array, o: jax.Array) -> jax.Array:
    """rowsum(dO * O), the softmax-backward correction term, fp32."""
    return jnp.einsum("...h,...h->...", do.astype(jnp.float32), o.astype(jnp.float32))


# ----------------------------------------------------------------------------- single device op


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def blockwise_attention_core(q_btnh, k_btkh, v_btkh, segment_ids_bt, spec: MaskSpec):
    """Blockwise attention on natural-order inputs; memory O(chunk^2) in forward and backward."""
    return _blockwise_fwd(q_btnh, k_btkh, v_btkh, segment_ids_bt, spec)[0]


def _blockwise_fwd(q_btnh, k_btkh, v_btkh, segment_ids_bt, spec):
    t, kh, h = q_btnh.shape[1], k_btkh.shape[2], q_btnh.shape[3]
    q = chunk_q(q_btnh * jnp.asarray(h**-0.5, q_btnh.dtype), kh, spec.q_chunk)
    k, v = chunk_kv(k_btkh, spec.k_chunk), chunk_kv(v_btkh, spec.k_chunk)
    idx = jnp.arange(t, dtype=jnp.int32)
    q_idx, kv_idx = chunk_rows(idx, spec.q_chunk), chunk_rows(idx, spec.k_chunk)
    q_seg = chunk_rows(segment_ids_bt, spec.q_chunk)
    kv_seg = chunk_rows(segment_ids_bt, spec.k_chunk)
    state = forward_step(q, k, v, q_idx, kv_idx, q_seg, kv_seg, init_state(q), spec)
    o, lse = finalize(state)
    out = unchunk_q(o).astype(q_btnh.dtype)
    return out, (q_btnh, k_btkh, v_btkh, segment_ids_bt, out, lse)


def _blockwise_bwd(spec, res, dout_btnh):
    q_btnh, k_btkh, v_btkh, segment_ids_bt, out, lse = res
    t, kh, h = q_btnh.shape[1], k_btkh.shape[2], q_btnh.shape[3]
    scale = h**-0.5
    q = chunk_q(q_btnh * jnp.asarray(scale, q_btnh.dtype), kh, spec.q_chunk)
    k, v = chunk_kv(k_btkh, spec.k_chunk), chunk_kv(v_btkh, spec.k_chunk)
    do = chunk_q(dout_btnh, kh, spec.q_chunk)
    delta = row_delta(do, chunk_q(out, kh, spec.q_chunk))
    idx = jnp.arange(t, dtype=jnp.int32)
    dq, dk, dv = backward_step(
        q,
        k,
        v,
        do,
        lse,
        delta,
        chunk_rows(idx, spec.q_chunk),
        chunk_rows(idx, spec.k_chunk),
        chunk_rows(segment_ids_bt, spec.q_chunk),
        chunk_rows(segment_ids_bt, spec.k_chunk),
        jnp.zeros(q.shape, jnp.float32),
        spec,
    )
    return (
        (unchunk_q(dq) * scale).astype(q_btnh.dtype),
        unchunk_kv(dk).astype(k_btkh.dtype),
        unchunk_kv(dv).astype(v_btkh.dtype),
        None,
    )


blockwise_attention_core.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(
    q_btnh: jax.Array,
    k_btkh: jax.Array,
    v_btkh: jax.Array,
    segment_ids_bt: jax.Array | None = None,
    *,
    causal: bool = True,
    causal_block_size: int | None = None,
    query_chunk_size: int = 512,
    key_chunk_size: int = 512,
    kernel: Any = None,
) -> jax.Array:
    """Blockwise attention with the mask semantics of `dense_attention`; validates shapes.

    `kernel` (a pallas.ops.PallasChoice) runs the fused Pallas kernels instead of the xla chunks."""
    b, t, n, _ = q_btnh.shape
    check_heads(n, k_btkh.shape[2])
    if k_btkh.shape[1] != t or v_btkh.shape != k_btkh.shape:
        raise ConfigError(
            f"self-attention expects q/k/v of one length: q {q_btnh.shape}, k {k_btkh.shape}, "
            f"v {v_btkh.shape}"
        )
    if segment_ids_bt is not None and segment_ids_bt.shape != (b, t):
        raise ConfigError(f"segment_ids shape {segment_ids_bt.shape} != (batch, length) {(b, t)}")
    q_chunk, k_chunk = blockwise_chunks(t, query_chunk_size, key_chunk_size)
    spec = MaskSpec(
        causal=causal,
        causal_block_size=causal_block_size if causal else None,
        q_chunk=q_chunk,
        k_chunk=k_chunk,
    )
    if segment_ids_bt is not None:
        segment_ids_bt = segment_ids_bt.astype(jnp.int32)
    kernel = usable_kernel(kernel, t, t, q_btnh.shape[3])
    if kernel is not None:  # the one dispatch point to the Pallas kernels
        return flash_attention(
            q_btnh,
            k_btkh,
            v_btkh,
            segment_ids_bt,
            causal=causal,
            causal_block_size=spec.causal_block_size,
            block_q=kernel.block_q,
            block_k=kernel.block_k,
            blocks=kernel.blocks,
        )
    return blockwise_attention_core(q_btnh, k_btkh, v_btkh, segment_ids_bt, spec)


@register_backend("blockwise")
@dataclasses.dataclass(frozen=True)
class BlockwiseAttentionOp(AttentionOp):
    """Single-device memory-efficient attention (natural layout)."""

    def check(self, seq_len: int, mesh: Any = None) -> None:
        super().check(seq_len, mesh)
        blockwise_chunks(seq_len, self.config.query_chunk_size, self.config.key_chunk_size)

    def __call__(self, q_btnh, k_btkh, v_btkh, segment_ids_bt=None) -> jax.Array:
        return blockwise_attention(
            q_btnh,
            k_btkh,
            v_btkh,
            segment_ids_bt,
            causal=self.causal,
            causal_block_size=self.config.causal_block_size,
            query_chunk_size=self.config.query_chunk_size,
            key_chunk_size=self.config.key_chunk_size,
            kernel=choose_kernel(self.config, self.mesh),
        )
