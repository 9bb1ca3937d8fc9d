"""VQGAN model and quantizer: shapes, code ranges, straight-through, losses, restarts, loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from video_helpers import random_vqgan, tiny_vqgan_config

from lwm.checkpoint import Checkpointer
from lwm.config import load_config
from lwm.errors import LwmError
from lwm.video.config import VQGANConfig
from lwm.video.quantizer import VectorQuantizer, perplexity
from lwm.video.vqgan import VQGAN, make_decode_fn, make_encode_fn
from lwm.video.vqgan_checkpoint import load_vqgan, state_tree, vqgan_metadata

TINY = tiny_vqgan_config()


@pytest.fixture(scope="module")
def tiny():
    return random_vqgan(TINY, seed=0)


def _frames(n, r=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, r, r, 3), dtype=np.uint8)


def test_lwm_and_small_presets_have_the_documented_shapes():
    lwm = VQGANConfig.from_dict(load_config("vqgan_lwm").vqgan)
    assert (lwm.resolution, lwm.latent_size, lwm.codebook_size, lwm.embed_dim) == (
        256,
        16,
        8192,
        64,
    )
    assert lwm.channel_multipliers == (1, 2, 2, 4, 6)
    model = nnx.eval_shape(lambda: VQGAN(lwm, rngs=nnx.Rngs(0)))
    flat = {".".join(map(str, k)): v.shape for k, v in nnx.to_flat_state(nnx.state(model))}
    # A sample of the parameter names documented in lwm/video/vqgan.py.
    assert flat["encoder.conv_in.kernel"] == (3, 3, 3, 128)
    assert flat["encoder.down.1.blocks.0.shortcut.kernel"] == (1, 1, 128, 256)
    assert flat["encoder.down.0.downsample.kernel"] == (3, 3, 128, 128)
    assert "encoder.down.4.downsample.kernel" not in flat
    assert flat["encoder.mid.1.conv2.kernel"] == (3, 3, 768, 768)
    assert flat["encoder.conv_out.kernel"] == (3, 3, 768, 64)
    assert flat["quant_conv.kernel"] == (1, 1, 64, 64)
    assert flat["quantizer.codebook"] == (8192, 64)
    assert flat["quantizer.usage"] == (8192,)
    assert flat["decoder.conv_in.kernel"] == (3, 3, 64, 768)
    assert flat["decoder.up.1.upsample.kernel"] == (3, 3, 256, 256)
    assert flat["decoder.conv_out.kernel"] == (3, 3, 128, 3)
    assert not any("attn" in k for k in flat)
    codes = jax.eval_shape(
        lambda m, x: m.encode(x), model, jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.uint8)
    )
    assert codes.shape == (2, 16, 16) and codes.dtype == jnp.int32
    small = VQGANConfig.from_dict(load_config("vqgan_small").vqgan)
    assert (small.resolution, small.latent_size, small.codebook_size) == (64, 8, 1024)


def test_encode_decode_shapes_ranges_and_uint8_equals_float(tiny):
    x = _frames(3)
    encode = make_encode_fn(tiny)
    codes = np.asarray(encode(x))
    assert codes.shape == (3, 4, 4) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < TINY.codebook_size
    assert len(np.unique(codes)) > 1
    as_float = jnp.asarray(x, jnp.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(codes, np.asarray(encode(as_float)))
    out = np.asarray(make_decode_fn(tiny)(codes))
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    with pytest.raises(LwmError, match=r"expects frames \[B, 16, 16, 3\]"):
        encode(np.zeros((1, 15, 16, 3), np.uint8))


def test_quantizer_matches_bruteforce_oracle_and_straight_through():
    q = VectorQuantizer(8, 3, commitment_weight=0.25, rngs=nnx.Rngs(1))
    q.codebook[...] = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, 3, 3)), jnp.float32)
    z_q, codes, aux = nnx.jit(lambda q, z: q(z))(q, z)
    cb = np.asarray(q.codebook[...])
    dist = ((np.asarray(z)[..., None, :] - cb) ** 2).sum(-1)
    np.testing.assert_array_equal(np.asarray(codes), dist.argmin(-1))
    np.testing.assert_allclose(np.asarray(z_q), cb[dist.argmin(-1)], rtol=1e-6, atol=1e-6)
    mse = np.mean((np.asarray(z) - cb[dist.argmin(-1)]) ** 2)
    np.testing.assert_allclose(float(aux["codebook_loss"]), mse, rtol=1e-5)
    np.testing.assert_allclose(float(aux["vq_loss"]), 1.25 * mse, rtol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(aux["counts"]), np.bincount(dist.argmin(-1).ravel(), minlength=8)
    )
    # Straight-through: d sum(z_q * w) / dz = w.
    w = jnp.arange(z.size, dtype=jnp.float32).reshape(z.shape)
    g = jax.grad(lambda z: jnp.sum(q(z)[0] * w))(z)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w))
    # Codebook gets the codebook loss gradient; commitment reaches only z.
    gq = nnx.grad(lambda q: q(z)[2]["codebook_loss"])(q)
    assert float(jnp.abs(gq.codebook[...]).sum()) > 0
    assert float(perplexity(jnp.ones(8))) == pytest.approx(8.0)
    assert float(perplexity(jnp.array([5.0, 0, 0, 0]))) == pytest.approx(1.0)


def test_dead_codes_restart_from_encoder_outputs():
    q = VectorQuantizer(16, 2, dead_code_threshold=0.5, usage_decay=0.5, rngs=nnx.Rngs(0))
    z = jnp.asarray(np.random.default_rng(0).normal(size=(64, 2)) + 10.0, jnp.float32)
    q.update_usage(jnp.zeros(16).at[3].set(4.0))  # only code 3 used: usage 2.0
    before = np.asarray(q.codebook[...])
    n = int(q.restart_dead_codes(z, jax.random.key(0)))
    after = np.asarray(q.codebook[...])
    assert n == 15
    np.testing.assert_array_equal(after[3], before[3])
    # Restarted codes sit on (a small perturbation of) encoder outputs, far from the old init.
    nearest = np.min(((after[:, None] - np.asarray(z)[None]) ** 2).sum(-1), axis=1)
    assert np.all(np.delete(nearest, 3) < 0.1)
    assert float(q.usage[...][0]) == 1.0 and float(q.usage[...][3]) == 2.0


def _save(tmp_path, cfg, name="ck", meta=None):
    model = random_vqgan(cfg, seed=3)
    with Checkpointer(tmp_path / name, async_save=False) as c:
        c.save(5, {"model": state_tree(model)}, metadata=meta or vqgan_metadata(cfg), force=True)
    return model


def test_load_vqgan_round_trip_and_wrong_preset_errors(tmp_path):
    model = _save(tmp_path, TINY)
    loaded = load_vqgan(tmp_path / "ck", expect="vqgan_tiny")
    x = _frames(3, seed=5)
    np.testing.assert_array_equal(make_encode_fn(model)(x), make_encode_fn(loaded)(x))
    for k, v in nnx.to_flat_state(nnx.state(model)):
        np.testing.assert_array_equal(
            np.asarray(v[...]), np.asarray(dict(nnx.to_flat_state(nnx.state(loaded)))[k][...])
        )
    with pytest.raises(
        LwmError, match=r"ck: checkpoint is VQGAN preset 'vqgan_tiny'.*expected 'vqgan_lwm'"
    ):
        load_vqgan(tmp_path / "ck", expect="vqgan_lwm")
    _save(tmp_path, TINY, "llm", meta={"kind": "lm", "model": {}})
    with pytest.raises(LwmError, match="llm: not a VQGAN checkpoint"):
        load_vqgan(tmp_path / "llm")
    # Metadata that lies about the arrays (e.g. a hand-edited preset) is caught, not mis-loaded.
    lie = vqgan_metadata(VQGANConfig(**{**TINY.to_dict(), "codebook_size": 64}))
    _save(tmp_path, TINY, "lie", meta=lie)
    with pytest.raises(LwmError, match="lie: does not match its own VQGAN metadata"):
        load_vqgan(tmp_path / "lie")
    with pytest.raises(LwmError, match="no such checkpoint directory"):
        load_vqgan(tmp_path / "nothing")
