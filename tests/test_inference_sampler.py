"""KV-cache sampler against the no-cache forward pass (the oracle), on 1 device and on sp=8."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_fixtures import random_model  # noqa: E402

from lwm.errors import LwmError
from lwm.inference.sampler import DecodeMode, Sampler
from lwm.inference.sampling import SamplingConfig, filter_logits, sample_logits
from lwm.inference.video_generation import frame_schedule
from lwm.models.config import ModelConfig
from lwm.models.transformer import Transformer, param_shardings
from lwm.sharding import make_mesh

TEXT = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    rope_theta=1e5,
    max_sequence_length=96,
)
# Vision model: scanned layers (the other layer path), 3x1 "frames" of codes 0..29.
VISION = dict(TEXT, vision_vocab_size=40, vision_eof_id=32, vision_eov_id=33, scan_layers=True)
TPF, N_CODES = 3, 30
TOL = 1e-5


def _prompts(rng, lengths, vocab=97):
    return [rng.integers(3, vocab, n).tolist() for n in lengths]


@pytest.fixture(scope="module")
def text_model():
    return random_model(lambda: Transformer(ModelConfig(**TEXT), rngs=nnx.Rngs(0)), seed=0)


@pytest.fixture(scope="module")
def vision_model():
    return random_model(lambda: Transformer(ModelConfig(**VISION), rngs=nnx.Rngs(0)), seed=1)


@pytest.fixture(scope="module")
def text_sampler(text_model):
    # Small chunks and key blocks: several prefill chunks and cache blocks are exercised.
    # A fixed capacity keeps every request on the same compiled shapes.
    return Sampler(text_model, prefill_chunk=16, cache_block=16, max_cache_len=128)


def _on_mesh(model, mesh):
    """The same weights placed on `mesh` by their logical-axis shardings (no re-init)."""
    abstract = nnx.eval_shape(lambda: Transformer(model.config, rngs=nnx.Rngs(0), mesh=mesh))
    graphdef, _ = nnx.split(abstract)
    state = jax.device_put(nnx.state(model), param_shardings(abstract, mesh))
    return nnx.merge(graphdef, state)


ORACLE_LEN = 48


@functools.partial(nnx.jit, static_argnames="output")
def _forward(model, tokens, vision, output):
    out = model(tokens, vision_mask_bt=vision, output=output)
    return out.logits if output == "text" else out.vision_logits


def _full_logits(model, tokens, vision=None, output="text"):
    """No-cache forward of one sequence, right-padded to ORACLE_LEN: causal attention makes
    the padding invisible to the real positions, and one compile serves every sequence."""
    n = len(tokens)
    assert n <= ORACLE_LEN
    padded = np.zeros((1, ORACLE_LEN), np.int32)
    padded[0, :n] = tokens
    mask = np.zeros((1, ORACLE_LEN), bool)
    if vision is not None:
        mask[0, :n] = vision
    out = _forward(model, jnp.asarray(padded), jnp.asarray(mask), output)
    return np.asarray(out)[0, :n]


def _check_text(model, sampler, prompts, steps):
    """Returns the cache's sharding spec and its shard shapes (the cache is donated to decode)."""
    cache, length, hidden = sampler.start(prompts, max_new_tokens=steps)
    spec = getattr(cache.k.sharding, "spec", None)
    layout = (spec, cache.k.shape, cache.k.addressable_shards[0].data.shape)
    gen = sampler.decode(cache, length, hidden, steps, return_logits=True)
    assert gen.tokens.shape == (len(prompts), steps)
    for b, p in enumerate(prompts):
        full = _full_logits(model, p + gen.tokens[b].tolist())
        want = full[len(p) - 1 : len(p) - 1 + steps]
        np.testing.assert_allclose(gen.logits[b], want, atol=TOL, rtol=0)
        np.testing.assert_array_equal(gen.tokens[b], want.argmax(-1))
    return layout


def _vision_case(rng, text_len):
    """A text prompt and one encoded frame; then two frames are decoded in vision mode."""
    text = rng.integers(3, 97, text_len).tolist()
    frame = rng.integers(0, N_CODES, TPF).tolist() + [32]
    return text + frame, [False] * len(text) + [True] * len(frame)


def _check_vision(model, sampler, rng):
    """Batch of two vision prompts (left padding) decoding frames with forced separators."""
    cases = [_vision_case(rng, 5), _vision_case(rng, 11)]
    prompts, masks = [c[0] for c in cases], [c[1] for c in cases]
    forced = frame_schedule(2, TPF, 32, 33)
    steps = len(forced)
    cache, length, hidden = sampler.start(prompts, max_new_tokens=steps, vision_masks=masks)
    mode = DecodeMode(output="vision", num_codes=N_CODES)
    forced_b = np.repeat(forced[:, None], 2, axis=1)
    gen = sampler.decode(
        cache, length, hidden, steps, mode=mode, forced=forced_b, return_logits=True
    )
    for b, (prompt, vision) in enumerate(cases):
        toks = gen.tokens[b]
        assert toks[TPF] == 32 and toks[-1] == 33  # end-of-frame / end-of-video forced
        assert np.all(toks[forced < 0] < N_CODES)  # sampled codes stay in the codebook
        full = _full_logits(model, prompt + toks.tolist(), vision + [True] * steps, "vision")
        want = full[len(prompt) - 1 : len(prompt) - 1 + steps]
        np.testing.assert_allclose(gen.logits[b], want, atol=TOL, rtol=0)
        np.testing.assert_array_equal(toks[forced < 0], want[forced < 0, :N_CODES].argmax(-1))


def test_cached_decode_matches_full_forward_text(text_model, text_sampler):
    """Left-padded batch (29 and 7 tokens: two prefill chunks), logits of every step."""
    rng = np.random.default_rng(0)
    _check_text(text_model, text_sampler, _prompts(rng, [29, 7]), steps=12)


def test_cached_decode_matches_full_forward_vision(vision_model):
    sampler = Sampler(vision_model, prefill_chunk=8, cache_block=16)
    _check_vision(vision_model, sampler, np.random.default_rng(1))


def test_sharded_cache_on_sp_mesh(vision_model):
    """Same weights on an sp=8 mesh: the cache is sharded over sp and decoding text and vision
    still matches the single-device no-cache forward."""
    mesh = make_mesh({"sp": 8})
    rng = np.random.default_rng(2)
    sharded = _on_mesh(vision_model, mesh)
    sampler = Sampler(sharded, prefill_chunk=16, cache_block=8, max_cache_len=128)
    spec, shape, shard = _check_text(vision_model, sampler, _prompts(rng, [21, 9]), steps=6)
    assert spec[2] == "sp" and shard[2] == shape[2] // 8  # slots spread over sp
    _check_vision(vision_model, sampler, rng)


def test_chunked_prefill_equals_single_pass(text_model):
    prompt = np.random.default_rng(3).integers(3, 97, 45).tolist()
    caches = {}
    for chunk in (8, 64):
        sampler = Sampler(text_model, prefill_chunk=chunk, cache_block=16)
        cache, length, hidden = sampler.start([prompt], max_new_tokens=1)
        valid = np.asarray(cache.valid[0]).astype(bool)
        assert valid.sum() == 45 and sampler.counts["prefill_calls"] == -(-45 // chunk)
        caches[chunk] = (
            np.asarray(cache.k)[:, 0, valid],
            np.asarray(cache.v)[:, 0, valid],
            np.asarray(hidden),
            int(cache.next_pos[0]),
        )
    for a, b in zip(caches[8], caches[64]):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


def test_prefix_reuse_equals_fresh_runs(text_sampler):
    rng = np.random.default_rng(4)
    prefix = rng.integers(3, 97, 20).tolist()
    suffixes = _prompts(rng, [5, 2, 9, 4])
    sampler = text_sampler
    before = sampler.counts["prefill_tokens"]
    pre = sampler.prefill(prefix)
    first = sampler.generate_from(pre, suffixes[:2], max_new_tokens=6)
    second = sampler.generate_from(pre, suffixes[2:], max_new_tokens=6)
    # The prefix was prefilled once; later calls only prefilled the suffixes.
    assert sampler.counts["prefill_tokens"] - before == 20 + 5 + 2 + 9 + 4
    fresh = sampler.generate([prefix + s for s in suffixes[:2]], max_new_tokens=6)
    fresh += sampler.generate([prefix + s for s in suffixes[2:]], max_new_tokens=6)
    assert first + second == fresh


def test_eos_cut_and_max_sequence_length(text_sampler):
    rng = np.random.default_rng(5)
    prompts = _prompts(rng, [10, 93])
    full = text_sampler.generate(prompts, max_new_tokens=8)
    # Generation stops at max_sequence_length (96) for the 93-token prompt only.
    assert [len(f) for f in full] == [8, 3]
    eos = full[0][3]
    cut = text_sampler.generate(prompts, max_new_tokens=8, eos_id=eos)
    assert cut[0] == full[0][: full[0].index(eos) + 1]


def test_bad_input(text_sampler):
    too_long = list(range(3, 97)) + [5, 6, 7]  # 97 tokens > 96
    with pytest.raises(LwmError, match=r"97 tokens .* max_sequence_length 96"):
        text_sampler.generate([too_long], max_new_tokens=4)
    out = text_sampler.generate([too_long, [5, 6]], max_new_tokens=4, truncate=True)
    assert [len(o) for o in out] == [4, 4]
    with pytest.raises(LwmError, match="at least one token"):
        text_sampler.generate([[]], max_new_tokens=4)
    with pytest.raises(LwmError, match="max_new_tokens"):
        text_sampler.generate([[5]], max_new_tokens=0)
    with pytest.raises(LwmError, match="top_p"):
        SamplingConfig(temperature=1.0, top_p=0.0)


def test_filters_and_sampling_distribution():
    logits = jnp.asarray([[0.0, 1.0, 2.0, 3.0, 3.0]])
    kept = np.isfinite(np.asarray(filter_logits(logits, top_k=2)))
    np.testing.assert_array_equal(kept, [[False, False, False, True, True]])
    # softmax of [0, 1, 2, 3] ~ [.03, .09, .24, .64]: top-p .7 keeps the two most likely tokens.
    probs = jnp.log(jnp.asarray([[0.03, 0.09, 0.24, 0.64]]))
    kept = np.isfinite(np.asarray(filter_logits(probs, top_p=0.7)))
    np.testing.assert_array_equal(kept, [[False, False, True, True]])
    kept = np.isfinite(np.asarray(filter_logits(probs, top_p=0.6)))
    np.testing.assert_array_equal(kept, [[False, False, False, True]])
    # Temperature sampling follows softmax(logits / T).
    two = jnp.broadcast_to(jnp.log(jnp.asarray([0.25, 0.75])), (4000, 2))
    draws = np.asarray(sample_logits(two, jax.random.key(0), SamplingConfig(temperature=1.0)))
    assert abs(draws.mean() - 0.75) < 0.03
    sharp = np.asarray(sample_logits(two, jax.random.key(1), SamplingConfig(temperature=0.25)))
    assert abs(sharp.mean() - 0.75**4 / (0.75**4 + 0.25**4)) < 0.03
    greedy = np.asarray(sample_logits(two, jax.random.key(0), SamplingConfig()))
    assert np.all(greedy == 1)
