"""Parity with the reference `ringattention==0.1.2` package (contiguous layout, MHA)."""

import jax
import jax.numpy as jnp
import pytest

from lwm.attention.reference import load_reference, reference_ring_attention
from lwm.attention.ring import ring_attention
from lwm.sharding import make_mesh
from tests.test_attention_ring import TOL, make_inputs, rel_err

pytestmark = pytest.mark.skipif(
    load_reference() is None, reason="ringattention (dev extra) is not installed"
)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_ring_matches_reference_package(causal):
    mesh = make_mesh(dict(dp=2, sp=4))
    q, k, v, w = make_inputs(4, 4, seed=2)
    ref = reference_ring_attention(mesh, causal=causal, query_chunk_size=8, key_chunk_size=8)

    def ours(q, k, v):
        return ring_attention(
            q, k, v, mesh=mesh, causal=causal, query_chunk_size=8, key_chunk_size=8,
            layout="contiguous",
        )  # fmt: skip

    def value_and_grads(fn):
        def loss(q, k, v):
            out = fn(q, k, v)
            return jnp.sum(out * w), out

        return jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)

    (_, out), grads = value_and_grads(ours)
    (_, want), want_grads = value_and_grads(ref)
    assert rel_err(out, want) <= TOL
    for name, got, exp in zip("qkv", grads, want_grads):
        assert rel_err(got, exp) <= TOL, f"d{name}"
