"""Attention backends behind one interface, chosen by `AttentionConfig.backend`.

`make_attention(cfg, causal=..., mesh=...)` returns an `AttentionOp`:
  - `op(q_btnh, k_btkh, v_btkh, segment_ids_bt=None) -> out_btnh`, on inputs in the op's layout;
  - `op.to_layout(x, axis=1)` / `op.from_layout(x, axis=1)`: the sequence permutation the op expects
    (identity for `dense`/`blockwise` and for `ring` with the contiguous layout).
The model puts tokens, positions and segment ids into the layout once at entry and restores natural
order once before the output head, so callers always see natural order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from lwm.attention.config import AttentionConfig
from lwm.attention.dense import attention_mask, dense_attention

__all__ = ["AttentionOp", "attention_mask", "dense_attention", "make_attention"]


@dataclasses.dataclass(frozen=True)
class AttentionOp:
    """Dense attention; the base class of the other backends."""

    config: AttentionConfig
    causal: bool = True
    mesh: Any = None

    def __call__(self, q_btnh, k_btkh, v_btkh, segment_ids_bt=None) -> jax.Array:
        return dense_attention(
            q_btnh,
            k_btkh,
            v_btkh,
            segment_ids_bt=segment_ids_bt,
            causal=self.causal,
            causal_block_size=self.config.causal_block_size,
        )

    def to_layout(self, x: jax.Array, axis: int = 1) -> jax.Array:
        return x

    def from_layout(self, x: jax.Array, axis: int = 1) -> jax.Array:
        return x


def make_attention(cfg: AttentionConfig, *, causal: bool = True, mesh: Any = None) -> AttentionOp:
    """Builds the configured backend; `mesh` is required by `ring` (it shards over axis `sp`)."""
    if cfg.backend == "dense":
        return AttentionOp(cfg, causal, mesh)
    if cfg.backend == "blockwise":
        from lwm.attention.blockwise import BlockwiseAttentionOp

        return BlockwiseAttentionOp(cfg, causal, mesh)
    if cfg.backend == "ring":
        from lwm.attention.ring import RingAttentionOp

        return RingAttentionOp(cfg, causal, mesh)
    raise ValueError(f"unknown attention backend {cfg.backend!r}")
