"""The Pallas kernel bodies of fused flash attention: one forward, a dQ and a dK/dV backward kernel,
with their static description (`BlockSizes`, `KernelSpec`) and the caller-side work ranges.

One kernel body per pass, lowered by Pallas to Triton on GPU, Mosaic on TPU, and run by the Pallas
interpreter on CPU (tests). Layout is head-major, so every block is a `[rows, head_dim]` tile:

  q, o, do:   [B, N, Tq, H]      k, v: [B, K, Tk, H]   (query head n reads kv head n // (N / K):
                                                        GQA / MQA without repeating K/V)
  lse, delta: [B, N, 1, Tq] fp32  (log-sum-exp of the scaled scores; rowsum(dO * O))
  q_pos:      [1, 1, Tq] int32    kv_pos: [1, 1, Tk]    (natural positions, already // causal block)
  q_seg:      [B, 1, Tq] int32    kv_seg: [B, 1, Tk]    (segment ids, or None)

The forward returns (out, lse) for the queries against this one key/value sequence, so a caller
(the ring) can merge several calls with `merge`. The backward kernels take the *final* lse and
delta, so per-call gradients simply add up. Rows that see no key return out = 0 and lse = -inf.

Work skipping: the caller-side `block_ranges` gives each query block the range of key blocks that
are not fully masked (and each key block its range of query blocks); inside the range a block is
masked only when its position/segment ranges say some entry may be hidden (`lax.cond`), so a
causal step costs about half a dense one and the mask is built only near the diagonal.

Each program keeps the whole key/value sequence of the call (forward, dQ) or the group's whole
query sequence (dK/dV) addressable: on GPU these are HBM pointers and tiles stream through shared
memory; on TPU they are VMEM blocks (fetched once per head), which bounds the rows per call (per
ring step) to what VMEM holds: about 16K rows at head_dim 128 in bf16 for the forward on a 128 MiB
core, fewer for dK/dV with large GQA groups. Longer single-device sequences on TPU: use `ring`
(sp > 1) or kernel=xla.

Why Triton on GPU (not Mosaic GPU): in the installed JAX (0.10) `pl.pallas_call` lowers to
Triton on GPU and Mosaic on TPU from one BlockSpec-tiled body, and the Pallas interpreter runs
that same body on CPU, so the tested code is the shipped code. Mosaic GPU kernels are written
per warpgroup against TMA / wgmma (`plgpu.kernel`, its `pallas_call` form is deprecated), cannot
share a body with TPU and cannot be checked here; Triton itself emits Hopper wgmma for 64+ row
tiles with 4-8 warps. If the device check shows Triton short of its cuDNN goal, a Mosaic GPU
forward for Hopper is the next step (jax.experimental.pallas.ops.gpu.attention_mgpu shows how).

The pallas_call wrappers (grids, index maps, compiler parameters) and `merge` are in
lwm/attention/pallas/calls.py; the custom-VJP op and the xla/pallas dispatch in pallas/ops.py.

Why dQ and dK/dV are separate kernels (as the reference ringattention TPU kernel): one fused kernel
would either write dQ from many programs (atomics; none in Pallas-Triton or Mosaic) or recompute
the scores twice anyway. Separate kernels parallelize over query blocks (dQ) and key blocks (dK/dV)
with no cross-program writes, at the cost of recomputing Q K^T once more.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: exp(MASK - m) == 0, never nan
LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes and (GPU) launch parameters; hashable, so a static argument."""

    block_q: int = 128
    """Query rows per program in the forward pass."""
    block_k: int = 64
    """Key rows per inner-loop step in the forward pass."""
    block_q_bwd: int = 64
    """Query rows per tile in both backward kernels."""
    block_k_bwd: int = 64
    """Key rows per tile in both backward kernels."""
    num_warps: int = 8
    """Triton warps per program (GPU only)."""
    num_stages: int = 3
    """Triton software-pipelining stages (GPU only)."""

    def replace(self, **kw) -> BlockSizes:
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v})


# Hopper (H100/H200), head_dim 128: 128x64 forward tiles fit the 228 KiB shared memory with 3
# stages; 64x64 backward tiles keep dK, dV, and the Q/dO tiles in registers. TPU: big tiles feed
# the 128x128 (v4/v5) or 256x256 (v6) MXU. CPU: the interpreter, small tiles keep tests fast.
DEFAULT_BLOCKS = {
    "gpu": BlockSizes(128, 64, 64, 64, 8, 3),
    "tpu": BlockSizes(512, 512, 256, 256, 0, 0),
    "cpu": BlockSizes(64, 64, 64, 64, 0, 0),
}


def platform() -> str:
    """`gpu`, `tpu` or `cpu`: the default backend's kind."""
    p = jax.default_backend()
    return "gpu" if p in ("gpu", "cuda", "rocm") else ("tpu" if p == "tpu" else "cpu")


def fit_block(block: int, length: int) -> int:
    """The largest power-of-two fraction of `block` that divides `length` (Triton tiles are 2^k)."""
    b = min(block, length)
    b = 1 << (b.bit_length() - 1)
    while length % b:
        b //= 2
    return b


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Static per-call description (hashable)."""

    causal: bool
    scale: float
    blocks: BlockSizes
    backend: str  # gpu | tpu | cpu (cpu = interpret mode)
    has_segments: bool


# ----------------------------------------------------------------------------- masks and ranges


def _range_mask(qp_lo, qp_hi, kp_lo, kp_hi, qs_lo, qs_hi, ks_lo, ks_hi, spec: KernelSpec):
    """(skip, full) for tiles given their position / segment ranges (any broadcastable shapes)."""
    skip = jnp.zeros(jnp.broadcast_shapes(jnp.shape(qp_lo), jnp.shape(kp_lo)), bool)
    full = jnp.ones_like(skip)
    if spec.causal:
        skip = skip | (qp_hi < kp_lo)
        full = full & (qp_lo >= kp_hi)
    if spec.has_segments:
        skip = skip | (qs_hi < ks_lo) | (qs_lo > ks_hi)
        full = full & (qs_lo == qs_hi) & (ks_lo == ks_hi) & (qs_lo == ks_lo)
    return skip, full


def _tile_stats(x_b1t, block):
    """[B, 1, T] -> per-tile (min, max), each [B, T // block]."""
    b, _, t = x_b1t.shape
    x = x_b1t.reshape(b, t // block, block)
    return x.min(-1), x.max(-1)


def block_ranges(q_pos, kv_pos, q_seg, kv_seg, bq, bk, spec: KernelSpec, *, over_kv: bool):
    """For each query tile ([B, nq]) the [lo, hi) of key tiles not fully masked; with `over_kv`,
    for each key tile ([B, nk]) the [lo, hi) of query tiles. Computed by XLA, O(nq * nk) ints."""
    qp = _tile_stats(q_pos, bq)
    kp = _tile_stats(kv_pos, bk)
    if spec.has_segments:
        qs, ks = _tile_stats(q_seg, bq), _tile_stats(kv_seg, bk)
    else:
        qs = ks = (jnp.zeros((1, 1), jnp.int32),) * 2
    expand_q = lambda x: x[:, :, None]  # noqa: E731  [B, nq, 1]
    expand_k = lambda x: x[:, None, :]  # noqa: E731  [B, 1, nk]
    skip, _ = _range_mask(
        *map(expand_q, qp), *map(expand_k, kp), *map(expand_q, qs), *map(expand_k, ks), spec
    )
    visible = ~skip  # [B', nq, nk]
    b = max(q_seg.shape[0] if spec.has_segments else 1, 1)
    visible = jnp.broadcast_to(visible, (b, qp[0].shape[1], kp[0].shape[1]))
    if over_kv:
        visible = visible.swapaxes(1, 2)
    n = visible.shape[-1]
    any_ = visible.any(-1)
    lo = jnp.argmax(visible, -1)
    hi = n - jnp.argmax(visible[..., ::-1], -1)
    return jnp.where(any_, lo, 0).astype(jnp.int32), jnp.where(any_, hi, 0).astype(jnp.int32)


def _tile_mask(qp, kp, qs, ks, spec: KernelSpec):
    """[bq, bk] bool (True = attend) from a tile's positions and segment ids."""
    mask = None
    if spec.causal:
        mask = qp[:, None] >= kp[None, :]
    if spec.has_segments:
        seg = qs[:, None] == ks[None, :]
        mask = seg if mask is None else mask & seg
    return mask


def _stats(pos, seg, spec: KernelSpec):
    """(pos min, pos max, seg min, seg max) of one tile, for `_needs_mask`."""
    if not spec.has_segments:
        return pos.min(), pos.max(), 0, 0
    return pos.min(), pos.max(), seg.min(), seg.max()


def _needs_mask(q_stats, kv_stats, spec: KernelSpec):
    """Scalar: some entry of this (visible) tile may be masked."""
    if not (spec.causal or spec.has_segments):
        return jnp.bool_(False)
    (qp_lo, qp_hi, qs_lo, qs_hi), (kp_lo, kp_hi, ks_lo, ks_hi) = q_stats, kv_stats
    _, full = _range_mask(qp_lo, qp_hi, kp_lo, kp_hi, qs_lo, qs_hi, ks_lo, ks_hi, spec)
    return jnp.logical_not(full)


def _mm(a, b, dims):
    # fp32 inputs: full-precision passes (GPUs would otherwise round to TF32); bf16: one pass.
    exact = a.dtype == jnp.float32 and b.dtype == jnp.float32
    precision = lax.Precision.HIGHEST if exact else None
    return lax.dot_general(
        a, b, (dims, ((), ())), precision=precision, preferred_element_type=jnp.float32
    )


def _dot_nt(a, b):
    """a [m, h] x b [n, h] -> [m, n] fp32."""
    return _mm(a, b, ((1,), (1,)))


def _dot_tn(a, b):
    """a [m, n] x b [m, h] -> [n, h] fp32."""
    return _mm(a, b, ((0,), (0,)))


def _dot(a, b):
    """a [m, n] x b [n, h] -> [m, h] fp32."""
    return _mm(a, b, ((1,), (0,)))


def _read_bound(ref, backend):
    """Loop bound of this program: a scalar block (GPU/CPU) or an SMEM table (TPU)."""
    if backend == "tpu":
        return ref[pl.program_id(0), pl.program_id(2)]
    return ref[...]


def _seg(ref, sl, spec):
    return ref[0, sl] if spec.has_segments else None


# ----------------------------------------------------------------------------- kernels


def _branch(need, visit, carry, tiles):
    """`visit(carry, tiles, masked)` with the mask only where `need` (a scalar) says so.

    Tiles are loaded before the branch, at the loop's top level, so Triton can pipeline the
    loads (num_stages) across iterations; the branches only compute."""
    if need is None:
        return visit(carry, tiles, False)
    return lax.cond(need, lambda c: visit(c, tiles, True), lambda c: visit(c, tiles, False), carry)


def _masked(spec: KernelSpec) -> bool:
    return spec.causal or spec.has_segments


def fwd_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, qp_ref, kp_ref, *rest, spec: KernelSpec, bk):
    qs_ref, ks_ref, o_ref, lse_ref = rest if spec.has_segments else (None, None, *rest)
    q = q_ref[...]
    bq = q.shape[0]
    qp = qp_ref[0, :]
    qs = qs_ref[0, :] if spec.has_segments else None
    q_stats = _stats(qp, qs, spec)  # once per program, not per key tile
    scale = spec.scale * LOG2E  # scores in base 2: exp2 is the cheap instruction

    def visit(carry, tiles, masked):
        acc, m, l = carry
        k, v, kp, ks = tiles
        s = _dot_nt(q, k) * scale
        if masked:
            s = jnp.where(_tile_mask(qp, kp, qs, ks, spec), s, MASK_VALUE)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp2(s - m_new[:, None])
        corr = jnp.exp2(m - m_new)
        acc = acc * corr[:, None] + _dot(p.astype(v.dtype), v)
        return acc, m_new, l * corr + p.sum(-1)

    def body(j, carry):
        sl = pl.ds(pl.multiple_of(j * bk, bk), bk)
        tiles = (k_ref[sl, :], v_ref[sl, :], kp_ref[0, sl], _seg(ks_ref, sl, spec))
        need = None
        if _masked(spec):
            need = _needs_mask(q_stats, _stats(tiles[2], tiles[3], spec), spec)
        return _branch(need, visit, carry, tiles)

    carry = (
        jnp.zeros(q.shape, jnp.float32),
        jnp.full((bq,), MASK_VALUE, jnp.float32),
        jnp.zeros((bq,), jnp.float32),
    )
    lo, hi = _read_bound(lo_ref, spec.backend), _read_bound(hi_ref, spec.backend)
    acc, m, l = lax.fori_loop(lo, hi, body, carry)
    seen = m > 0.5 * MASK_VALUE  # a row whose every key is masked keeps m at MASK_VALUE
    l_safe = jnp.where(seen, l, 1.0)
    o_ref[...] = jnp.where(seen[:, None], acc / l_safe[:, None], 0.0).astype(o_ref.dtype)
    lse = jnp.where(seen, (m + jnp.log2(l_safe)) / LOG2E, -jnp.inf)
    lse_ref[...] = lse[None, :]


def _probs(q, k, lse, qp, kp, qs, ks, spec, masked):
    """Softmax probabilities of one tile from the final lse (natural log), fp32."""
    s = _dot_nt(q, k) * (spec.scale * LOG2E)
    p = jnp.exp2(s - lse[:, None] * LOG2E)
    if masked:
        p = jnp.where(_tile_mask(qp, kp, qs, ks, spec), p, 0.0)
    return p


def dq_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qp_ref, kp_ref, *rest,
               spec: KernelSpec, bk):  # fmt: skip
    qs_ref, ks_ref, dq_ref = rest if spec.has_segments else (None, None, *rest)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[0, :], dl_ref[0, :]
    qp = qp_ref[0, :]
    qs = qs_ref[0, :] if spec.has_segments else None
    q_stats = _stats(qp, qs, spec)

    def visit(dq, tiles, masked):
        k, v, kp, ks = tiles
        p = _probs(q, k, lse, qp, kp, qs, ks, spec, masked)
        ds = p * (_dot_nt(do, v) - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    def body(j, dq):
        sl = pl.ds(pl.multiple_of(j * bk, bk), bk)
        tiles = (k_ref[sl, :], v_ref[sl, :], kp_ref[0, sl], _seg(ks_ref, sl, spec))
        need = None
        if _masked(spec):
            need = _needs_mask(q_stats, _stats(tiles[2], tiles[3], spec), spec)
        return _branch(need, visit, dq, tiles)

    lo, hi = _read_bound(lo_ref, spec.backend), _read_bound(hi_ref, spec.backend)
    dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * spec.scale).astype(dq_ref.dtype)


def dkdv_kernel(lo_ref, hi_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dl_ref, qp_ref, kp_ref,
                 *rest, spec: KernelSpec, bq, groups):  # fmt: skip
    qs_ref, ks_ref, dk_ref, dv_ref = rest if spec.has_segments else (None, None, *rest)
    k, v = k_ref[...], v_ref[...]
    kp = kp_ref[0, :]
    ks = ks_ref[0, :] if spec.has_segments else None
    kv_stats = _stats(kp, ks, spec)

    def visit(carry, tiles, masked):
        dk, dv = carry
        q, do, lse, delta, qp, qs = tiles
        p = _probs(q, k, lse, qp, kp, qs, ks, spec, masked)
        dv = dv + _dot_tn(p.astype(do.dtype), do)
        ds = p * (_dot_nt(do, v) - delta[:, None])
        return dk + _dot_tn(ds.astype(q.dtype), q), dv

    def body(t, carry):
        g, i = lax.div(t, nq_range), lo + lax.rem(t, nq_range)  # non-negative: no sign logic
        sl = pl.ds(pl.multiple_of(i * bq, bq), bq)
        tiles = (
            q_ref[g, sl, :],
            do_ref[g, sl, :],
            lse_ref[g, 0, sl],
            dl_ref[g, 0, sl],
            qp_ref[0, sl],
            _seg(qs_ref, sl, spec),
        )
        need = None
        if _masked(spec):
            need = _needs_mask(_stats(tiles[4], tiles[5], spec), kv_stats, spec)
        return _branch(need, visit, carry, tiles)

    lo, hi = _read_bound(lo_ref, spec.backend), _read_bound(hi_ref, spec.backend)
    nq_range = jnp.maximum(hi - lo, 1)
    zeros = jnp.zeros(k.shape, jnp.float32)
    # One flat loop over (query head of the group, query tile): GQA sums the group's heads here.
    n_steps = jnp.where(hi > lo, groups * (hi - lo), 0)
    dk, dv = lax.fori_loop(0, n_steps, body, (zeros, zeros))
    dk_ref[...] = (dk * spec.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)
