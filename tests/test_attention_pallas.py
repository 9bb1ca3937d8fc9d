"""The fused Pallas kernels (interpret mode on CPU) vs dense: alone, inside blockwise and ring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm.attention import dense_attention, make_attention
from lwm.attention.config import AttentionConfig
from lwm.attention.pallas.kernels import DEFAULT_BLOCKS, KernelSpec, fit_block
from lwm.attention.pallas.ops import (
    choose_kernel,
    flash_attention,
    flash_attention_core,
    positions,
    resolve_kernel,
)
from lwm.errors import ConfigError
from lwm.sharding import make_mesh

B, T, H = 2, 64, 16
FP32_TOL = 1e-5  # max abs error, outputs and gradients (values are O(1))
BF16_TOL = {"out": 2e-2, "grad": 5e-2}  # bf16 inputs/outputs vs fp32 dense on the same inputs


def make_inputs(heads, kv_heads, dtype=jnp.float32, length=T, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (B, length, heads, H), jnp.float32)
    k = jax.random.normal(ks[1], (B, length, kv_heads, H), jnp.float32)
    v = jax.random.normal(ks[2], (B, length, kv_heads, H), jnp.float32)
    w = jax.random.normal(ks[3], (B, length, heads, H), jnp.float32)
    return (*(x.astype(dtype) for x in (q, k, v)), w)


def packed_segments(length=T):
    """Uneven documents, a tile-straddling boundary, and padding (id 0) at the end of row 1."""
    row0 = np.repeat([1, 2, 3, 4], [10, 23, 17, length - 50])
    row1 = np.repeat([5, 6, 0], [30, 22, length - 52])
    return jnp.asarray(np.stack([row0, row1]), jnp.int32)


def value_and_grads(fn, q, k, v, w):
    def loss(q, k, v):
        out = fn(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * w), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


def max_errs(got, want):
    (o1, g1), (o2, g2) = got, want
    f = lambda a, b: float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max())  # noqa: E731
    return f(o1, o2), [f(a, b) for a, b in zip(g1, g2)]


# causal, causal_block_size, packed, (heads, kv_heads)
CASES = {
    "causal-mha": (True, None, False, (2, 2)),
    "blockcausal-gqa": (True, 8, False, (4, 2)),
    "causal-packed-gqa": (True, None, True, (4, 2)),
    "noncausal-packed-mqa": (False, None, True, (4, 1)),
    "noncausal-mha": (False, None, False, (2, 2)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_kernel_matches_dense_fp32(case):
    causal, cbs, packed, (n, kh) = CASES[case]
    q, k, v, w = make_inputs(n, kh)
    seg = packed_segments() if packed else None
    # 16x8 tiles over 64 rows: several query tiles, a loop over key tiles, skipped/full/masked tiles
    got = value_and_grads(
        lambda q, k, v: flash_attention(q, k, v, seg, causal=causal, causal_block_size=cbs,
                                        block_q=16, block_k=8), q, k, v, w)  # fmt: skip
    want = value_and_grads(
        lambda q, k, v: dense_attention(q, k, v, segment_ids_bt=seg, causal=causal,
                                        causal_block_size=cbs), q, k, v, w)  # fmt: skip
    out_err, grad_errs = max_errs(got, want)
    assert out_err <= FP32_TOL, out_err
    for name, e in zip("qkv", grad_errs):
        assert e <= FP32_TOL, f"d{name}: {e}"


def test_kernel_bf16_within_tolerance_of_fp32_dense():
    """bf16 kernel vs fp32 dense on the same bf16 inputs: within BF16_TOL, and no worse than 1.5x
    the error of XLA's dense attention computed in bf16 (the rounding every bf16 path pays)."""
    q, k, v, w = make_inputs(4, 2, jnp.bfloat16)
    seg = packed_segments()

    def dense(q, k, v):
        return dense_attention(q, k, v, segment_ids_bt=seg, causal=True)

    got = value_and_grads(
        lambda q, k, v: flash_attention(q, k, v, seg, causal=True, block_q=16, block_k=16),
        q,
        k,
        v,
        w,
    )
    want = value_and_grads(dense, *(x.astype(jnp.float32) for x in (q, k, v)), w)
    assert got[0].dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in got[1])
    out_err, grad_errs = max_errs(got, want)
    base_out, base_grads = max_errs(value_and_grads(dense, q, k, v, w), want)
    assert out_err <= min(BF16_TOL["out"], 1.5 * base_out), (out_err, base_out)
    for name, e, base in zip("qkv", grad_errs, base_grads):
        assert e <= min(BF16_TOL["grad"], 1.5 * base), f"d{name}: {e} vs dense bf16 {base}"


# mesh, layout, causal_block_size, packed, (heads, kv_heads)
RING_CASES = {
    "sp8-zigzag-packed-gqa": (dict(sp=8), "zigzag", None, True, (4, 2)),
    "sp2tp4-striped-blockcausal-kv<tp": (dict(sp=2, tp=4), "striped", 4, True, (4, 2)),
}


@pytest.mark.parametrize("case", list(RING_CASES), ids=list(RING_CASES))
def test_ring_with_pallas_kernel_matches_dense(case):
    sizes, layout, cbs, packed, (n, kh) = RING_CASES[case]
    mesh = make_mesh(sizes)
    cfg = AttentionConfig(
        backend="ring", layout=layout, causal_block_size=cbs, kernel="pallas",
        query_chunk_size=4, key_chunk_size=4, kernel_block_q=4, kernel_block_k=4,
    )  # fmt: skip
    op = make_attention(cfg, causal=True, mesh=mesh)
    q, k, v, w = make_inputs(n, kh)
    seg = packed_segments() if packed else None

    def ring(q, k, v):
        lay = [op.to_layout(x) for x in (q, k, v)]
        return op.from_layout(op(*lay, None if seg is None else op.to_layout(seg)))

    got = value_and_grads(ring, q, k, v, w)
    want = value_and_grads(
        lambda q, k, v: dense_attention(q, k, v, segment_ids_bt=seg, causal=True,
                                        causal_block_size=cbs), q, k, v, w)  # fmt: skip
    out_err, grad_errs = max_errs(got, want)
    assert out_err <= FP32_TOL, out_err
    for name, e in zip("qkv", grad_errs):
        assert e <= FP32_TOL, f"d{name}: {e}"


def _has_pallas_call(fn, *args) -> bool:
    return "pallas_call" in str(jax.make_jaxpr(fn)(*args))


def test_kernel_setting_dispatch_auto_is_xla_on_cpu():
    assert resolve_kernel("auto") == "xla" and resolve_kernel("auto", "gpu") == "pallas"
    assert resolve_kernel("auto", "tpu") == "pallas" and resolve_kernel("pallas") == "pallas"
    with pytest.raises(ConfigError, match="unknown attention kernel 'triton'"):
        resolve_kernel("triton")
    with pytest.raises(ConfigError, match="unknown attention kernel 'cuda'"):
        AttentionConfig(kernel="cuda")
    q, k, v, _ = make_inputs(4, 2)
    for kernel, fused in [("auto", False), ("xla", False), ("pallas", True)]:
        cfg = AttentionConfig(backend="blockwise", kernel=kernel, query_chunk_size=16)
        assert (choose_kernel(cfg) is not None) == fused
        assert _has_pallas_call(make_attention(cfg), q, k, v) == fused, kernel
        ring = AttentionConfig(backend="ring", kernel=kernel, query_chunk_size=16)
        op = make_attention(ring, mesh=make_mesh(dict(sp=2), jax.devices()[:2]))
        assert _has_pallas_call(op, q, k, v) == fused, kernel


def test_blockwise_op_with_pallas_matches_dense():
    q, k, v, w = make_inputs(4, 2)
    cfg = AttentionConfig(backend="blockwise", kernel="pallas", causal_block_size=16)
    got = value_and_grads(make_attention(cfg), q, k, v, w)
    want = value_and_grads(
        lambda q, k, v: dense_attention(q, k, v, causal_block_size=16), q, k, v, w
    )
    out_err, grad_errs = max_errs(got, want)
    assert max(out_err, *grad_errs) <= FP32_TOL


@pytest.mark.parametrize("platform, backend", [("cuda", "gpu"), ("tpu", "tpu")])
def test_kernels_lower_for_gpu_triton_and_tpu_mosaic(platform, backend):
    """Forward and both backward kernels lower (Triton IR / Mosaic MLIR) at the default
    tiles for a Hopper-sized head (bf16, head_dim 128, GQA, segments); compiling needs a device."""
    spec = KernelSpec(True, 128**-0.5, DEFAULT_BLOCKS[backend], backend, has_segments=True)
    q = jax.ShapeDtypeStruct((1, 4, 1024, 128), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 2, 1024, 128), jnp.bfloat16)
    pos, seg = positions(jnp.arange(1024), None), jnp.ones((1, 1, 1024), jnp.int32)

    def loss(q, k, v):
        return flash_attention_core(q, k, v, pos, seg, spec).astype(jnp.float32).sum()

    lowered = (
        jax.jit(jax.grad(loss, (0, 1, 2))).trace(q, kv, kv).lower(lowering_platforms=(platform,))
    )
    text = lowered.as_text()
    marker = "triton" if backend == "gpu" else "tpu_custom_call"
    assert marker in text.lower()


def test_fit_block():
    assert fit_block(128, 1024) == 128 and fit_block(128, 96) == 32 and fit_block(64, 48) == 16


def test_untileable_lengths_fall_back_for_auto_and_fail_for_forced_pallas(monkeypatch):
    import lwm.attention.pallas.ops as ops

    monkeypatch.setattr(ops, "platform", lambda: "gpu")
    auto, forced = ops.PallasChoice(), ops.PallasChoice(forced=True)
    assert ops.usable_kernel(auto, 1024, 1024, 128) is auto
    assert ops.usable_kernel(auto, 1000, 1000, 128) is None  # 8-row tiles: Triton's dot needs 16
    with pytest.raises(ConfigError, match="1000 tokens tiles into 8-row tiles"):
        ops.usable_kernel(forced, 1000, 1000, 128)
    monkeypatch.setattr(ops, "platform", lambda: "tpu")
    assert ops.usable_kernel(auto, 1024, 1024, 128) is auto
    assert ops.usable_kernel(auto, 64, 64, 128) is auto  # one tile spanning the whole axis
    assert ops.usable_kernel(auto, 1088, 1088, 128) is None  # 64-row tiles: not 128-lane
