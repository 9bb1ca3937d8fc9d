"""Hybrid sequence parallelism: all-to-all inside groups of U devices x a zigzag ring across them.

`mesh.sp = N` devices form an R x U grid (`attention.ulysses = U`, R = N / U; lwm.sharding.mesh
`sp_grid`: ring axis `sp` outer, all-to-all axis `ulysses` inner, so a group is adjacent devices,
one node). The sequence is laid out for a ring of R shards (`to_layout(..., ring=R)`: zigzag by
default), ring shard r spread over the U devices of group r. Per device, inside one shard_map:
  1. all-to-all over `ulysses` (lwm/attention/ulysses.py `seq_to_heads`): the group's whole ring
     block (U times the device's rows) for N / U of the heads, kv heads replicated as Ulysses does
     when U exceeds them;
  2. lwm's ring attention over `sp` on that block (lwm/attention/ring_driver.py's per-device
     forward and backward, with the step kernel `attention.kernel` picks), K/V rotating R - 1
     times between groups;
  3. all-to-all back.
U = N is Ulysses (a ring of one), U = 1 the ring. Bytes per device per layer, forward (e bytes per
element, L = T / N rows, K' = max(K, U) kv heads sent, all over tp): all-to-alls
(U-1)/U x B L H e x (2N_heads + 2K'), ring (R-1) x 2 (K'/U) x U L B H e = (R-1) x 2K' B L H e;
backward about twice the ring term plus the same all-to-alls. The ring steps are U times longer and
R instead of N, so latency hides behind U^2 times more compute per step.

With `mesh.sp = 1` the op is single-device blockwise attention (no group to split).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from lwm.attention.base import mesh_sp, register_backend
from lwm.attention.blockwise import blockwise_chunks
from lwm.attention.layout import check_layout, check_length
from lwm.attention.layout import from_layout as _from_layout
from lwm.attention.layout import to_layout as _to_layout
from lwm.attention.pallas.ops import choose_kernel
from lwm.attention.ring import make_plan, ring_chunks
from lwm.attention.ring_driver import RingPlan, backward_local, forward_local
from lwm.attention.ulysses import UlyssesAttentionOp, head_split, heads_to_seq, seq_to_heads
from lwm.errors import ConfigError
from lwm.sharding.mesh import ULYSSES, sp_grid
from lwm.sharding.rules import logical_to_spec

HYBRID_LAYOUTS = ("zigzag", "contiguous")


def hybrid_grid(sp: int, ulysses: int) -> tuple[int, int]:
    """(ring R, all-to-all group U) of `sp` devices; one-line ConfigErrors for a bad U."""
    if ulysses < 1:
        raise ConfigError(
            "attention.backend=hybrid needs attention.ulysses, the all-to-all group size "
            f"(a divisor of mesh.sp = {sp}), e.g. --config.model.attention.ulysses=4"
        )
    if sp % ulysses:
        raise ConfigError(f"attention.ulysses = {ulysses} does not divide mesh.sp = {sp}")
    return sp // ulysses, ulysses


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring_local(q_btnh, k_btkh, v_btkh, seg_bt, plan: RingPlan):
    """lwm's ring over mesh axis `sp`, per device (inside the caller's shard_map)."""
    return forward_local(q_btnh, k_btkh, v_btkh, seg_bt, plan=plan)[0]


def _ring_local_fwd(q_btnh, k_btkh, v_btkh, seg_bt, plan):
    out, lse = forward_local(q_btnh, k_btkh, v_btkh, seg_bt, plan=plan)
    return out, (q_btnh, k_btkh, v_btkh, seg_bt, out, lse)


def _ring_local_bwd(plan, res, dout):
    return (*backward_local(*res, dout, plan=plan), None)


_ring_local.defvjp(_ring_local_fwd, _ring_local_bwd)


def _hybrid_local(q, k, v, seg, *, plan: RingPlan, group: int, repeat: int):
    q, k, v, seg = seq_to_heads(q, k, v, seg, axis=ULYSSES, group=group, repeat=repeat)
    return heads_to_seq(_ring_local(q, k, v, seg, plan), axis=ULYSSES)


@register_backend("hybrid")
@dataclasses.dataclass(frozen=True)
class HybridAttentionOp(UlyssesAttentionOp):
    """All-to-all over `attention.ulysses` devices x a ring over the rest of `sp`; inputs and
    outputs in the ring's `config.layout` order (zigzag or contiguous)."""

    def grid(self, mesh: Any = None) -> tuple[int, int]:
        """(ring R, all-to-all group U) on `mesh` (default: the op's own); (1, 1) without sp."""
        sp = mesh_sp(self.mesh if mesh is None else mesh)
        return (1, 1) if sp == 1 else hybrid_grid(sp, self.config.ulysses)

    def check(self, seq_len: int, mesh: Any = None) -> None:
        cfg = self.config
        mesh = self.mesh if mesh is None else mesh
        sp = mesh_sp(mesh)
        if seq_len % sp:
            raise ConfigError(f"seq_len {seq_len} not divisible by sp = {sp}")
        check_layout(cfg.layout)
        if sp == 1:
            blockwise_chunks(seq_len, cfg.query_chunk_size, cfg.key_chunk_size)
            return
        ring, _ = self.grid(mesh)
        if cfg.layout not in HYBRID_LAYOUTS:
            raise ConfigError(
                f"attention.layout {cfg.layout!r} with backend hybrid; expected one of "
                f"{HYBRID_LAYOUTS}"
            )
        check_length(cfg.layout, seq_len, sp)  # whole half-blocks per device move in to_layout
        ring_chunks(seq_len, ring, cfg.layout, cfg.query_chunk_size, cfg.key_chunk_size)

    def check_heads(self, num_heads: int, num_kv_heads: int, mesh: Any = None) -> None:
        mesh = self.mesh if mesh is None else mesh
        head_split(num_heads, num_kv_heads, self.grid(mesh)[1], mesh)

    def __call__(self, q_btnh, k_btkh, v_btkh, segment_ids_bt=None) -> jax.Array:
        cfg = self.config
        b, t, n, h = q_btnh.shape
        self.check(t)
        ring, group = self.grid()
        if ring * group == 1:
            return self.attend_local(q_btnh, k_btkh, v_btkh, segment_ids_bt)
        split = head_split(n, k_btkh.shape[2], group, self.mesh)
        tp = 1 if split.heads_spec is None else self.mesh.shape[split.heads_spec]
        kv_heads = k_btkh.shape[2] // tp * split.kv_repeat // group
        plan = make_plan(
            (b, t, n // tp // group, h),
            (b, t, kv_heads, h),
            causal=self.causal,
            causal_block_size=cfg.causal_block_size,
            query_chunk_size=cfg.query_chunk_size,
            key_chunk_size=cfg.key_chunk_size,
            layout=cfg.layout,
            mesh=AbstractMesh((ring,), ("sp",)),  # the ring's view: `sp` = R, heads local
            kernel=choose_kernel(cfg, self.mesh),
        )
        mesh = sp_grid(self.mesh, group)
        batch = logical_to_spec(("batch",), (b,), mesh)[0]
        seq = ("sp", ULYSSES)
        qs = P(batch, seq, split.heads_spec, None)
        kvs = P(batch, seq, split.kv_heads_spec, None)
        fn = functools.partial(_hybrid_local, plan=plan, group=group, repeat=split.kv_repeat)
        if segment_ids_bt is None:
            fn, args, specs = functools.partial(fn, seg=None), (q_btnh, k_btkh, v_btkh), ()
        else:
            seg = segment_ids_bt.astype(jnp.int32)
            args, specs = (q_btnh, k_btkh, v_btkh, seg), (P(batch, seq),)
        return jax.shard_map(
            fn, mesh=mesh, in_specs=(qs, kvs, kvs, *specs), out_specs=qs, check_vma=False
        )(*args)

    def to_layout(self, x, axis: int = 1):
        return _to_layout(x, self.config.layout, self.mesh, axis, ring=self.grid()[0])

    def from_layout(self, x, axis: int = 1):
        return _from_layout(x, self.config.layout, self.mesh, axis, ring=self.grid()[0])
