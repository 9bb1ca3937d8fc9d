"""The Pallas attention ops behind `blockwise` and `ring`: which kernel runs (`attention.kernel`
resolved per backend and shape), the single-device custom-VJP op, and the layout helpers the ring's
Pallas step shares (pallas/kernels.py holds the kernel bodies, pallas/calls.py their pallas_calls).

`attention.kernel` picks the implementation of both backends: `xla` (the einsum/scan code of
blockwise.py), `pallas` (these kernels), or `auto`: pallas on GPU/TPU, xla on CPU, where Pallas only
runs in its (slow) interpreter. Forcing `pallas` on CPU runs the interpreter: that is what the
tests do.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from lwm.attention.config import KERNELS
from lwm.attention.pallas.calls import flash_backward, flash_forward
from lwm.attention.pallas.kernels import (
    DEFAULT_BLOCKS,
    BlockSizes,
    KernelSpec,
    fit_block,
    platform,
)
from lwm.errors import ConfigError


def resolve_kernel(kernel: str, backend: str | None = None) -> str:
    """`xla` or `pallas` for the configured `kernel` on `backend` (default: jax's default)."""
    if kernel not in KERNELS:
        raise ConfigError(f"unknown attention kernel {kernel!r}; expected one of {KERNELS}")
    if kernel != "auto":
        return kernel
    return "xla" if (backend or platform()) == "cpu" else "pallas"


@dataclasses.dataclass(frozen=True)
class PallasChoice:
    """`attention.kernel` resolved to pallas, with the configured tile overrides (0 = default)."""

    block_q: int = 0
    block_k: int = 0
    blocks: BlockSizes | None = None
    forced: bool = False
    """`kernel = pallas` (an error when the kernels cannot tile a shape) rather than `auto`."""


# Smallest tile the backend's matrix units take (Triton's dot needs 16; Mosaic wants 128-lane
# rows unless the tile is the whole axis).
_MIN_TILE = {"gpu": 16, "tpu": 128, "cpu": 1}


def usable_kernel(
    choice: PallasChoice | None, q_len: int, kv_len: int, head_dim: int
) -> PallasChoice | None:
    """`choice` if the kernels can tile these lengths on this backend, else None (the xla path)
    for `auto`; a forced `pallas` raises a ConfigError naming the numbers."""
    if choice is None:
        return None
    backend = platform()
    b = (choice.blocks or DEFAULT_BLOCKS[backend]).replace(
        block_q=choice.block_q,
        block_k=choice.block_k,
        block_q_bwd=choice.block_q,
        block_k_bwd=choice.block_k,
    )
    lo = _MIN_TILE[backend]
    pairs = [
        (b.block_q, q_len),
        (b.block_k, kv_len),
        (b.block_q_bwd, q_len),
        (b.block_k_bwd, kv_len),
    ]
    for block, length in pairs:
        tile = fit_block(block, length)
        ok = tile >= lo if backend == "gpu" else (tile % lo == 0 or tile == length)
        if not ok or (backend == "gpu" and head_dim < 16):
            if not choice.forced:
                return None
            raise ConfigError(
                f"attention.kernel=pallas on {backend}: a sequence (block) of {length} tokens "
                f"tiles into {tile}-row tiles (head_dim {head_dim}); the kernels need tiles of "
                f">= {lo} rows: use lengths with a larger power-of-two factor or kernel=xla"
            )
    return choice


def choose_kernel(config: Any, mesh: Any = None) -> PallasChoice | None:
    """The Pallas choice for an AttentionConfig, or None for the xla path."""
    backend = None
    devices = getattr(mesh, "devices", None)  # an AbstractMesh has none: jax's default backend
    if devices is not None and getattr(devices, "size", 0):
        p = devices.flat[0].platform
        backend = "gpu" if p in ("gpu", "cuda", "rocm") else ("tpu" if p == "tpu" else "cpu")
    if resolve_kernel(getattr(config, "kernel", "auto"), backend) == "xla":
        return None
    return PallasChoice(
        getattr(config, "kernel_block_q", 0) or 0,
        getattr(config, "kernel_block_k", 0) or 0,
        forced=getattr(config, "kernel", "auto") == "pallas",
    )


def kernel_spec(
    *,
    causal: bool,
    head_dim: int,
    has_segments: bool,
    block_q: int = 0,
    block_k: int = 0,
    blocks: BlockSizes | None = None,
) -> KernelSpec:
    """The static kernel description: the backend's default tiles, overridden where given (>0)."""
    backend = platform()
    base = blocks or DEFAULT_BLOCKS[backend]
    base = base.replace(block_q=block_q, block_k=block_k, block_q_bwd=block_q, block_k_bwd=block_k)
    return KernelSpec(
        causal=causal, scale=head_dim**-0.5, blocks=base, backend=backend, has_segments=has_segments
    )


def positions(idx: jax.Array, causal_block_size: int | None) -> jax.Array:
    """Natural row indices -> the kernel's [1, 1, T] int32 mask positions (block index if
    block-causal: the mask only compares them)."""
    idx = idx.astype(jnp.int32)
    if causal_block_size:
        idx = idx // causal_block_size
    return idx.reshape(1, 1, -1)


def segments(seg_bt: jax.Array | None) -> jax.Array | None:
    return None if seg_bt is None else seg_bt.astype(jnp.int32)[:, None, :]


def heads_major(x_btnh: jax.Array) -> jax.Array:
    return x_btnh.transpose(0, 2, 1, 3)


def rows_major(x_bnth: jax.Array) -> jax.Array:
    return x_bnth.transpose(0, 2, 1, 3)


# ----------------------------------------------------------------------------- single device


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def flash_attention_core(q, k, v, pos, seg, spec: KernelSpec):
    """The fused attention op on head-major [B, N, T, H] inputs, one `pos` for queries and keys."""
    return _flash_fwd(q, k, v, pos, seg, spec)[0]


def _flash_fwd(q, k, v, pos, seg, spec):
    o, lse = flash_forward(q, k, v, pos, pos, seg, seg, spec)
    return o, (q, k, v, pos, seg, o, lse)


def _flash_bwd(spec, res, do):
    q, k, v, pos, seg, o, lse = res
    delta = row_delta(do, o)
    dq, dk, dv = flash_backward(q, k, v, do, lse, delta, pos, pos, seg, seg, spec)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


flash_attention_core.defvjp(_flash_fwd, _flash_bwd)


def row_delta(do_bnth: jax.Array, o_bnth: jax.Array) -> jax.Array:
    """rowsum(dO * O) as [B, N, 1, T] fp32."""
    d = jnp.einsum("bnth,bnth->bnt", do_bnth.astype(jnp.float32), o_bnth.astype(jnp.float32))
    return d[:, :, None, :]


def flash_attention(
    q_btnh: jax.Array,
    k_btkh: jax.Array,
    v_btkh: jax.Array,
    segment_ids_bt: jax.Array | None = None,
    *,
    causal: bool = True,
    causal_block_size: int | None = None,
    block_q: int = 0,
    block_k: int = 0,
    blocks: BlockSizes | None = None,
) -> jax.Array:
    """Fused attention on natural-order [B, T, N, H] inputs (mask semantics of `dense_attention`).

    Shapes are validated by the callers (blockwise / ring)."""
    t, h = q_btnh.shape[1], q_btnh.shape[3]
    spec = kernel_spec(
        causal=causal,
        head_dim=h,
        has_segments=segment_ids_bt is not None,
        block_q=block_q,
        block_k=block_k,
        blocks=blocks,
    )
    pos = positions(jnp.arange(t), causal_block_size if causal else None)
    q, k, v = heads_major(q_btnh), heads_major(k_btkh), heads_major(v_btkh)
    return rows_major(flash_attention_core(q, k, v, pos, segments(segment_ids_bt), spec))
