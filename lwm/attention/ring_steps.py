"""Ring attention's per-step kernels: what one ring step computes on the key/value block it holds.

The ring driver (lwm/attention/ring_driver.py) runs the schedule; a step kernel attends the local
queries to one block given the natural positions of both sides' rows, and returns the block's
gradients in the backward pass (from the final lse, so per-step gradients add up):

  - `XlaStep`: the chunk loops of lwm/attention/blockwise.py (chunked head-major arrays, the
    online-softmax state (o, m, l) carried across steps, mask-skipping per chunk pair);
  - `PallasStep`: one fused forward kernel call per step (lwm/attention/pallas/), its (out, lse)
    merged into the running (out, lse) in fp32; one dQ and one dK/dV call per step backward.
    Arrays are head-major ([B, N, T, H]) for the whole ring, so each step is a kernel call only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

import lwm.attention.blockwise as xla
import lwm.attention.pallas.ops as pallas
from lwm.attention.blockwise import MaskSpec
from lwm.attention.pallas.calls import flash_backward, flash_forward, merge
from lwm.attention.pallas.ops import PallasChoice


@dataclasses.dataclass(frozen=True)
class XlaStep:
    """A ring step as blockwise attention's chunk loops (`attention.kernel = xla`); a
    `ring_driver.StepKernel`."""

    mask: MaskSpec

    def _queries(self, q_btnh, kv_heads: int):
        scale = q_btnh.shape[3] ** -0.5
        return xla.chunk_q(q_btnh * jnp.asarray(scale, q_btnh.dtype), kv_heads, self.mask.q_chunk)

    def _block(self, k_btkh, v_btkh, seg_bt):
        k_chunk = self.mask.k_chunk
        block = (xla.chunk_kv(k_btkh, k_chunk), xla.chunk_kv(v_btkh, k_chunk))
        return (*block, xla.chunk_rows(seg_bt, k_chunk))

    def forward_setup(self, q_btnh, k_btkh, v_btkh, seg_bt, q_rows) -> tuple[Any, Any]:
        q = self._queries(q_btnh, k_btkh.shape[2])
        q_idx, q_seg = (xla.chunk_rows(x, self.mask.q_chunk) for x in (q_rows, seg_bt))
        return (q, q_idx, q_seg), self._block(k_btkh, v_btkh, seg_bt)

    def forward_init(self, ctx) -> Any:
        return xla.init_state(ctx[0])

    def forward(self, ctx, acc, block, kv_rows) -> Any:
        (q, q_idx, q_seg), (k, v, kv_seg) = ctx, block
        kv_idx = xla.chunk_rows(kv_rows, self.mask.k_chunk)
        return xla.forward_step(q, k, v, q_idx, kv_idx, q_seg, kv_seg, acc, self.mask)

    def forward_output(self, ctx, acc) -> tuple[jax.Array, jax.Array]:
        o, lse = xla.finalize(acc)
        return xla.unchunk_q(o), xla.unchunk_stats(lse)

    def backward_setup(
        self, q_btnh, k_btkh, v_btkh, seg_bt, out_btnh, lse_bnt, do_btnh, q_rows
    ) -> tuple[Any, Any, jax.Array]:
        kv_heads, q_chunk = k_btkh.shape[2], self.mask.q_chunk
        q = self._queries(q_btnh, kv_heads)
        do = xla.chunk_q(do_btnh, kv_heads, q_chunk)
        delta = xla.row_delta(do, xla.chunk_q(out_btnh, kv_heads, q_chunk))
        lse = xla.chunk_stats(lse_bnt, kv_heads, q_chunk)
        q_idx, q_seg = xla.chunk_rows(q_rows, q_chunk), xla.chunk_rows(seg_bt, q_chunk)
        ctx = (q, do, lse, delta, q_idx, q_seg, q_btnh.shape[3] ** -0.5)
        block = self._block(k_btkh, v_btkh, seg_bt)
        return ctx, block, jnp.zeros(q.shape, jnp.float32)

    def backward(self, ctx, dq, block, kv_rows) -> tuple[jax.Array, jax.Array, jax.Array]:
        (q, do, lse, delta, q_idx, q_seg, _), (k, v, kv_seg) = ctx, block
        kv_idx = xla.chunk_rows(kv_rows, self.mask.k_chunk)
        return xla.backward_step(
            q, k, v, do, lse, delta, q_idx, kv_idx, q_seg, kv_seg, dq, self.mask
        )

    def kv_grad(self, dkv) -> jax.Array:
        return xla.unchunk_kv(dkv)

    def q_grad(self, ctx, dq) -> jax.Array:
        scale = ctx[-1]  # the chunk loops saw pre-scaled queries
        return xla.unchunk_q(dq) * scale


@dataclasses.dataclass(frozen=True)
class PallasStep:
    """A ring step as fused Pallas kernel calls (`attention.kernel = pallas`); a
    `ring_driver.StepKernel`."""

    mask: MaskSpec
    choice: PallasChoice

    def _setup(self, q_btnh, k_btkh, v_btkh, seg_bt, q_rows):
        spec = pallas.kernel_spec(
            causal=self.mask.causal,
            head_dim=q_btnh.shape[3],
            has_segments=seg_bt is not None,
            block_q=self.choice.block_q,
            block_k=self.choice.block_k,
            blocks=self.choice.blocks,
        )
        block = (pallas.heads_major(k_btkh), pallas.heads_major(v_btkh), pallas.segments(seg_bt))
        q_pos = self._positions(q_rows)
        return (spec, pallas.heads_major(q_btnh), q_pos, pallas.segments(seg_bt)), block

    def _positions(self, rows):
        return pallas.positions(rows, self.mask.causal_block_size)

    def forward_setup(self, q_btnh, k_btkh, v_btkh, seg_bt, q_rows) -> tuple[Any, Any]:
        return self._setup(q_btnh, k_btkh, v_btkh, seg_bt, q_rows)

    def forward_init(self, ctx) -> Any:
        return None  # the first step's (out, lse) starts the merge: no merge with zeros

    def forward(self, ctx, acc, block, kv_rows) -> Any:
        (spec, q, q_pos, q_seg), (k, v, kv_seg) = ctx, block
        kv_pos = self._positions(kv_rows)
        o, lse = flash_forward(q, k, v, q_pos, kv_pos, q_seg, kv_seg, spec, out_dtype=jnp.float32)
        return (o, lse) if acc is None else merge(*acc, o, lse)

    def forward_output(self, ctx, acc) -> tuple[jax.Array, jax.Array]:
        o, lse = acc
        return pallas.rows_major(o), lse[:, :, 0, :]

    def backward_setup(
        self, q_btnh, k_btkh, v_btkh, seg_bt, out_btnh, lse_bnt, do_btnh, q_rows
    ) -> tuple[Any, Any, jax.Array]:
        (spec, q, q_pos, q_seg), block = self._setup(q_btnh, k_btkh, v_btkh, seg_bt, q_rows)
        do = pallas.heads_major(do_btnh)
        delta = pallas.row_delta(do, pallas.heads_major(out_btnh))
        ctx = (spec, q, q_pos, q_seg, do, lse_bnt[:, :, None, :], delta)
        return ctx, block, jnp.zeros(q.shape, jnp.float32)

    def backward(self, ctx, dq, block, kv_rows) -> tuple[jax.Array, jax.Array, jax.Array]:
        (spec, q, q_pos, q_seg, do, lse, delta), (k, v, kv_seg) = ctx, block
        kv_pos = self._positions(kv_rows)
        dq_s, dk, dv = flash_backward(q, k, v, do, lse, delta, q_pos, kv_pos, q_seg, kv_seg, spec)
        return dq + dq_s, dk, dv

    def kv_grad(self, dkv) -> jax.Array:
        return pallas.rows_major(dkv)

    def q_grad(self, ctx, dq) -> jax.Array:
        return pallas.rows_major(dq)  # the kernels apply the scale themselves
