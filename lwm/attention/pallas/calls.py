"""The `pallas_call` wrappers of the kernel bodies (pallas/kernels.py): grids, BlockSpecs (GQA by
the kv-head index map), per-backend compiler parameters, and the (out, lse) merge of two calls.

Shapes are those of pallas/kernels.py's docstring (head-major, fp32 statistics).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from lwm.attention.pallas.kernels import (
    KernelSpec,
    block_ranges,
    dkdv_kernel,
    dq_kernel,
    fit_block,
    fwd_kernel,
)

# TPU: blocks are double-buffered in VMEM; ask Mosaic for what the blocks need (+ headroom for
# the fp32 tiles), up to what v5e/v5p/v6e cores have (128 MiB; v4: lower the per-step length).
_VMEM_CAP = 100 * 2**20


def _vmem_bytes(specs, arrays) -> int:
    total = 0
    for bs, x in zip(specs, arrays):
        shape = getattr(bs, "block_shape", None)
        if shape is None or x is None:
            continue
        rows = math.prod(1 if d is None else int(d) for d in shape)
        total += 2 * rows * jnp.dtype(x.dtype).itemsize
    return total


def _compiler_params(spec: KernelSpec, semantics: tuple[str, ...], vmem: int = 0):
    if spec.backend == "gpu":
        from jax.experimental.pallas import triton as pltriton

        b = spec.blocks
        return pltriton.CompilerParams(
            num_warps=b.num_warps or None, num_stages=b.num_stages or None
        )
    if spec.backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        limit = min(_VMEM_CAP, max(32 * 2**20, int(1.5 * vmem)))
        return pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=limit)
    return None


def _bound_spec(spec: KernelSpec):
    """lo/hi tables [B, n]: one scalar per program (GPU/CPU), the whole table in SMEM (TPU)."""
    if spec.backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pl.BlockSpec(memory_space=pltpu.SMEM)
    return pl.BlockSpec((None, None), lambda b, h, i: (b, i))


def _call(kernel, spec: KernelSpec, grid, in_specs, out_specs, out_shape, name, *args):
    semantics = ("parallel",) * len(grid)
    outs = out_specs if isinstance(out_specs, list) else [out_specs]
    shapes = out_shape if isinstance(out_shape, list) else [out_shape]
    vmem = _vmem_bytes([*in_specs, *outs], [*args, *shapes]) if spec.backend == "tpu" else 0
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(spec, semantics, vmem),
        interpret=spec.backend == "cpu",
        name=name,
    )(*args)


def _seg_args(spec, q_seg, kv_seg, q_block, kv_block):
    if not spec.has_segments:
        return [], []
    return [q_seg, kv_seg], [q_block, kv_block]


def flash_forward(q, k, v, q_pos, kv_pos, q_seg, kv_seg, spec: KernelSpec, out_dtype=None):
    """(out [B, N, Tq, H] in `out_dtype` (default q's), lse [B, N, 1, Tq] fp32) against this k/v."""
    b, n, tq, h = q.shape
    kh, tk = k.shape[1], k.shape[2]
    g = n // kh
    bq, bk = fit_block(spec.blocks.block_q, tq), fit_block(spec.blocks.block_k, tk)
    lo, hi = block_ranges(q_pos, kv_pos, q_seg, kv_seg, bq, bk, spec, over_kv=False)
    lo, hi = jnp.broadcast_to(lo, (b, tq // bq)), jnp.broadcast_to(hi, (b, tq // bq))
    args, specs = _seg_args(
        spec,
        q_seg,
        kv_seg,
        pl.BlockSpec((None, 1, bq), lambda bi, hi_, i: (bi, 0, i)),
        pl.BlockSpec((None, 1, tk), lambda bi, hi_, i: (bi, 0, 0)),
    )
    in_specs = [
        _bound_spec(spec),
        _bound_spec(spec),
        pl.BlockSpec((None, None, bq, h), lambda bi, hn, i: (bi, hn, i, 0)),
        pl.BlockSpec((None, None, tk, h), lambda bi, hn, i: (bi, lax.div(hn, g), 0, 0)),
        pl.BlockSpec((None, None, tk, h), lambda bi, hn, i: (bi, lax.div(hn, g), 0, 0)),
        pl.BlockSpec((None, 1, bq), lambda bi, hn, i: (0, 0, i)),
        pl.BlockSpec((None, 1, tk), lambda bi, hn, i: (0, 0, 0)),
        *specs,
    ]
    out_specs = [
        pl.BlockSpec((None, None, bq, h), lambda bi, hn, i: (bi, hn, i, 0)),
        pl.BlockSpec((None, None, 1, bq), lambda bi, hn, i: (bi, hn, 0, i)),
    ]
    out_shape = [
        jax.ShapeDtypeStruct(q.shape, out_dtype or q.dtype),
        jax.ShapeDtypeStruct((b, n, 1, tq), jnp.float32),
    ]
    kernel = functools.partial(fwd_kernel, spec=spec, bk=bk)
    grid = (b, n, tq // bq)
    return _call(
        kernel, spec, grid, in_specs, out_specs, out_shape, "lwm_flash_fwd",
        lo, hi, q, k, v, q_pos, kv_pos, *args,
    )  # fmt: skip


def flash_backward(q, k, v, do, lse, delta, q_pos, kv_pos, q_seg, kv_seg, spec: KernelSpec):
    """(dq, dk, dv) fp32 of this call's block, from the final lse and delta = rowsum(dO * O)."""
    b, n, tq, h = q.shape
    kh, tk = k.shape[1], k.shape[2]
    g = n // kh
    bq, bk = fit_block(spec.blocks.block_q_bwd, tq), fit_block(spec.blocks.block_k_bwd, tk)
    f32 = jnp.float32

    # dQ: grid over query tiles, loop over key tiles.
    lo, hi = block_ranges(q_pos, kv_pos, q_seg, kv_seg, bq, bk, spec, over_kv=False)
    lo, hi = jnp.broadcast_to(lo, (b, tq // bq)), jnp.broadcast_to(hi, (b, tq // bq))
    args, specs = _seg_args(
        spec,
        q_seg,
        kv_seg,
        pl.BlockSpec((None, 1, bq), lambda bi, hn, i: (bi, 0, i)),
        pl.BlockSpec((None, 1, tk), lambda bi, hn, i: (bi, 0, 0)),
    )
    q_tile = pl.BlockSpec((None, None, bq, h), lambda bi, hn, i: (bi, hn, i, 0))
    kv_all = pl.BlockSpec((None, None, tk, h), lambda bi, hn, i: (bi, lax.div(hn, g), 0, 0))
    row_tile = pl.BlockSpec((None, None, 1, bq), lambda bi, hn, i: (bi, hn, 0, i))
    in_specs = [
        _bound_spec(spec),
        _bound_spec(spec),
        q_tile,
        kv_all,
        kv_all,
        q_tile,
        row_tile,
        row_tile,
        pl.BlockSpec((None, 1, bq), lambda bi, hn, i: (0, 0, i)),
        pl.BlockSpec((None, 1, tk), lambda bi, hn, i: (0, 0, 0)),
        *specs,
    ]
    dq = _call(
        functools.partial(dq_kernel, spec=spec, bk=bk), spec, (b, n, tq // bq), in_specs,
        q_tile, jax.ShapeDtypeStruct(q.shape, f32), "lwm_flash_dq",
        lo, hi, q, k, v, do, lse, delta, q_pos, kv_pos, *args,
    )  # fmt: skip

    # dK/dV: grid over (kv head, key tile), loop over the group's query heads x query tiles.
    lo, hi = block_ranges(q_pos, kv_pos, q_seg, kv_seg, bq, bk, spec, over_kv=True)
    lo, hi = jnp.broadcast_to(lo, (b, tk // bk)), jnp.broadcast_to(hi, (b, tk // bk))
    q5 = q.reshape(b, kh, g, tq, h)
    do5 = do.reshape(b, kh, g, tq, h)
    lse5, delta5 = lse.reshape(b, kh, g, 1, tq), delta.reshape(b, kh, g, 1, tq)
    args, specs = _seg_args(
        spec,
        q_seg,
        kv_seg,
        pl.BlockSpec((None, 1, tq), lambda bi, hk, j: (bi, 0, 0)),
        pl.BlockSpec((None, 1, bk), lambda bi, hk, j: (bi, 0, j)),
    )
    q_group = pl.BlockSpec((None, None, g, tq, h), lambda bi, hk, j: (bi, hk, 0, 0, 0))
    rows_group = pl.BlockSpec((None, None, g, 1, tq), lambda bi, hk, j: (bi, hk, 0, 0, 0))
    kv_tile = pl.BlockSpec((None, None, bk, h), lambda bi, hk, j: (bi, hk, j, 0))
    in_specs = [
        _bound_spec(spec),
        _bound_spec(spec),
        q_group,
        kv_tile,
        kv_tile,
        q_group,
        rows_group,
        rows_group,
        pl.BlockSpec((None, 1, tq), lambda bi, hk, j: (0, 0, 0)),
        pl.BlockSpec((None, 1, bk), lambda bi, hk, j: (0, 0, j)),
        *specs,
    ]
    kernel = functools.partial(dkdv_kernel, spec=spec, bq=bq, groups=g)
    kv_shape = jax.ShapeDtypeStruct(k.shape, f32)
    dk, dv = _call(
        kernel, spec, (b, kh, tk // bk), in_specs, [kv_tile, kv_tile], [kv_shape, kv_shape],
        "lwm_flash_dkdv", lo, hi, q5, k, v, do5, lse5, delta5, q_pos, kv_pos, *args,
    )  # fmt: skip
    return dq, dk, dv


def merge(o_a, lse_a, o_b, lse_b):
    """Combines two partial attentions over disjoint key sets: (o fp32, lse) of their union."""
    lse = jnp.logaddexp(lse_a, lse_b)
    safe = jnp.where(jnp.isfinite(lse), lse, 0.0)
    w_a = jnp.exp(lse_a - safe).swapaxes(-1, -2)  # [B, N, 1, T] -> [B, N, T, 1]
    w_b = jnp.exp(lse_b - safe).swapaxes(-1, -2)
    return o_a.astype(jnp.float32) * w_a + o_b.astype(jnp.float32) * w_b, lse
