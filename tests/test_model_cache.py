"""The model's own call with a per-layer cache (one forward path for training and decoding).

Oracle: the uncached forward of the whole sequence. Feeding the same tokens through
`Transformer.__call__(..., cache=...)` in chunks (a prefill chunk, then single-token steps) must
give the same logits at every position, for looped and scanned layers, on one device and with the
cache sharded over `sp`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_fixtures import random_model

from lwm.attention.cached import CacheSlots, LayerCache
from lwm.inference.kv_cache import init_cache
from lwm.models.config import ModelConfig
from lwm.models.transformer import Transformer
from lwm.sharding import make_mesh

CFG = dict(
    vocab_size=53,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_sequence_length=64,
)


@pytest.mark.parametrize("scan_layers, sp", [(False, 1), (True, 2)])
def test_cached_call_matches_uncached_forward(scan_layers, sp):
    cfg = ModelConfig(**CFG, scan_layers=scan_layers)
    mesh = make_mesh({"sp": sp, "fsdp": 8 // sp}) if sp > 1 else None
    model = random_model(lambda: Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 53, (2, 20)), jnp.int32)
    want = model(tokens)  # [B, T, V]

    @jax.jit
    def run(model, cache, tokens, start):
        b, t = tokens.shape
        valid = jnp.ones((b, t), jnp.int32)
        slots = CacheSlots.for_chunk(cache.valid, valid, start, mesh=mesh, key_block=16)
        layers = cache.layers(slots)
        positions = start + jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        logits, layers = model(tokens, positions_bt=positions, cache=layers)
        assert all(isinstance(c, LayerCache) for c in layers)
        return logits, cache.advance(layers, slots, positions)

    cache = init_cache(cfg, 2, 32, mesh)
    got, cache = run(model, cache, tokens[:, :16], jnp.int32(0))  # a prefill chunk (blockwise)
    pieces = [got]
    for i in range(16, 20):  # then decode steps (dense pass over the cache)
        step, cache = run(model, cache, tokens[:, i : i + 1], jnp.int32(i))
        pieces.append(step)
    got = jnp.concatenate(pieces, axis=1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-4, rtol=2e-4)
    assert np.asarray(cache.next_pos).tolist() == [20, 20]
    assert np.asarray(cache.valid)[:, :20].all() and not np.asarray(cache.valid)[:, 20:].any()
