"""The LLaMA/LWM model: vision path, GQA, packing, blockwise FFN, sharding, dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm.errors import ConfigError
from lwm.models.config import ModelConfig
from lwm.models.io import get_params, set_params
from lwm.models.transformer import Transformer, init_model
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


def _model(seed=0, **kw):
    return Transformer(ModelConfig(**{**SMALL, **kw}), rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def vision_model():
    return _model(vision_vocab_size=40, vision_eof_id=32, vision_eov_id=33)


def _forward(model, tokens, vision_mask, output):
    out = model(jnp.asarray(tokens), vision_mask_bt=jnp.asarray(vision_mask), output=output)
    return {"text": out.logits, "vision": out.vision_logits}.get(
        output, (out.logits, out.vision_logits)
    )


def test_vision_tables_and_heads_are_separate(vision_model):
    rng = np.random.default_rng(0)
    t = 12
    vision_mask = np.zeros((1, t), bool)
    vision_mask[0, 6:] = True  # text prefix, then vision codes
    tokens = np.where(vision_mask, rng.integers(0, 40, (1, t)), rng.integers(0, 97, (1, t)))
    text0, vis0 = _forward(vision_model, tokens, vision_mask, "both")
    assert text0.shape == (1, t, 97) and vis0.shape == (1, t, 40)
    np.testing.assert_array_equal(_forward(vision_model, tokens, vision_mask, "text"), text0)
    np.testing.assert_array_equal(_forward(vision_model, tokens, vision_mask, "vision"), vis0)

    # Perturbing the vision embedding table changes nothing at the text-only prefix...
    state = nnx.state(vision_model)
    original = state["embed"]["vision"][...]
    state["embed"]["vision"][...] = original + 1.0
    nnx.update(vision_model, state)
    text1, vis1 = _forward(vision_model, tokens, vision_mask, "both")
    np.testing.assert_array_equal(text1[:, :6], text0[:, :6])
    np.testing.assert_array_equal(vis1[:, :6], vis0[:, :6])
    # ...and changes the vision positions (so the vision table is really used there).
    assert np.max(np.abs(text1[:, 6:] - text0[:, 6:])) > 1e-3
    state["embed"]["vision"][...] = original
    nnx.update(vision_model, state)

    # Perturbing the text table leaves an all-vision input untouched.
    all_vision = np.ones((1, t), bool)
    codes = rng.integers(0, 40, (1, t))
    before = _forward(vision_model, codes, all_vision, "vision")
    original_text = state["embed"]["text"][...]
    state["embed"]["text"][...] = original_text * 3.0
    nnx.update(vision_model, state)
    np.testing.assert_array_equal(_forward(vision_model, codes, all_vision, "vision"), before)
    state["embed"]["text"][...] = original_text
    nnx.update(vision_model, state)

    # The vision head is its own matrix: scaling it scales vision logits, not text logits.
    state["vision_head"][...] = state["vision_head"][...] * 2.0
    nnx.update(vision_model, state)
    text2, vis2 = _forward(vision_model, tokens, vision_mask, "both")
    np.testing.assert_array_equal(text2, text0)
    np.testing.assert_allclose(vis2, 2 * vis0, rtol=1e-5, atol=1e-5)


def test_text_model_rejects_vision_output():
    with pytest.raises(ValueError, match="no vision head"):
        _model()(jnp.zeros((1, 4), jnp.int32), output="vision")


def test_gqa_equals_mha_with_repeated_kv_heads():
    """GQA grouping: query head j uses KV head j // (N/K), as an MHA model with repeated K/V."""
    gqa = _model(num_kv_heads=2)
    mha = _model(num_kv_heads=4)
    params = get_params(gqa)
    for i in range(2):
        attn = params["blocks"][str(i)]["attn"]
        for name in ("wk", "wv"):
            attn[name] = np.repeat(np.asarray(attn[name]), 2, axis=1)
    set_params(mha, params)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 97, (2, 16)))
    np.testing.assert_allclose(gqa(tokens).logits, mha(tokens).logits, atol=1e-5, rtol=1e-5)


def test_packed_segments_are_independent():
    """A packed row [A | B] with positions restarting gives B the same logits as B alone."""
    model = _model()
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 97, 7), rng.integers(0, 97, 9)
    packed = np.concatenate([a, b])[None]
    seg = np.array([[1] * 7 + [2] * 9])
    pos = np.array([list(range(7)) + list(range(9))])
    out = model(
        jnp.asarray(packed), positions_bt=jnp.asarray(pos), segment_ids_bt=jnp.asarray(seg)
    ).logits
    alone = model(jnp.asarray(b[None])).logits
    np.testing.assert_allclose(out[0, 7:], alone[0], atol=1e-5, rtol=1e-5)
    # Without segment ids, B would see A: the test above is not vacuous.
    leaky = model(jnp.asarray(packed), positions_bt=jnp.asarray(pos)).logits
    assert np.max(np.abs(leaky[0, 7:] - alone[0])) > 1e-3


def test_blockwise_ffn_matches_full():
    full = _model()
    chunked = Transformer(full.config.replace(ffn_chunk_size=4), rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 97, (2, 16)))

    def loss(m):
        return jnp.mean(m(tokens).logits ** 2)

    np.testing.assert_allclose(chunked(tokens).logits, full(tokens).logits, atol=1e-6, rtol=1e-6)
    g_full = nnx.grad(loss)(full)
    g_chunk = nnx.grad(loss)(chunked)
    for x, y in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_chunk)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5)


def test_sharded_model_matches_single_device():
    cfg = ModelConfig(**SMALL)
    mesh = make_mesh(dict(dp=1, fsdp=2, tp=2, sp=2))
    sharded = init_model(cfg, seed=0, mesh=mesh)
    single = init_model(cfg, seed=0)
    wq = nnx.state(sharded)["blocks"][0]["attn"]["wq"][...]
    assert len(wq.sharding.device_set) == 8
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 97, (2, 16)))
    out = nnx.jit(lambda m, t: m(t))(sharded, tokens)
    np.testing.assert_allclose(out.logits, single(tokens).logits, atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_close_to_fp32():
    fp32 = _model()
    bf16 = Transformer(fp32.config.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 97, (1, 16)))
    out = bf16(tokens).logits
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), fp32(tokens).logits, atol=0.05)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_heads=4, num_kv_heads=3), "num_kv_heads 3 must divide num_heads 4"),
        (dict(hidden_size=30, num_heads=4), "not divisible by num_heads"),
        (dict(vision_vocab_size=10, vision_eof_id=8192), "outside vision_vocab_size"),
        (dict(dtype="float8"), "unknown dtype"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**{**SMALL, **kw})


def test_every_call_returns_one_model_output(vision_model):
    """Text, vision, both, with or without a cache: one `ModelOutput` (a pytree, so it comes
    out of `nnx.jit` as is); `init_cache` beside `__call__` gives the cache the call extends."""
    from lwm.cache.slots import CacheSlots
    from lwm.models.output import ModelOutput

    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 30, (2, 8)), jnp.int32)
    call = nnx.jit(lambda m, t, output: m(t, output=output), static_argnames="output")
    outs = {o: call(vision_model, tokens, output=o) for o in ("text", "vision", "both")}
    for o, out in outs.items():
        assert isinstance(out, ModelOutput) and out.cache is None
        assert (out.logits is None) == (o == "vision")
        assert (out.vision_logits is None) == (o == "text")
    assert outs["both"].logits.shape == (2, 8, 97)
    assert outs["both"].vision_logits.shape == (2, 8, 40)
    np.testing.assert_array_equal(outs["both"].logits, outs["text"].logits)
    np.testing.assert_array_equal(outs["both"].vision_logits, outs["vision"].vision_logits)

    cache = vision_model.init_cache(2, 16)
    assert (cache.batch, cache.capacity, cache.num_layers) == (2, 16, 2)
    slots = CacheSlots.for_chunk(cache.valid, jnp.ones((2, 8), jnp.int32), jnp.int32(0))
    out = vision_model(tokens, output="both", cache=cache, cache_slots=slots)
    assert isinstance(out, ModelOutput) and out.cache.capacity == 16
    np.testing.assert_allclose(out.logits, outs["both"].logits, atol=1e-5, rtol=1e-5)
    assert np.asarray(out.cache.next_pos).tolist() == [8, 8]
    with pytest.raises(ValueError, match="cache_slots"):
        vision_model(tokens, cache=cache)
