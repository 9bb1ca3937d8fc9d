"""Attention backends behind one interface, chosen by `AttentionConfig.backend`.

`make_attention(cfg, causal=..., mesh=...)` returns an `AttentionOp`:
  - `op(q_btnh, k_btkh, v_btkh, segment_ids_bt=None) -> out_btnh`, on inputs in the op's layout;
  - `op.to_layout(x, axis=1)` / `op.from_layout(x, axis=1)`: the sequence permutation the op expects
    (identity for `dense`/`blockwise` and for `ring` with the contiguous layout);
  - `op.check(seq_len, mesh)`: the op's shape rules (sp, layout multiple, chunk sizes) as one-line
    ConfigErrors, before any compute. The kernels resolve their chunk sizes through the same
    functions, so the check and the kernel cannot disagree.
The model puts tokens, positions and segment ids into the layout once at entry and restores natural
order once before the output head, so callers always see natural order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from lwm.attention.config import AttentionConfig
from lwm.attention.dense import attention_mask, dense_attention
from lwm.errors import ConfigError

__all__ = [
    "AttentionOp",
    "attention_mask",
    "check_ffn_chunk",
    "dense_attention",
    "make_attention",
    "mesh_sp",
]


def mesh_sp(mesh: Any) -> int:
    """Size of the `sp` axis of a Mesh or of a `{axis: size}` mapping (1 when absent or None)."""
    if mesh is None:
        return 1
    shape = mesh if isinstance(mesh, Mapping) else mesh.shape
    return int(shape.get("sp", 1))


def check_ffn_chunk(seq_len: int, sp: int, chunk: int) -> None:
    """The blockwise feed-forward's rule (`ffn_chunk_size`, in AttentionConfig beside the other
    block sizes): chunks tile each sequence shard, so a chunk shorter than the sequence must
    divide `seq_len / sp`."""
    if chunk and chunk < seq_len and seq_len % (sp * chunk):
        raise ConfigError(
            f"sequence length {seq_len} not divisible by sp {sp} x ffn_chunk_size {chunk}"
        )


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

    def check(self, seq_len: int, mesh: Any = None) -> None:
        """Raises a one-line ConfigError when sequences of `seq_len` cannot run on `mesh` (a Mesh
        or `{axis: size}`; default: the op's own). Activations are sharded over `sp` on the
        sequence axis whatever the backend, so `sp` must divide it."""
        sp = mesh_sp(self.mesh if mesh is None else mesh)
        if seq_len % sp:
            raise ConfigError(f"seq_len {seq_len} not divisible by sp = {sp}")
        check_ffn_chunk(seq_len, sp, self.config.ffn_chunk_size)

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
