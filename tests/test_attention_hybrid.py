"""Hybrid attention (all-to-all groups x zigzag ring) on 8 simulated devices: fwd and gradients vs
dense (grids 2x4 and 4x2, MHA and GQA), its layout and mesh view, its errors, 20 training steps
against the ring, and KV-cache decoding of a hybrid model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from model_fixtures import random_model

from lwm.attention import make_attention, mesh_sp
from lwm.attention.config import AttentionConfig
from lwm.attention.layout import natural_positions, to_layout
from lwm.errors import ConfigError
from lwm.inference.sampler import Sampler
from lwm.models.config import ModelConfig
from lwm.models.transformer import Transformer, param_shardings
from lwm.sharding import logical_to_spec, make_mesh
from lwm.sharding.mesh import sp_grid
from lwm.training.optimizer import make_optimizer, weight_decay_mask
from lwm.training.synthetic_data import synthetic_batch
from lwm.training.train_state import model_def, rng_data
from lwm.training.train_step import (
    batch_shardings,
    jit_train_step,
    make_train_step,
    state_shardings,
)
from tests.test_attention_ulysses import assert_matches_dense

# mesh, ulysses U (ring R = sp / U), layout, (heads, kv_heads), causal, causal_block_size, packed.
# U = 4 (2-way ring) with kv heads 1 and 2 (replicated 4x, 2x); U = 2 (4-way ring) with MHA and
# kv heads split (U = 8, a ring of one, is Ulysses: tests/test_attention_ulysses.py); heads over
# tp; the contiguous layout.
CASES = {
    "u4r2-kv1-causal-packed": (dict(sp=8), 4, "zigzag", (8, 1), True, None, True),
    "u4r2-kv2-blockcausal-contiguous": (dict(sp=8), 4, "contiguous", (8, 2), True, 4, False),
    "u2r4-mha-causal-packed": (dict(sp=8), 2, "zigzag", (8, 8), True, None, True),
    "u2r4-kv2-noncausal-packed": (dict(sp=8), 2, "zigzag", (4, 2), False, None, True),
    "sp4tp2-u2r2-kv2-blockcausal-packed": (dict(sp=4, tp=2), 2, "zigzag", (8, 2), True, 8, True),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_hybrid_matches_dense(case):
    sizes, ulysses, layout, (heads, kv_heads), causal, cbs, packed = CASES[case]
    cfg = AttentionConfig(
        backend="hybrid",
        ulysses=ulysses,
        layout=layout,
        query_chunk_size=4,
        key_chunk_size=8,
        causal_block_size=cbs,
    )
    op = make_attention(cfg, causal=causal, mesh=make_mesh(sizes))
    assert_matches_dense(op, heads, kv_heads, causal, cbs, packed)


def test_hybrid_mesh_view_and_layout():
    """The (ring, all-to-all) view keeps every device's rows; after the inner all-to-all each
    device holds its zigzag ring shard's rows in ring order."""
    mesh = make_mesh(dict(dp=2, sp=4))
    grid = sp_grid(mesh, 2)
    assert dict(grid.shape) == {"dp": 2, "fsdp": 1, "tp": 1, "sp": 2, "ulysses": 2}
    assert (grid.devices.reshape(mesh.devices.shape) == mesh.devices).all()
    assert mesh_sp(grid) == mesh_sp(mesh) == 4
    assert logical_to_spec(("batch", "length"), (4, 32), grid) == jax.P("dp", ("sp", "ulysses"))
    assert logical_to_spec(("batch", "length"), (4, 32), mesh) == jax.P("dp", "sp")
    assert logical_to_spec(("embed",), (64,), grid) == jax.P(("sp", "ulysses"))

    mesh8 = make_mesh(dict(sp=8))
    t, ring, group = 64, 2, 4
    x = np.arange(t, dtype=np.int32)[None]  # natural positions
    on_mesh = np.asarray(to_layout(jnp.asarray(x), "zigzag", mesh8, ring=ring))
    np.testing.assert_array_equal(on_mesh, to_layout(x, "zigzag", mesh8, ring=ring))
    blocks = on_mesh.reshape(ring, group * t // 8)  # ring shard r = its group's rows in order
    for r in range(ring):
        np.testing.assert_array_equal(blocks[r], natural_positions("zigzag", r, t // ring, ring))
    op = make_attention(AttentionConfig(backend="hybrid", ulysses=group), mesh=mesh8)
    np.testing.assert_array_equal(np.asarray(op.from_layout(jnp.asarray(on_mesh))), x)


def test_hybrid_errors_before_compute():
    mesh = make_mesh(dict(sp=8))

    def op(**kw):
        return make_attention(AttentionConfig(backend="hybrid", **kw), mesh=mesh)

    with pytest.raises(ConfigError, match="needs attention.ulysses"):
        op().check(64)
    with pytest.raises(ConfigError, match="attention.ulysses = 3 does not divide mesh.sp = 8"):
        op(ulysses=3).check(64)
    with pytest.raises(ConfigError, match="'striped' with backend hybrid"):
        op(ulysses=2, layout="striped").check(64)
    with pytest.raises(ConfigError, match=r"not divisible by 16 \(2 x sp, sp=8\)"):
        op(ulysses=2).check(72)
    with pytest.raises(ConfigError, match="not divisible by sp x query_chunk_size"):
        op(ulysses=2, query_chunk_size=12).check(128)
    with pytest.raises(ConfigError, match="3 kv heads cannot be split over the all-to-all group"):
        op(ulysses=2).check_heads(6, 3)
    with pytest.raises(ConfigError, match="6 query heads not divisible by the all-to-all group"):
        op(ulysses=4).check_heads(6, 2)
    op(ulysses=2).check_heads(6, 2)  # group 2 splits 6 heads and 2 kv heads
    op(ulysses=4).check(48, {"sp": 1})  # no sequence parallelism: single-device attention


TRAIN_CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    max_sequence_length=64,
)


def _losses(cfg: ModelConfig, mesh, steps: int = 20) -> list[float]:
    """`steps` jitted AdamW steps from the same host weights on two alternating batches."""
    mdef = model_def(cfg, mesh)
    opt = make_optimizer(
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.1,
        decay_mask=weight_decay_mask(mdef.abstract_pure_params()),
        clip_norm=1.0,
    )
    sched = optax.constant_schedule(1e-2)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda x: (0.2 * rng.standard_normal(x.shape)).astype(x.dtype),
        mdef.abstract_pure_params(),
    )
    st_sh = state_shardings(mdef, opt, mesh)
    state = {"step": np.asarray(0, np.int32), "params": params, "opt_state": opt.init(params)}
    state = jax.device_put({**state, "rng": np.asarray(rng_data(0))}, st_sh)
    b_sh = batch_shardings(mesh, 2, 32)
    step = jit_train_step(
        make_train_step(mdef, opt, sched, text_weight=1.0, vision_weight=0.0), st_sh, b_sh, mesh
    )
    losses = []
    for i in range(steps):
        host = synthetic_batch(i % 2, seed=0, batch_size=2, seq_len=32, vocab_size=64)
        state, metrics = step(state, {k: jax.device_put(v, b_sh[k]) for k, v in host.items()})
        losses.append(float(metrics["loss"]))
    return losses


def test_hybrid_training_matches_ring_over_20_steps():
    mesh = make_mesh(dict(sp=8))
    attn = dict(query_chunk_size=4, key_chunk_size=4, layout="zigzag")
    ring = _losses(TRAIN_CFG.replace(attention=dict(attn, backend="ring")), mesh)
    hybrid = _losses(TRAIN_CFG.replace(attention=dict(attn, backend="hybrid", ulysses=4)), mesh)
    assert ring[-1] < ring[0] - 0.5  # it learns: the comparison is not of two flat lines
    np.testing.assert_allclose(hybrid, ring, rtol=2e-5, atol=0)


def test_hybrid_model_decodes_with_its_sharded_cache():
    """Decoding keeps the cache sharded over sp; its logits equal the hybrid model's own
    no-cache forward (through the hybrid op, all-to-all and ring) on the same mesh."""
    mesh = make_mesh(dict(sp=8))
    cfg = ModelConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_layers=1,
        num_heads=4,
        num_kv_heads=2,
        max_sequence_length=64,
        attention=AttentionConfig(
            backend="hybrid", ulysses=4, query_chunk_size=8, key_chunk_size=8
        ),
    )
    model = random_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh), seed=0)
    model = nnx.merge(
        nnx.graphdef(model), jax.device_put(nnx.state(model), param_shardings(model, mesh))
    )
    sampler = Sampler(model, prefill_chunk=16, cache_block=8, max_cache_len=64)
    prompt, steps = np.random.default_rng(0).integers(3, 97, 21).tolist(), 6
    cache, length, hidden = sampler.start([prompt], max_new_tokens=steps)
    assert "sp" in jax.tree.leaves(tuple(cache.k.sharding.spec))
    gen = sampler.decode(cache, length, hidden, steps, return_logits=True)
    tokens = np.zeros((1, 64), np.int32)  # right padding is invisible to causal positions
    tokens[0, : len(prompt) + steps] = prompt + gen.tokens[0].tolist()
    full = np.asarray(nnx.jit(lambda m, t: m(t).logits)(model, jnp.asarray(tokens)))[0]
    want = full[len(prompt) - 1 : len(prompt) - 1 + steps]
    np.testing.assert_allclose(gen.logits[0], want, atol=1e-5, rtol=0)
