"""Blockwise attention vs dense: forward and gradients, masks, GQA, errors."""

import jax
import jax.numpy as jnp
import pytest

from lwm.attention import dense_attention, make_attention
from lwm.attention.config import AttentionConfig
from lwm.errors import ConfigError
from tests.test_attention_ring import (
    TOL,
    dense_value_and_grads,
    make_inputs,
    op_value_and_grads,
    packed_segments,
    rel_err,
)


@pytest.mark.parametrize(
    "causal, cbs, packed, heads, q_chunk, k_chunk",
    [
        (True, None, True, (4, 2), 8, 16),  # causal + packing + GQA, unequal chunks
        (True, 8, False, (2, 2), 16, 8),  # block-causal, MHA
        (False, None, True, (4, 1), 16, 16),  # bidirectional + packing, multi-query
    ],
    ids=["causal-packed-gqa", "blockcausal-mha", "noncausal-packed-mqa"],
)
def test_blockwise_matches_dense(causal, cbs, packed, heads, q_chunk, k_chunk):
    cfg = AttentionConfig(
        backend="blockwise",
        query_chunk_size=q_chunk,
        key_chunk_size=k_chunk,
        causal_block_size=cbs,
    )
    op = make_attention(cfg, causal=causal)
    q, k, v, w = make_inputs(*heads, seed=1)
    seg = packed_segments() if packed else None
    out, grads = op_value_and_grads(op, q, k, v, w, seg)
    want_out, want_grads = dense_value_and_grads(q, k, v, w, seg, causal, cbs)
    assert rel_err(out, want_out) <= TOL
    for name, got, want in zip("qkv", grads, want_grads):
        assert rel_err(got, want) <= TOL, f"d{name}"


def test_blockwise_memory_is_chunked():
    """Backward keeps no [T, T] tensor: the largest buffer is far below T^2 floats."""
    t, chunk = 1024, 64
    cfg = AttentionConfig(backend="blockwise", query_chunk_size=chunk, key_chunk_size=chunk)
    op = make_attention(cfg, causal=True)
    x = jax.ShapeDtypeStruct((1, t, 1, 8), jnp.float32)
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(op(q, k, v)), (0, 1, 2)))
    mem = grad.lower(x, x, x).compile().memory_analysis()
    if mem is None:
        pytest.skip("memory analysis not available on this backend")
    assert mem.temp_size_in_bytes < t * t * 4 // 4
    dense = jax.jit(jax.grad(lambda q, k, v: jnp.sum(dense_attention(q, k, v)), (0, 1, 2)))
    assert dense.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes >= t * t * 4


def _dots(jaxpr):
    """Every dot_general of a jaxpr and of its sub-jaxprs (scan, cond, custom_vjp bodies)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _dots(inner)


def test_blockwise_dots_contract_one_axis():
    """XLA:CPU lowers a dot that contracts two axes to a slow loop (dK/dV contracting (group,
    query rows) made the backward ~2.5x slower): every dot, forward and backward, contracts one."""
    cfg = AttentionConfig(backend="blockwise", query_chunk_size=16, key_chunk_size=16)
    op = make_attention(cfg, causal=True)
    q = jax.ShapeDtypeStruct((1, 64, 4, 8), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, 64, 2, 8), jnp.float32)  # GQA: 2 query heads per kv head
    grad = jax.grad(lambda q, k, v: jnp.sum(op(q, k, v)), (0, 1, 2))
    dots = list(_dots(jax.make_jaxpr(grad)(q, kv, kv).jaxpr))
    assert len(dots) >= 7  # forward: scores, p @ v; backward: scores, dp, dq, dk, dv
    for eqn in dots:
        (lhs_contract, rhs_contract), _ = eqn.params["dimension_numbers"]
        assert len(lhs_contract) == len(rhs_contract) == 1, eqn


@pytest.mark.parametrize(
    "cfg, heads, length, match",
    [
        (dict(query_chunk_size=24), (4, 2), 64, "query_chunk_size 24 does not divide"),
        (dict(key_chunk_size=0), (4, 2), 64, "key_chunk_size must be positive"),
        (dict(), (4, 3), 64, "num_kv_heads 3 does not divide num_heads 4"),
    ],
)
def test_blockwise_bad_input(cfg, heads, length, match):
    op = make_attention(AttentionConfig(backend="blockwise", **cfg), causal=True)
    q = jax.ShapeDtypeStruct((1, length, heads[0], 8), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, length, heads[1], 8), jnp.float32)
    with pytest.raises(ConfigError, match=match):
        jax.eval_shape(op, q, kv, kv)
