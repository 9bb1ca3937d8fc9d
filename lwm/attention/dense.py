"""Dense attention: the reference every other backend is tested against.

Mask semantics shared by all backends (indices are positions in the packed row, natural order):
query i may attend key j iff
  - causal:            j <= i            (block-causal: j // b <= i // b)
  - segment ids given: seg[i] == seg[j]  (packing; id 0 is padding and only sees padding)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(
    q_index: jax.Array,
    kv_index: jax.Array,
    *,
    causal: bool,
    causal_block_size: int | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
) -> jax.Array | None:
    """Boolean mask `[..., Tq, Tk]` (True = attend) from row indices and optional segment ids.

    `q_index` is `[Tq]` or `[B, Tq]`, `kv_index` `[Tk]` or `[B, Tk]`; segment ids are `[B, T*]`.
    """
    mask = None
    if causal:
        qi, ki = q_index, kv_index
        if causal_block_size:
            qi, ki = qi // causal_block_size, ki // causal_block_size
        mask = qi[..., :, None] >= ki[..., None, :]
    if q_segment_ids is not None:
        seg = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
        mask = seg if mask is None else mask & seg
    return mask


def dense_attention(
    q_btnh: jax.Array,
    k_btkh: jax.Array,
    v_btkh: jax.Array,
    *,
    segment_ids_bt: jax.Array | None = None,
    causal: bool = True,
    causal_block_size: int | None = None,
) -> jax.Array:
    """Softmax attention with GQA (K/V heads shared by groups of query heads), fp32 softmax."""
    b, t, n, h = q_btnh.shape
    s, kheads = k_btkh.shape[1], k_btkh.shape[2]
    if n % kheads:
        raise ValueError(f"num_kv_heads {kheads} does not divide num_heads {n}")
    g = n // kheads
    q_btkgh = q_btnh.reshape(b, t, kheads, g, h)
    scale = h**-0.5
    logits_bkgts = jnp.einsum(
        "btkgh,bskh->bkgts", q_btkgh, k_btkh, preferred_element_type=jnp.float32
    )
    logits_bkgts = logits_bkgts * scale
    mask = attention_mask(
        jnp.arange(t),
        jnp.arange(s),
        causal=causal,
        causal_block_size=causal_block_size,
        q_segment_ids=segment_ids_bt,
        kv_segment_ids=segment_ids_bt,
    )
    if mask is not None:
        mask = mask if mask.ndim == 3 else mask[None]
        logits_bkgts = jnp.where(mask[:, None, None], logits_bkgts, jnp.finfo(jnp.float32).min)
    probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1)
    out_btkgh = jnp.einsum("bkgts,bskh->btkgh", probs_bkgts.astype(v_btkh.dtype), v_btkh)
    return out_btkgh.reshape(b, t, n, h)
