"""Ulysses attention: all-to-all from sequence-sharded to head-sharded, local attention, back.

Inside `shard_map` over the `sp` devices (P of them, each holding T / P rows of every head), one
all-to-all turns q, k, v into the whole sequence for N / P query heads, each device attends with
the blockwise kernel (the Pallas kernel when `attention.kernel` picks it), and a second all-to-all
returns the output to sequence sharding. Rows stay in natural order (no layout permutation), so
causal, block-causal and segment masks are those of single-device attention; segment ids, one
int32 per token, are all-gathered.

GQA: a device's query heads need their kv heads. With K kv heads (per tp shard) and a group of P:
  - K % P == 0: kv heads split like the query heads (K / P per device);
  - P % K == 0: each kv head is repeated P / K times before the all-to-all, so each device gets
    the one kv head its query heads share (as DeepSpeed-Ulysses and Megatron do);
  - otherwise (and when P does not divide N) `check_heads` refuses.
Bytes sent per device per layer (e = bytes per element, K' = max(K, P) the kv heads sent, all
divided by tp): forward q, k, v in one all-to-all and the output in one: (P-1)/P x B T/P H e x
(2N + 2K'); backward the same again (d_out in; dq, dk, dv out). The ring sends (P-1) x 2K B T/P H e
forward and about twice that backward: Ulysses moves less whenever N + K' < (P-1) K, but is capped
at P <= N; `hybrid` (lwm/attention/hybrid.py) keeps the all-to-all group small and rings the rest.

Gradients: jax transposes an all-to-all into an all-to-all and the blockwise kernel has its own
VJP, so autodiff keeps the memory of the forward's all-to-all outputs only.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from lwm.attention.base import AttentionOp, mesh_sp, register_backend
from lwm.attention.blockwise import blockwise_attention, blockwise_chunks
from lwm.attention.blockwise import check_heads as check_gqa
from lwm.attention.pallas.ops import choose_kernel
from lwm.errors import ConfigError
from lwm.sharding.rules import logical_to_spec


@dataclasses.dataclass(frozen=True)
class HeadSplit:
    """How the heads of one call are split: over tp by the rules table, then by the all-to-all
    group. Static (hashable)."""

    heads_spec: Any
    """Mesh axis of the query heads (tp), or None: heads whole on every device."""
    kv_heads_spec: Any
    """Mesh axis of the kv heads; equal to heads_spec (kv heads not dividing tp: both None)."""
    kv_repeat: int
    """Copies of each local kv head sent by the all-to-all (1: kv heads split over the group)."""


def as_mesh(mesh: Any) -> Any:
    """A Mesh as is; a `{axis: size}` mapping as an AbstractMesh (the rules table reads shapes)."""
    if isinstance(mesh, Mapping):
        return AbstractMesh(tuple(int(s) for s in mesh.values()), tuple(mesh))
    return mesh


def kv_repeat(num_heads: int, num_kv_heads: int, group: int, where: str = "") -> int:
    """Copies of each kv head an all-to-all over `group` devices sends (see the module doc);
    a one-line ConfigError naming the numbers when the heads cannot be split."""
    check_gqa(num_heads, num_kv_heads)
    if num_heads % group:
        raise ConfigError(
            f"{num_heads} query heads{where} not divisible by the all-to-all group of {group} "
            "devices (ulysses and hybrid split heads over it)"
        )
    if num_kv_heads % group == 0:
        return 1
    if group % num_kv_heads == 0:
        return group // num_kv_heads
    raise ConfigError(
        f"{num_kv_heads} kv heads{where} cannot be split over the all-to-all group of {group} "
        "devices: one must divide the other"
    )


def head_split(num_heads: int, num_kv_heads: int, group: int, mesh: Any) -> HeadSplit:
    """Heads over tp where q and kv shard alike (as the rules table says), else whole; then the
    all-to-all group's kv replication. `mesh`: a Mesh, `{axis: size}` or None."""
    heads = kv = None
    mesh = as_mesh(mesh)
    if mesh is not None:
        heads = logical_to_spec(("act_heads",), (num_heads,), mesh)[0]
        kv = logical_to_spec(("act_kv_heads",), (num_kv_heads,), mesh)[0]
        if heads != kv:  # kv heads do not divide tp: keep heads whole on every device
            heads = kv = None
    tp = 1 if heads is None else int(mesh.shape[heads])
    where = f" per tp shard (tp = {tp})" if tp > 1 else ""
    return HeadSplit(heads, kv, kv_repeat(num_heads // tp, num_kv_heads // tp, group, where))


# ----------------------------------------------------------------------------- per device


def seq_to_heads(q_btnh, k_btkh, v_btkh, seg_bt, *, axis: str, group: int, repeat: int):
    """Per device, inside shard_map: rows [B, L, heads, H] of the group's members -> the group's
    L*group rows (members' blocks in axis order) for 1/group of the heads. q, k, v travel in one
    all-to-all; kv heads are repeated `repeat` times first; segment ids are all-gathered."""
    if repeat > 1:
        k_btkh, v_btkh = (jnp.repeat(x, repeat, axis=2) for x in (k_btkh, v_btkh))
    b, length, n, h = q_btnh.shape
    kh = k_btkh.shape[2]
    parts = [x.reshape(b, length, group, -1, h) for x in (q_btnh, k_btkh, v_btkh)]
    qkv = lax.all_to_all(jnp.concatenate(parts, axis=3), axis, 2, 1, tiled=True)
    qkv = qkv.reshape(b, length * group, (n + 2 * kh) // group, h)
    q, k, v = jnp.split(qkv, [n // group, (n + kh) // group], axis=2)
    if seg_bt is not None:
        seg_bt = lax.all_gather(seg_bt, axis, axis=1, tiled=True)
    return q, k, v, seg_bt


def heads_to_seq(out_btnh, *, axis: str) -> jax.Array:
    """The inverse all-to-all of `seq_to_heads` for the output: each member gets its rows back
    for all heads."""
    return lax.all_to_all(out_btnh, axis, 1, 2, tiled=True)


def _ulysses_local(q, k, v, seg, *, op: UlyssesAttentionOp, split: HeadSplit, sp: int):
    q, k, v, seg = seq_to_heads(q, k, v, seg, axis="sp", group=sp, repeat=split.kv_repeat)
    return heads_to_seq(op.attend_local(q, k, v, seg), axis="sp")


# ----------------------------------------------------------------------------- the op


@register_backend("ulysses")
@dataclasses.dataclass(frozen=True)
class UlyssesAttentionOp(AttentionOp):
    """All-to-all attention over mesh axis `sp` (natural layout); heads must split over sp."""

    def check(self, seq_len: int, mesh: Any = None) -> None:
        super().check(seq_len, mesh)
        sp = mesh_sp(self.mesh if mesh is None else mesh)
        if self.config.ulysses not in (0, sp) and sp > 1:
            raise ConfigError(
                f"attention.ulysses = {self.config.ulysses} with backend ulysses, which uses all "
                f"of mesh.sp = {sp}: leave it 0 or use backend hybrid"
            )
        blockwise_chunks(seq_len, self.config.query_chunk_size, self.config.key_chunk_size)

    def check_heads(self, num_heads: int, num_kv_heads: int, mesh: Any = None) -> None:
        mesh = self.mesh if mesh is None else mesh
        head_split(num_heads, num_kv_heads, mesh_sp(mesh), mesh)

    def attend_local(self, q_btnh, k_btkh, v_btkh, seg_bt) -> jax.Array:
        """Attention over a whole (natural-order) sequence on one device."""
        cfg = self.config
        return blockwise_attention(
            q_btnh,
            k_btkh,
            v_btkh,
            seg_bt,
            causal=self.causal,
            causal_block_size=cfg.causal_block_size,
            query_chunk_size=cfg.query_chunk_size,
            key_chunk_size=cfg.key_chunk_size,
            kernel=choose_kernel(cfg, self.mesh),
        )

    def __call__(self, q_btnh, k_btkh, v_btkh, segment_ids_bt=None) -> jax.Array:
        b, t, n, _ = q_btnh.shape
        sp = mesh_sp(self.mesh)
        self.check(t)
        if sp == 1:
            return self.attend_local(q_btnh, k_btkh, v_btkh, segment_ids_bt)
        split = head_split(n, k_btkh.shape[2], sp, self.mesh)
        if segment_ids_bt is not None:
            segment_ids_bt = segment_ids_bt.astype(jnp.int32)
        batch = logical_to_spec(("batch",), (b,), self.mesh)[0]
        qs = P(batch, "sp", split.heads_spec, None)
        kvs = P(batch, "sp", split.kv_heads_spec, None)
        fn = functools.partial(_ulysses_local, op=self, split=split, sp=sp)
        if segment_ids_bt is None:
            fn, args, specs = functools.partial(fn, seg=None), (q_btnh, k_btkh, v_btkh), ()
        else:
            args, specs = (q_btnh, k_btkh, v_btkh, segment_ids_bt), (P(batch, "sp"),)
        return jax.shard_map(
            fn, mesh=self.mesh, in_specs=(qs, kvs, kvs, *specs), out_specs=qs, check_vma=False
        )(*args)
