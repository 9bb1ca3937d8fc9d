"""Ring attention's per-device work with the fused Pallas kernels (`attention.kernel = pallas`).

Same ring as lwm/attention/ring.py (same rotation, same layouts, same kv-head slicing over tp);
each ring step is one forward kernel call returning (out, lse) for the held key/value block, merged
into the running (out, lse) in fp32. Backward: one dQ and one dK/dV kernel call per step, from the
final lse and delta, so step gradients add; dK/dV travel with their block as in the xla path.
Arrays are head-major ([B, N, T, H]) for the whole ring, so each step is a kernel call only.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from lwm.attention.flash_call import flash_backward, flash_forward, merge
from lwm.attention.flash_ops import (
    heads_major,
    kernel_spec,
    positions,
    row_delta,
    rows_major,
    segments,
)
from lwm.attention.layout import natural_positions
from lwm.attention.ring import RingPlan, _kv_head_index, _rotate, _shard_index


def _setup(plan: RingPlan, q_btnh, k_btkh, v_btkh, seg_bt):
    heads = _kv_head_index(plan, q_btnh.shape[2])
    if heads is not None:
        k_btkh, v_btkh = jnp.take(k_btkh, heads, axis=2), jnp.take(v_btkh, heads, axis=2)
    mask, choice = plan.mask, plan.kernel
    spec = kernel_spec(
        causal=mask.causal,
        head_dim=q_btnh.shape[3],
        has_segments=seg_bt is not None,
        block_q=choice.block_q,
        block_k=choice.block_k,
        blocks=choice.blocks,
    )
    length, me = q_btnh.shape[1], _shard_index(plan)

    def pos(shard):
        return positions(
            natural_positions(plan.layout, shard, length, plan.sp), mask.causal_block_size
        )

    block = (heads_major(k_btkh), heads_major(v_btkh), segments(seg_bt))
    return heads, spec, me, pos, block


def forward_local(q_btnh, k_btkh, v_btkh, seg_bt, *, plan: RingPlan):
    """Per-device forward: (out [B, T, N, H], lse [B, N, T])."""
    _, spec, me, pos, block = _setup(plan, q_btnh, k_btkh, v_btkh, seg_bt)
    q, q_pos, q_seg = heads_major(q_btnh), pos(me), segments(seg_bt)

    def attend(acc, block, step):
        k, v, kv_seg = block
        kv_pos = pos((me - step) % plan.sp)
        o, lse = flash_forward(q, k, v, q_pos, kv_pos, q_seg, kv_seg, spec, out_dtype=jnp.float32)
        return (o, lse) if acc is None else merge(*acc, o, lse)

    def body(carry, step):
        acc, block = carry
        incoming = _rotate(block, plan)  # independent of this step's compute
        return (attend(acc, block, step), incoming), None

    acc = None
    if plan.sp > 1:
        incoming = _rotate(block, plan)
        acc, block = attend(None, block, 0), incoming
        if plan.sp > 2:
            (acc, block), _ = lax.scan(body, (acc, block), jnp.arange(1, plan.sp - 1))
    o, lse = attend(acc, block, plan.sp - 1)
    return rows_major(o).astype(q_btnh.dtype), lse[:, :, 0, :]


def backward_local(q_btnh, k_btkh, v_btkh, seg_bt, out_btnh, lse_bnt, do_btnh, *, plan):
    """Per-device backward: (dq, dk, dv) in the inputs' dtypes."""
    full_k_btkh = k_btkh
    heads, spec, me, pos, block = _setup(plan, q_btnh, k_btkh, v_btkh, seg_bt)
    q, do, q_pos, q_seg = heads_major(q_btnh), heads_major(do_btnh), pos(me), segments(seg_bt)
    delta = row_delta(do, heads_major(out_btnh))
    lse = lse_bnt[:, :, None, :]

    def attend(dq, block, step):
        k, v, kv_seg = block
        kv_pos = pos((me - step) % plan.sp)
        dq_s, dk, dv = flash_backward(q, k, v, do, lse, delta, q_pos, kv_pos, q_seg, kv_seg, spec)
        return dq + dq_s, dk, dv

    def body(carry, step):
        dq, block, grads = carry
        incoming = _rotate(block, plan)  # independent of this step's compute
        dq, dk, dv = attend(dq, block, step)
        grads = _rotate((grads[0] + dk, grads[1] + dv), plan)  # travel with their block
        return (dq, incoming, grads), None

    dq = jnp.zeros(q.shape, jnp.float32)
    grads = (jnp.zeros(block[0].shape, jnp.float32), jnp.zeros(block[0].shape, jnp.float32))
    if plan.sp > 1:
        (dq, block, grads), _ = lax.scan(body, (dq, block, grads), jnp.arange(plan.sp - 1))
    dq, dk, dv = attend(dq, block, plan.sp - 1)
    grads = (grads[0] + dk, grads[1] + dv)
    if plan.sp > 1:
        grads = _rotate(grads, plan)  # the last hop brings them home
    dk_btkh, dv_btkh = rows_major(grads[0]), rows_major(grads[1])
    if heads is not None:  # scatter into all kv heads, then sum the tp shards' contributions
        zeros = jnp.zeros(full_k_btkh.shape, jnp.float32)
        dk_btkh = lax.psum(zeros.at[:, :, heads].add(dk_btkh), plan.heads_spec)
        dv_btkh = lax.psum(zeros.at[:, :, heads].add(dv_btkh), plan.heads_spec)
    dq_btnh = rows_major(dq).astype(q_btnh.dtype)
    return dq_btnh, dk_btkh.astype(k_btkh.dtype), dv_btkh.astype(v_btkh.dtype)
