"""The ring schedule of ring attention, once, for any per-step kernel.

Each device keeps its queries and passes its key/value block (num_kv_heads wide, never repeated to
num_heads) to its ring neighbour with `ppermute`; after N steps every query has seen every block.
The send of the next block is issued at the top of each step and depends only on the block being
held, so XLA may overlap it with the step's compute. The backward pass travels the ring the same
way: dK/dV accumulators ride along with their K/V block and arrive home after the last step.

What one step computes is the plan's `kernel` (a `StepKernel`, lwm/attention/ring_steps.py: the
xla chunk loops or the fused Pallas kernels); this module owns everything around it: the shard
index, the natural positions of the rows held (from the layout), the rotation, the kv-head slicing
over tp, the custom VJP and the shard_map.

When the kv heads do not divide tp (e.g. 2 kv heads, tp=4) K/V stay replicated over tp and each
device takes the kv heads its query heads need; their gradients are summed over tp.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from lwm.attention.layout import SP, natural_positions


class StepKernel(Protocol):
    """How one ring step attends the local queries to the key/value block held. Hashable (part of
    the static RingPlan). `ctx`, the blocks and the accumulators are the kernel's own layouts; row
    positions (`q_rows`, `kv_rows`: [T] natural indices) come from the driver."""

    def forward_setup(self, q_btnh, k_btkh, v_btkh, seg_bt, q_rows) -> tuple[Any, Any]:
        """(ctx, block): the queries prepared once, and the (k, v, segment ids) block to rotate."""
        ...

    def forward_init(self, ctx) -> Any:
        """The accumulator before the first block, or None: the first step's result starts it."""
        ...

    def forward(self, ctx, acc, block, kv_rows) -> Any:
        """`acc` (None: nothing yet) with the held block attended."""
        ...

    def forward_output(self, ctx, acc) -> tuple[jax.Array, jax.Array]:
        """(out [B, T, N, H], any dtype; lse [B, N, T] fp32) from the final accumulator."""
        ...

    def backward_setup(
        self, q_btnh, k_btkh, v_btkh, seg_bt, out_btnh, lse_bnt, do_btnh, q_rows
    ) -> tuple[Any, Any, jax.Array]:
        """(ctx, block, dq): as forward_setup, plus the zero fp32 dq accumulator."""
        ...

    def backward(self, ctx, dq, block, kv_rows) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(dq updated, dk, dv of the held block) in fp32, from the final lse."""
        ...

    def kv_grad(self, dkv) -> jax.Array:
        """A block's dk or dv -> [B, T, K, H] fp32."""
        ...

    def q_grad(self, ctx, dq) -> jax.Array:
        """The dq accumulator -> [B, T, N, H] w.r.t. the unscaled queries."""
        ...


@dataclasses.dataclass(frozen=True)
class RingPlan:
    """Everything static about one ring-attention call (hashable: a custom_vjp static argument)."""

    kernel: StepKernel
    """What each ring step runs (ring_steps.XlaStep or ring_steps.PallasStep)."""
    layout: str
    sp: int
    num_heads: int
    num_kv_heads: int
    mesh: Any = None
    batch_spec: Any = None
    heads_spec: Any = None
    """Mesh axis (or axes) of the query heads; None = heads not sharded."""
    kv_heads_spec: Any = None
    """Mesh axis of the kv heads; None with heads_spec set = kv replicated, sliced per device."""

    @property
    def slices_kv(self) -> bool:
        return self.heads_spec is not None and self.kv_heads_spec is None


# ----------------------------------------------------------------------------- per-device work


def _kv_head_index(plan: RingPlan, n_local: int) -> jax.Array | None:
    """kv heads needed by this device's query heads when K/V are replicated over tp."""
    if not plan.slices_kv:
        return None
    g = plan.num_heads // plan.num_kv_heads
    first = lax.axis_index(plan.heads_spec) * n_local
    # (whole groups per device would mean kv heads divide tp: then they are sharded, not sliced)
    if g % n_local == 0:  # all local query heads share one kv head
        return (first // g)[None]
    return (first + jnp.arange(n_local)) // g  # irregular split: one kv head per query head


def _shard_index(plan: RingPlan):
    return lax.axis_index(SP) if plan.sp > 1 else 0


def _rotate(xs, plan: RingPlan):
    """Sends every array to the next device on the ring (None leaves pass through)."""
    perm = [(i, (i + 1) % plan.sp) for i in range(plan.sp)]
    return jax.tree.map(lambda x: lax.ppermute(x, SP, perm), xs)


def _local_kv(plan: RingPlan, q_btnh, k_btkh, v_btkh):
    heads = _kv_head_index(plan, q_btnh.shape[2])
    if heads is not None:
        k_btkh, v_btkh = jnp.take(k_btkh, heads, axis=2), jnp.take(v_btkh, heads, axis=2)
    return heads, k_btkh, v_btkh


def forward_local(q_btnh, k_btkh, v_btkh, seg_bt, *, plan: RingPlan):
    """Per-device forward: (out [B, T, N, H] in q's dtype, lse [B, N, T])."""
    kernel = plan.kernel
    _, k_btkh, v_btkh = _local_kv(plan, q_btnh, k_btkh, v_btkh)
    length, me = q_btnh.shape[1], _shard_index(plan)

    def rows(shard):
        return natural_positions(plan.layout, shard, length, plan.sp)

    ctx, block = kernel.forward_setup(q_btnh, k_btkh, v_btkh, seg_bt, rows(me))

    def attend(acc, block, step):
        return kernel.forward(ctx, acc, block, rows((me - step) % plan.sp))

    def body(carry, step):
        acc, block = carry
        incoming = _rotate(block, plan)  # independent of this step's compute
        return (attend(acc, block, step), incoming), None

    acc, first = kernel.forward_init(ctx), 0
    if acc is None and plan.sp > 1:  # the first block's result starts the accumulator
        incoming = _rotate(block, plan)
        acc, block, first = attend(None, block, 0), incoming, 1
    if plan.sp - 1 > first:
        (acc, block), _ = lax.scan(body, (acc, block), jnp.arange(first, plan.sp - 1))
    out_btnh, lse_bnt = kernel.forward_output(ctx, attend(acc, block, plan.sp - 1))
    return out_btnh.astype(q_btnh.dtype), lse_bnt


def backward_local(q_btnh, k_btkh, v_btkh, seg_bt, out_btnh, lse_bnt, do_btnh, *, plan):
    """Per-device backward: (dq, dk, dv) in the inputs' dtypes."""
    kernel = plan.kernel
    full_k_btkh = k_btkh
    heads, k_btkh, v_btkh = _local_kv(plan, q_btnh, k_btkh, v_btkh)
    length, me = q_btnh.shape[1], _shard_index(plan)

    def rows(shard):
        return natural_positions(plan.layout, shard, length, plan.sp)

    ctx, block, dq = kernel.backward_setup(
        q_btnh, k_btkh, v_btkh, seg_bt, out_btnh, lse_bnt, do_btnh, rows(me)
    )

    def attend(dq, block, step):
        return kernel.backward(ctx, dq, block, rows((me - step) % plan.sp))

    def body(carry, step):
        dq, block, grads = carry
        incoming = _rotate(block, plan)  # independent of this step's compute
        dq, dk, dv = attend(dq, block, step)
        grads = _rotate((grads[0] + dk, grads[1] + dv), plan)  # travel with their block
        return (dq, incoming, grads), None

    grads = (jnp.zeros(block[0].shape, jnp.float32), jnp.zeros(block[0].shape, jnp.float32))
    if plan.sp > 1:
        (dq, block, grads), _ = lax.scan(body, (dq, block, grads), jnp.arange(plan.sp - 1))
    dq, dk, dv = attend(dq, block, plan.sp - 1)
    grads = (grads[0] + dk, grads[1] + dv)
    if plan.sp > 1:
        grads = _rotate(grads, plan)  # the last hop brings them home
    dk_btkh, dv_btkh = kernel.kv_grad(grads[0]), kernel.kv_grad(grads[1])
    if heads is not None:  # scatter into all kv heads, then sum the tp shards' contributions
        zeros = jnp.zeros(full_k_btkh.shape, jnp.float32)
        dk_btkh = lax.psum(zeros.at[:, :, heads].add(dk_btkh), plan.heads_spec)
        dv_btkh = lax.psum(zeros.at[:, :, heads].add(dv_btkh), plan.heads_spec)
    dq_btnh = kernel.q_grad(ctx, dq).astype(q_btnh.dtype)
    return dq_btnh, dk_btkh.astype(k_btkh.dtype), dv_btkh.astype(v_btkh.dtype)


# ----------------------------------------------------------------------------- global functions


def _specs(plan: RingPlan):
    seq = SP if plan.mesh is not None and SP in plan.mesh.shape else None
    q = P(plan.batch_spec, seq, plan.heads_spec, None)
    kv = P(plan.batch_spec, seq, plan.kv_heads_spec, None)
    return q, kv, P(plan.batch_spec, seq), P(plan.batch_spec, plan.heads_spec, seq)


def _on_mesh(fn, plan: RingPlan, in_specs, out_specs, args):
    """Runs `fn` per device under shard_map (directly when there is no mesh); None args (no
    segment ids) are bound statically."""
    present = [i for i, a in enumerate(args) if a is not None]

    def local(*xs):
        full = [None] * len(args)
        for i, x in zip(present, xs):
            full[i] = x
        return fn(*full, plan=plan)

    xs = [args[i] for i in present]
    if plan.mesh is None:
        return local(*xs)
    specs = tuple(in_specs[i] for i in present)
    return jax.shard_map(
        local, mesh=plan.mesh, in_specs=specs, out_specs=out_specs, check_vma=False
    )(*xs)


def _ring_fwd(q, k, v, seg, plan: RingPlan):
    qs, kvs, segs, lses = _specs(plan)
    out, lse = _on_mesh(forward_local, plan, (qs, kvs, kvs, segs), (qs, lses), (q, k, v, seg))
    return out, (q, k, v, seg, out, lse)


def _ring_bwd(plan: RingPlan, res, dout):
    qs, kvs, segs, lses = _specs(plan)
    dq, dk, dv = _on_mesh(
        backward_local,
        plan,
        (qs, kvs, kvs, segs, qs, lses, qs),
        (qs, kvs, kvs),
        (*res, dout),
    )
    return dq, dk, dv, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def ring_attention_core(q_btnh, k_btkh, v_btkh, segment_ids_bt, plan: RingPlan) -> jax.Array:
    """Ring attention on global arrays in the plan's layout; inputs validated by `make_plan`."""
    return _ring_fwd(q_btnh, k_btkh, v_btkh, segment_ids_bt, plan)[0]


ring_attention_core.defvjp(_ring_fwd, _ring_bwd)
