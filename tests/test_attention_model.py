"""The full model with `ring` attention on an 8-device mesh equals `dense` on one device."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm.models.config import ModelConfig
from lwm.models.transformer import init_model
from lwm.sharding import make_mesh

SMALL = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    rope_theta=1e5,
)


def _loss_and_grads(model, tokens, segments, weights):
    @nnx.jit
    def run(model, tokens, segments, weights):
        def loss(model):
            logits = model(tokens, segment_ids_bt=segments).logits
            return jnp.sum(logits * weights), logits

        (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model)
        return logits, grads

    return run(model, tokens, segments, weights)


def test_ring_model_matches_dense_model_with_packing():
    dense_cfg = ModelConfig(**SMALL)
    ring_cfg = dense_cfg.replace(
        attention=dict(backend="ring", query_chunk_size=4, key_chunk_size=4, layout="zigzag")
    )
    mesh = make_mesh(dict(fsdp=2, sp=4))
    dense = init_model(dense_cfg, seed=0)
    ring = init_model(ring_cfg, seed=0, mesh=mesh)
    rng = np.random.default_rng(0)
    b, t = 2, 32
    tokens = jnp.asarray(rng.integers(1, 97, (b, t)), jnp.int32)
    segments = jnp.asarray(
        np.stack([np.repeat([1, 2, 3], [9, 15, 8]), np.repeat([4, 0], [20, 12])])
    )
    weights = jnp.asarray(rng.standard_normal((b, t, 97)), jnp.float32)
    want_logits, want_grads = _loss_and_grads(dense, tokens, segments, weights)
    logits, grads = _loss_and_grads(ring, tokens, segments, weights)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    flat_want = jax.tree.leaves(nnx.to_pure_dict(want_grads))
    flat_got = jax.tree.leaves(nnx.to_pure_dict(grads))
    assert len(flat_got) == len(flat_want) > 0
    for got, want in zip(flat_got, flat_want):
        err = float(jnp.linalg.norm(got - want) / (jnp.linalg.norm(want) + 1e-30))
        assert err <= 1e-5
