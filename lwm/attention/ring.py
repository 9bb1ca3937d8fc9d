"""Ring attention: blockwise attention with the sequence sharded over the `sp` mesh axis.

This module is the `ring` backend: its shape rules (`ring_chunks`), the static plan of one call
(`make_plan`: chunk sizes, mesh specs, which per-step kernel) and the op. The ring schedule itself
(rotation, causal skipping, custom VJP) is lwm/attention/ring_driver.py, run with the step kernel
of lwm/attention/ring_steps.py that `attention.kernel` picks (xla chunk loops or fused Pallas).

Rows may be stored in any layout of lwm/attention/layout.py (zigzag by default): each device derives
the natural indices of its own rows and of the block it holds from the layout, so causal,
block-causal and segment masks are exact and fully masked chunk pairs are skipped (with zigzag,
every device does the same work at every step).

Batch is sharded over dp x fsdp and heads over tp, from the logical-axis rules.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lwm.attention.base import AttentionOp, mesh_sp, register_backend
from lwm.attention.blockwise import MaskSpec, check_heads, resolve_chunk
from lwm.attention.layout import check_layout, check_length
from lwm.attention.layout import from_layout as _from_layout
from lwm.attention.layout import to_layout as _to_layout
from lwm.attention.pallas.ops import choose_kernel, usable_kernel
from lwm.attention.ring_driver import RingPlan, ring_attention_core
from lwm.attention.ring_steps import PallasStep, XlaStep
from lwm.errors import ConfigError
from lwm.sharding.rules import logical_to_spec


def ring_chunks(
    seq_len: int, sp: int, layout: str, query_chunk_size: int, key_chunk_size: int
) -> tuple[int, int]:
    """The (query, key) chunk sizes ring attention uses on a sequence of `seq_len` over `sp`
    devices; the one place its shape rules live (`make_plan` and `RingAttentionOp.check` call it).

    The layout fixes the multiple of the length (sp; zigzag 2 x sp; striped sp x sp) and the
    unit the chunks split: each device's block, or for zigzag each of its two half-blocks.
    """
    check_length(layout, seq_len, sp)
    local = seq_len // sp
    if layout == "zigzag" and sp > 1:
        unit, what = local // 2, f"the zigzag half-block (sequence {seq_len} / (2 x sp {sp}))"
    else:
        unit, what = local, f"the per-device block (sequence {seq_len} / sp {sp})"
    chunks = []
    for name, chunk in (("query_chunk_size", query_chunk_size), ("key_chunk_size", key_chunk_size)):
        try:
            chunks.append(resolve_chunk(name, chunk, unit, what))
        except ConfigError as e:
            if chunk <= 0:
                raise
            raise ConfigError(
                f"seq_len {seq_len} not divisible by sp x {name} for the {layout} layout: {e}"
            ) from None
    return chunks[0], chunks[1]


def make_plan(
    q_shape,
    k_shape,
    *,
    causal,
    causal_block_size,
    query_chunk_size,
    key_chunk_size,
    layout,
    mesh,
    kernel=None,
) -> RingPlan:
    """Validates shapes against the mesh and config; errors name the offending numbers."""
    check_layout(layout)
    b, t, n, _ = q_shape
    kv_heads = k_shape[2]
    check_heads(n, kv_heads)
    if k_shape[1] != t:
        raise ConfigError(f"self-attention expects q and k of one length, got {t} and {k_shape[1]}")
    sp = mesh_sp(mesh)
    q_chunk, k_chunk = ring_chunks(t, sp, layout, query_chunk_size, key_chunk_size)
    mask = MaskSpec(
        causal=causal,
        causal_block_size=causal_block_size if causal else None,
        q_chunk=q_chunk,
        k_chunk=k_chunk,
    )
    local = t // sp  # per-step lengths
    kernel = usable_kernel(kernel, local, local, q_shape[3])
    step = XlaStep(mask) if kernel is None else PallasStep(mask, kernel)
    batch_spec = heads_spec = kv_heads_spec = None
    if mesh is not None:
        batch_spec = logical_to_spec(("batch",), (b,), mesh)[0]
        heads_spec = logical_to_spec(("act_heads",), (n,), mesh)[0]
        if heads_spec is not None:
            kv_spec = logical_to_spec(("act_kv_heads",), (kv_heads,), mesh)[0]
            kv_heads_spec = kv_spec if kv_spec == heads_spec else None
    return RingPlan(step, layout, sp, n, kv_heads, mesh, batch_spec, heads_spec, kv_heads_spec)


def ring_attention(
    q_btnh: jax.Array,
    k_btkh: jax.Array,
    v_btkh: jax.Array,
    segment_ids_bt: jax.Array | None = None,
    *,
    mesh: Any,
    causal: bool = True,
    causal_block_size: int | None = None,
    query_chunk_size: int = 512,
    key_chunk_size: int = 512,
    layout: str = "zigzag",
    kernel: Any = None,
) -> jax.Array:
    """Ring attention on global arrays whose sequence axis is already in `layout` order;
    `kernel` (a pallas.ops.PallasChoice) runs each ring step with the fused Pallas kernels."""
    plan = make_plan(
        q_btnh.shape,
        k_btkh.shape,
        causal=causal,
        causal_block_size=causal_block_size,
        query_chunk_size=query_chunk_size,
        key_chunk_size=key_chunk_size,
        layout=layout,
        mesh=mesh,
        kernel=kernel,
    )
    if v_btkh.shape != k_btkh.shape:
        raise ConfigError(f"k shape {k_btkh.shape} != v shape {v_btkh.shape}")
    if segment_ids_bt is not None:
        if segment_ids_bt.shape != q_btnh.shape[:2]:
            raise ConfigError(
                f"segment_ids shape {segment_ids_bt.shape} != (batch, length) {q_btnh.shape[:2]}"
            )
        segment_ids_bt = segment_ids_bt.astype(jnp.int32)
    return ring_attention_core(q_btnh, k_btkh, v_btkh, segment_ids_bt, plan)


@register_backend("ring")
@dataclasses.dataclass(frozen=True)
class RingAttentionOp(AttentionOp):
    """Ring attention over mesh axis `sp`; inputs and outputs in `config.layout` order."""

    def check(self, seq_len: int, mesh: Any = None) -> None:
        cfg = self.config
        check_layout(cfg.layout)
        sp = mesh_sp(self.mesh if mesh is None else mesh)
        ring_chunks(seq_len, sp, cfg.layout, cfg.query_chunk_size, cfg.key_chunk_size)

    def __call__(self, q_btnh, k_btkh, v_btkh, segment_ids_bt=None) -> jax.Array:
        cfg = self.config
        return ring_attention(
            q_btnh,
            k_btkh,
            v_btkh,
            segment_ids_bt,
            mesh=self.mesh,
            causal=self.causal,
            causal_block_size=cfg.causal_block_size,
            query_chunk_size=cfg.query_chunk_size,
            key_chunk_size=cfg.key_chunk_size,
            layout=cfg.layout,
            kernel=choose_kernel(cfg, self.mesh),
        )

    def to_layout(self, x, axis: int = 1):
        return _to_layout(x, self.config.layout, self.mesh, axis)

    def from_layout(self, x, axis: int = 1):
        return _from_layout(x, self.config.layout, self.mesh, axis)
