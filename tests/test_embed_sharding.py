"""The embedding lookup on a mesh: no involuntary full rematerialisation of the activations.

A lookup into a table sharded on its embedding dimension (fsdp x sp) comes out sharded on that
dimension; XLA could only move it to the activations' (batch, length) sharding by replicating the
whole `[B, T, D]` activation on every device (and said so with an "Involuntary full
rematerialization" warning) — at a 1M-token stage that is gigabytes per device. The forward and
backward passes are compiled here and XLA's log is read for that warning.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lwm.models.config import ModelConfig
from lwm.models.transformer import Transformer, init_model
from lwm.sharding import make_mesh

REMAT = "Involuntary full rematerialization"


@pytest.mark.parametrize("mesh_axes", [dict(fsdp=4, sp=2), dict(fsdp=2, tp=2, sp=2)])
def test_lookup_compiles_without_full_rematerialization(mesh_axes, capfd):
    mesh = make_mesh(dict(dp=1, fsdp=1, tp=1, sp=1) | mesh_axes, None)
    cfg = ModelConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        max_sequence_length=64,
        vision_vocab_size=40,
        vision_eof_id=38,
        vision_eov_id=39,
    )
    model = init_model(cfg, mesh=mesh)
    rows = NamedSharding(mesh, PartitionSpec(("dp", "fsdp"), "sp"))
    rng = np.random.default_rng(0)
    tokens = jax.device_put(rng.integers(0, 38, (4, 64)).astype(np.int32), rows)
    vision = jax.device_put(rng.random((4, 64)) < 0.5, rows)
    graphdef, state = nnx.split(model)

    def loss(state, tokens, vision):
        out = nnx.merge(graphdef, state)(tokens, vision_mask_bt=vision, output="both")
        text_btv, vision_btv = out.logits, out.vision_logits
        return jnp.mean(text_btv) + jnp.mean(vision_btv)

    capfd.readouterr()
    fn = jax.jit(jax.value_and_grad(loss))
    got, grads = fn(state, tokens, vision)
    err = capfd.readouterr().err
    assert REMAT not in err, err[:2000]

    # Same numbers as the unsharded model with the same weights.
    plain = Transformer(cfg, rngs=nnx.Rngs(1))
    nnx.update(plain, jax.device_get(nnx.state(model)))
    want = loss(nnx.state(plain), np.asarray(tokens), np.asarray(vision))
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
