"""Ring attention: blockwise attention with the sequence sharded over the `sp` mesh axis.

Each device keeps its queries and passes its key/value block (num_kv_heads wide, never repeated to
num_heads) to its ring neighbour with `ppermute`; after N steps every query has seen every block.
The send of the next block is issued at the top of each step and depends only on the block being
held, so XLA may overlap it with the step's compute. The backward pass travels the ring the same
way: dK/dV accumulators ride along with their K/V block and arrive home after the last step.

Rows may be stored in any layout of lwm/attention/layout.py (zigzag by default): each device derives
the natural indices of its own rows and of the block it holds from the layout, so causal,
block-causal and segment masks are exact and fully masked chunk pairs are skipped (with zigzag,
every device does the same work at every step).

Batch is sharded over dp x fsdp and heads over tp, from the logical-axis rules. When the kv heads
do not divide tp (e.g. 2 kv heads, tp=4) K/V stay replicated over tp and each device takes the kv
heads its query heads need; their gradients are summed over tp.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from lwm.attention import AttentionOp, check_ffn_chunk, mesh_sp
from lwm.attention.blockwise import (
    MaskSpec,
    backward_step,
    check_heads,
    chunk_kv,
    chunk_q,
    chunk_rows,
    chunk_stats,
    finalize,
    forward_step,
    init_state,
    resolve_chunk,
    row_delta,
    unchunk_kv,
    unchunk_q,
    unchunk_stats,
)
from lwm.attention.flash_ops import choose_kernel, usable_kernel
from lwm.attention.layout import SP, check_layout, check_length, natural_positions
from lwm.attention.layout import from_layout as _from_layout
from lwm.attention.layout import to_layout as _to_layout
from lwm.errors import ConfigError
from lwm.sharding.rules import logical_to_spec


@dataclasses.dataclass(frozen=True)
class RingPlan:
    """Everything static about one ring-attention call (hashable: a custom_vjp static argument)."""

    mask: MaskSpec
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
    kernel: Any = None
    """A flash_ops.PallasChoice to run each step with the Pallas kernels; None = the xla chunks."""

    @property
    def head_shards(self) -> int:
        if self.heads_spec is None:
            return 1
        axes = (self.heads_spec,) if isinstance(self.heads_spec, str) else self.heads_spec
        return math.prod(self.mesh.shape[a] for a in axes)

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


def _ring_forward_local(q_btnh, k_btkh, v_btkh, seg_bt, *, plan: RingPlan):
    mask = plan.mask
    heads = _kv_head_index(plan, q_btnh.shape[2])
    if heads is not None:
        k_btkh, v_btkh = jnp.take(k_btkh, heads, axis=2), jnp.take(v_btkh, heads, axis=2)
    length, kv_heads, scale = q_btnh.shape[1], k_btkh.shape[2], q_btnh.shape[3] ** -0.5
    me = _shard_index(plan)
    q = chunk_q(q_btnh * jnp.asarray(scale, q_btnh.dtype), kv_heads, mask.q_chunk)
    q_idx = chunk_rows(natural_positions(plan.layout, me, length, plan.sp), mask.q_chunk)
    q_seg = chunk_rows(seg_bt, mask.q_chunk)

    def attend(state, block, step):
        k, v, kv_seg = block
        src = (me - step) % plan.sp
        kv_idx = chunk_rows(natural_positions(plan.layout, src, length, plan.sp), mask.k_chunk)
        return forward_step(q, k, v, q_idx, kv_idx, q_seg, kv_seg, state, mask)

    def body(carry, step):
        state, block = carry
        incoming = _rotate(block, plan)  # independent of this step's compute
        return (attend(state, block, step), incoming), None

    block = (chunk_kv(k_btkh, mask.k_chunk), chunk_kv(v_btkh, mask.k_chunk))
    block = (*block, chunk_rows(seg_bt, mask.k_chunk))
    state = init_state(q)
    if plan.sp > 1:
        (state, block), _ = lax.scan(body, (state, block), jnp.arange(plan.sp - 1))
    state = attend(state, block, plan.sp - 1)
    o, lse = finalize(state)
    return unchunk_q(o).astype(q_btnh.dtype), unchunk_stats(lse)


def _ring_backward_local(q_btnh, k_btkh, v_btkh, seg_bt, out_btnh, lse_bnt, do_btnh, *, plan):
    mask = plan.mask
    full_k_btkh = k_btkh
    heads = _kv_head_index(plan, q_btnh.shape[2])
    if heads is not None:
        k_btkh, v_btkh = jnp.take(k_btkh, heads, axis=2), jnp.take(v_btkh, heads, axis=2)
    length, kv_heads, scale = q_btnh.shape[1], k_btkh.shape[2], q_btnh.shape[3] ** -0.5
    me = _shard_index(plan)
    q = chunk_q(q_btnh * jnp.asarray(scale, q_btnh.dtype), kv_heads, mask.q_chunk)
    do = chunk_q(do_btnh, kv_heads, mask.q_chunk)
    delta = row_delta(do, chunk_q(out_btnh, kv_heads, mask.q_chunk))
    lse = chunk_stats(lse_bnt, kv_heads, mask.q_chunk)
    q_idx = chunk_rows(natural_positions(plan.layout, me, length, plan.sp), mask.q_chunk)
    q_seg = chunk_rows(seg_bt, mask.q_chunk)

    def attend(dq, block, step):
        k, v, kv_seg = block
        src = (me - step) % plan.sp
        kv_idx = chunk_rows(natural_positions(plan.layout, src, length, plan.sp), mask.k_chunk)
        return backward_step(q, k, v, do, lse, delta, q_idx, kv_idx, q_seg, kv_seg, dq, mask)

    def body(carry, step):
        dq, block, grads = carry
        incoming = _rotate(block, plan)  # independent of this step's compute
        dq, dk, dv = attend(dq, block, step)
        grads = _rotate((grads[0] + dk, grads[1] + dv), plan)  # travel with their block
        return (dq, incoming, grads), None

    block = (chunk_kv(k_btkh, mask.k_chunk), chunk_kv(v_btkh, mask.k_chunk))
    block = (*block, chunk_rows(seg_bt, mask.k_chunk))
    dq = jnp.zeros(q.shape, jnp.float32)
    grads = (jnp.zeros(block[0].shape, jnp.float32), jnp.zeros(block[0].shape, jnp.float32))
    if plan.sp > 1:
        (dq, block, grads), _ = lax.scan(body, (dq, block, grads), jnp.arange(plan.sp - 1))
    dq, dk, dv = attend(dq, block, plan.sp - 1)
    grads = (grads[0] + dk, grads[1] + dv)
    if plan.sp > 1:
        grads = _rotate(grads, plan)  # the last hop brings them home
    dk_btkh, dv_btkh = unchunk_kv(grads[0]), unchunk_kv(grads[1])
    if heads is not None:  # scatter into all kv heads, then sum the tp shards' contributions
        zeros = jnp.zeros(full_k_btkh.shape, jnp.float32)
        dk_btkh = lax.psum(zeros.at[:, :, heads].add(dk_btkh), plan.heads_spec)
        dv_btkh = lax.psum(zeros.at[:, :, heads].add(dv_btkh), plan.heads_spec)
    dq_btnh = (unchunk_q(dq) * scale).astype(q_btnh.dtype)
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


def _local_fns(plan: RingPlan):
    """The per-device (forward, backward) of the plan's kernel: the one dispatch point."""
    if plan.kernel is None:
        return _ring_forward_local, _ring_backward_local
    from lwm.attention import ring_flash

    return ring_flash.forward_local, ring_flash.backward_local


def _ring_fwd(q, k, v, seg, plan: RingPlan):
    qs, kvs, segs, lses = _specs(plan)
    out, lse = _on_mesh(_local_fns(plan)[0], plan, (qs, kvs, kvs, segs), (qs, lses), (q, k, v, seg))
    return out, (q, k, v, seg, out, lse)


def _ring_bwd(plan: RingPlan, res, dout):
    qs, kvs, segs, lses = _specs(plan)
    dq, dk, dv = _on_mesh(
        _local_fns(plan)[1],
        plan,
        (qs, kvs, kvs, segs, qs, lses, qs),
        (qs, kvs, kvs),
        (*res, dout),
    )
    return dq, dk, dv, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring_attention(q, k, v, seg, plan: RingPlan):
    return _ring_fwd(q, k, v, seg, plan)[0]


_ring_attention.defvjp(_ring_fwd, _ring_bwd)


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
    batch_spec = heads_spec = kv_heads_spec = None
    if mesh is not None:
        batch_spec = logical_to_spec(("batch",), (b,), mesh)[0]
        heads_spec = logical_to_spec(("act_heads",), (n,), mesh)[0]
        if heads_spec is not None:
            kv_spec = logical_to_spec(("act_kv_heads",), (kv_heads,), mesh)[0]
            kv_heads_spec = kv_spec if kv_spec == heads_spec else None
    return RingPlan(
        mask, layout, sp, n, kv_heads, mesh, batch_spec, heads_spec, kv_heads_spec, kernel
    )


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
    `kernel` (a flash_ops.PallasChoice) runs each ring step with the fused Pallas kernels."""
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
    return _ring_attention(q_btnh, k_btkh, v_btkh, segment_ids_bt, plan)


@dataclasses.dataclass(frozen=True)
class RingAttentionOp(AttentionOp):
    """Ring attention over mesh axis `sp`; inputs and outputs in `config.layout` order."""

    def check(self, seq_len: int, mesh: Any = None) -> None:
        cfg = self.config
        check_layout(cfg.layout)
        sp = mesh_sp(self.mesh if mesh is None else mesh)
        ring_chunks(seq_len, sp, cfg.layout, cfg.query_chunk_size, cfg.key_chunk_size)
        check_ffn_chunk(seq_len, sp, cfg.ffn_chunk_size)

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
