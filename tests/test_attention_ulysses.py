"""Ulysses attention (all-to-all over sp) vs dense on 8 simulated devices: forward and gradients,
MHA and GQA (kv heads replicated up to the group), causal / block-causal / packed; its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm.attention import dense_attention, make_attention
from lwm.attention.config import AttentionConfig
from lwm.attention.ulysses import kv_repeat
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
    """Two packed rows: uneven documents (crossing device blocks), padding (id 0) in row 1."""
    row0 = np.repeat([1, 2, 3, 4], [10, 23, 17, 14])
    row1 = np.repeat([5, 6, 0], [30, 22, 12])
    return jnp.asarray(np.stack([row0, row1]), jnp.int32)


def assert_matches_dense(op, heads, kv_heads, causal, cbs, packed):
    """The model's usage (to_layout at entry, from_layout at exit) under jit, fwd and grads."""
    q, k, v, w = make_inputs(heads, kv_heads)
    seg = packed_segments() if packed else None

    def value_and_grads(attend, layout, unlayout):
        def loss(q, k, v):
            s = None if seg is None else layout(seg)
            out = unlayout(attend(layout(q), layout(k), layout(v), s))
            return jnp.sum(out * w), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
        return out, grads

    def dense(q, k, v, s):
        return dense_attention(q, k, v, segment_ids_bt=s, causal=causal, causal_block_size=cbs)

    out, grads = value_and_grads(op, op.to_layout, op.from_layout)
    want, want_grads = value_and_grads(dense, lambda x: x, lambda x: x)
    assert rel_err(out, want) <= TOL
    for name, got, ref in zip("qkv", grads, want_grads):
        assert rel_err(got, ref) <= TOL, f"d{name}"


# mesh, (heads, kv_heads), causal, causal_block_size, packed: group 8 with MHA and with kv heads
# 1 and 2 (replicated 8x and 4x), group 4 with batch over dp and with heads over tp, non-causal.
CASES = {
    "sp8-mha-causal-packed": (dict(sp=8), (8, 8), True, None, True),
    "sp8-kv2-blockcausal": (dict(sp=8), (8, 2), True, 4, False),
    "sp8-kv1-causal-packed": (dict(sp=8), (8, 1), True, None, True),
    "sp4dp2-kv8of16-noncausal-packed": (dict(dp=2, sp=4), (16, 8), False, None, True),
    "sp4tp2-kv2-causal-packed": (dict(sp=4, tp=2), (8, 2), True, None, True),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_ulysses_matches_dense(case):
    sizes, (heads, kv_heads), causal, cbs, packed = CASES[case]
    cfg = AttentionConfig(
        backend="ulysses", query_chunk_size=16, key_chunk_size=8, causal_block_size=cbs
    )
    op = make_attention(cfg, causal=causal, mesh=make_mesh(sizes))
    assert_matches_dense(op, heads, kv_heads, causal, cbs, packed)


def test_kv_replication_rules():
    assert kv_repeat(8, 8, 4) == 1  # kv heads split over the group like the query heads
    assert kv_repeat(8, 2, 8) == 4 and kv_repeat(32, 8, 16) == 2  # replicated up to the group
    assert kv_repeat(8, 1, 4) == 4


def test_ulysses_errors_before_compute():
    mesh = make_mesh(dict(sp=8))
    op = make_attention(AttentionConfig(backend="ulysses"), mesh=mesh)
    with pytest.raises(ConfigError, match="6 query heads not divisible by the all-to-all group"):
        op.check_heads(6, 2)
    with pytest.raises(ConfigError, match="3 kv heads cannot be split over the all-to-all group"):
        op.check_heads(6, 3, {"sp": 2})
    with pytest.raises(ConfigError, match=r"4 query heads per tp shard \(tp = 2\)"):
        op.check_heads(8, 8, {"tp": 2, "sp": 8})
    with pytest.raises(ConfigError, match="seq_len 100 not divisible by sp = 8"):
        op.check(100)
    with pytest.raises(ConfigError, match="query_chunk_size 48 does not divide"):
        make_attention(AttentionConfig(backend="ulysses", query_chunk_size=48), mesh=mesh).check(64)
    with pytest.raises(ConfigError, match="read by backend hybrid only"):
        AttentionConfig(backend="ring", ulysses=4)
    with pytest.raises(ConfigError, match="leave it 0 or use backend hybrid"):
        make_attention(AttentionConfig(backend="ulysses", ulysses=4), mesh=mesh).check(64)
    q, k, v, _ = make_inputs(6, 2)
    with pytest.raises(ConfigError, match="6 query heads"):  # the call refuses at trace time
        jax.eval_shape(op, q, k, v)


def test_ulysses_without_sequence_parallelism_is_blockwise():
    op = make_attention(AttentionConfig(backend="ulysses", query_chunk_size=16), mesh=None)
    q, k, v, _ = make_inputs(4, 2)
    assert rel_err(jax.jit(op)(q, k, v), dense_attention(q, k, v, causal=True)) <= TOL
