"""Ring attention vs dense on simulated CPU meshes (forward, gradients), errors, block skipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm.attention import dense_attention, make_attention
from lwm.attention.blockwise import FULL, PARTIAL, SKIP, MaskSpec, block_kinds
from lwm.attention.config import AttentionConfig
from lwm.attention.layout import natural_positions
from lwm.errors import ConfigError
from lwm.sharding import make_mesh

B, T, H = 2, 64, 8
TOL = 1e-5


def rel_err(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def make_inputs(num_heads: int, num_kv_heads: int, seed: int = 0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (B, T, num_heads, H), jnp.float32)
    k = jax.random.normal(ks[1], (B, T, num_kv_heads, H), jnp.float32)
    v = jax.random.normal(ks[2], (B, T, num_kv_heads, H), jnp.float32)
    w = jax.random.normal(ks[3], (B, T, num_heads, H), jnp.float32)  # cotangent weights
    return q, k, v, w


def packed_segments() -> jnp.ndarray:
    """Two packed rows: uneven documents, with padding (id 0) at the end of row 1."""
    row0 = np.repeat([1, 2, 3, 4], [10, 23, 17, 14])
    row1 = np.repeat([5, 6, 0], [30, 22, 12])
    return jnp.asarray(np.stack([row0, row1]), jnp.int32)


def dense_value_and_grads(q, k, v, w, seg, causal, cbs):
    def loss(q, k, v):
        out = dense_attention(q, k, v, segment_ids_bt=seg, causal=causal, causal_block_size=cbs)
        return jnp.sum(out * w), out

    (_, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
    return out, grads


def op_value_and_grads(op, q, k, v, w, seg):
    """The model's usage: to_layout at entry, attention in layout order, from_layout at exit."""

    @jax.jit
    def run(q, k, v, w, seg):
        def loss(q, k, v):
            lay = [op.to_layout(x) for x in (q, k, v)]
            seg_l = None if seg is None else op.to_layout(seg)
            out = op.from_layout(op(*lay, seg_l))
            return jnp.sum(out * w), out

        (_, out), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v)
        return out, grads

    return run(q, k, v, w, seg)


# mesh, layout, causal, causal_block_size, segments, (heads, kv_heads): together they cover
# sp = 1, 2, 4, 8; all layouts; causal / block-causal / not; packing; MHA and GQA, including kv
# heads that do not divide tp (2 kv heads over tp=4) and batch sharded over dp/fsdp.
CASES = {
    "sp8-zigzag-causal-packed-gqa": (dict(sp=8), "zigzag", True, None, True, (4, 2)),
    "sp4dp2-striped-blockcausal-mha": (dict(dp=2, sp=4), "striped", True, 4, False, (4, 4)),
    "sp2tp4-contiguous-packed-gqa-kv<tp": (
        dict(sp=2, tp=4),
        "contiguous",
        True,
        None,
        True,
        (4, 2),
    ),
    "sp4tp2-zigzag-noncausal-packed-gqa-irregular": (
        dict(sp=4, tp=2),
        "zigzag",
        False,
        None,
        True,
        (6, 3),
    ),
    "sp1-zigzag-causal-gqa": (dict(fsdp=2, sp=1, dp=4), "zigzag", True, None, False, (4, 1)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_ring_matches_dense(case):
    sizes, layout, causal, cbs, packed, (heads, kv_heads) = CASES[case]
    mesh = make_mesh(sizes)
    cfg = AttentionConfig(
        backend="ring",
        query_chunk_size=4,
        key_chunk_size=8 if layout != "zigzag" else 4,
        causal_block_size=cbs,
        layout=layout,
    )
    op = make_attention(cfg, causal=causal, mesh=mesh)
    q, k, v, w = make_inputs(heads, kv_heads)
    seg = packed_segments() if packed else None
    out, grads = op_value_and_grads(op, q, k, v, w, seg)
    want_out, want_grads = dense_value_and_grads(q, k, v, w, seg, causal, cbs)
    assert rel_err(out, want_out) <= TOL
    for name, got, want in zip("qkv", grads, want_grads):
        assert rel_err(got, want) <= TOL, f"d{name}"


def test_ring_without_mesh_runs_locally():
    cfg = AttentionConfig(backend="ring", query_chunk_size=16, key_chunk_size=16)
    op = make_attention(cfg, causal=True, mesh=None)
    q, k, v, _ = make_inputs(4, 2)
    want = dense_attention(q, k, v, causal=True)
    assert rel_err(jax.jit(op)(q, k, v), want) <= TOL


@pytest.mark.parametrize(
    "sizes, cfg, heads, length, match",
    [
        (dict(sp=4), dict(layout="zigzag"), (4, 2), 60, "sequence length 60 is not divisible by 8"),
        (dict(sp=4), dict(layout="contiguous"), (4, 2), 66, "66 is not divisible by 4"),
        (dict(sp=2), dict(layout="zigzag", query_chunk_size=12), (4, 2), 64, "12 does not divide"),
        (dict(sp=2), dict(layout="contiguous", key_chunk_size=24), (4, 2), 64, "24 does not div"),
        (dict(sp=2), dict(layout="zigzag"), (4, 3), 64, "num_kv_heads 3 does not divide num_h"),
    ],
)
def test_ring_bad_input_errors_at_trace_time(sizes, cfg, heads, length, match):
    mesh = make_mesh(sizes, jax.devices()[: sizes["sp"]])
    op = make_attention(AttentionConfig(backend="ring", **cfg), causal=True, mesh=mesh)
    n, kh = heads
    q = jax.ShapeDtypeStruct((1, length, n, H), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, length, kh, H), jnp.float32)
    with pytest.raises(ConfigError, match=match):
        jax.eval_shape(op, q, kv, kv)


def _kinds_per_step(layout: str, sp: int, length: int, chunk: int) -> np.ndarray:
    """Number of computed (non-skipped) chunk pairs, per device and ring step."""
    spec = MaskSpec(causal=True, causal_block_size=None, q_chunk=chunk, k_chunk=chunk)
    local = length // sp
    work = np.zeros((sp, sp), int)
    for me in range(sp):
        q_idx = natural_positions(layout, me, local, sp).reshape(-1, chunk)
        for step in range(sp):
            kv_idx = natural_positions(layout, (me - step) % sp, local, sp).reshape(-1, chunk)
            kinds = np.asarray(block_kinds(q_idx, kv_idx, None, None, spec))
            work[me, step] = (kinds != SKIP).sum()
    return work


def test_causal_block_skipping_and_zigzag_balance():
    # contiguous: the first device idles after step 0 while the last one works at every step
    contiguous = _kinds_per_step("contiguous", 4, 128, 8)
    assert contiguous[0, 1:].sum() == 0 and (contiguous[3] > 0).all()
    # zigzag: identical work on every device at every step after the first
    zigzag = _kinds_per_step("zigzag", 4, 128, 8)
    assert (zigzag[:, 1:] == zigzag[0, 1]).all() and (zigzag[:, 0] == zigzag[0, 0]).all()
    # both compute exactly the 16 * 17 / 2 chunk pairs on or below the diagonal, out of 16 * 16
    assert contiguous.sum() == zigzag.sum() == 16 * 17 // 2


def test_block_kinds_with_segments():
    spec = MaskSpec(causal=False, causal_block_size=None, q_chunk=4, k_chunk=4)
    idx = jnp.arange(16).reshape(4, 4)
    seg = jnp.asarray([[1] * 4 + [2] * 8 + [3] * 4]).reshape(1, 4, 4).transpose(1, 0, 2)
    kinds = np.asarray(block_kinds(idx, idx, seg, seg, spec))
    expected = np.array(
        [[FULL, SKIP, SKIP, SKIP], [SKIP, FULL, FULL, SKIP], [SKIP, FULL, FULL, SKIP],
         [SKIP, SKIP, SKIP, FULL]]
    )  # fmt: skip
    np.testing.assert_array_equal(kinds, expected)
    causal = MaskSpec(causal=True, causal_block_size=None, q_chunk=4, k_chunk=4)
    kinds = np.asarray(block_kinds(idx, idx, seg, seg, causal))
    assert kinds[1, 1] == PARTIAL and kinds[2, 1] == FULL and kinds[1, 2] == SKIP
