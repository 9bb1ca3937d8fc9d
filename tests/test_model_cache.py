"""The model's own call with a per-layer cache (one forward path for training and decoding).

Oracle: the uncached forward of the whole sequence. Feeding the same tokens through
`Transformer.__call__(..., cache=model.init_cache(...))` in chunks (a prefill chunk, then
single-token steps) must give the same logits at every position, for looped and scanned layers, on
one device and with the cache sharded over `sp`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_fixtures import random_model

from lwm.cache.kv_cache import KVCache
from lwm.cache.slots import LAYER_KV_NAMES, VALID_NAMES, CacheSlots
from lwm.models.config import ModelConfig
from lwm.models.output import ModelOutput
from lwm.models.transformer import Transformer
from lwm.sharding import logical_to_sharding, make_mesh

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
    want = model(tokens).logits  # [B, T, V]

    @jax.jit
    def run(model, cache, tokens, start):
        b, t = tokens.shape
        valid = jnp.ones((b, t), jnp.int32)
        slots = CacheSlots.for_chunk(cache.valid, valid, start, mesh=mesh, key_block=16)
        positions = start + jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        out = model(tokens, positions_bt=positions, cache=cache, cache_slots=slots)
        assert isinstance(out, ModelOutput) and isinstance(out.cache, KVCache)
        assert out.vision_logits is None
        return out.logits, out.cache

    cache = model.init_cache(2, 32)
    got, cache = run(model, cache, tokens[:, :16], jnp.int32(0))  # a prefill chunk (blockwise)
    pieces = [got]
    for i in range(16, 20):  # then decode steps (dense pass over the cache)
        step, cache = run(model, cache, tokens[:, i : i + 1], jnp.int32(i))
        pieces.append(step)
    got = jnp.concatenate(pieces, axis=1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-4, rtol=2e-4)
    assert np.asarray(cache.next_pos).tolist() == [20, 20]
    assert np.asarray(cache.valid)[:, :20].all() and not np.asarray(cache.valid)[:, 20:].any()


def test_sharded_cache_write_and_attention_match_numpy():
    """The shard-local write (a chunk longer than a shard, straddling shards, or one slot) lands
    exactly where an unsharded write would, and the blockwise prefill kernel over the sharded
    cache equals dense masked attention (numpy) over the whole cache."""
    from lwm.attention.cached import cached_attention
    from lwm.cache.write import write_slots

    mesh = make_mesh({"sp": 8})
    rng = np.random.default_rng(1)
    b, kv, s, h, n = 2, 2, 64, 8, 4
    for start, t in ((0, 12), (5, 12), (13, 3), (30, 1), (52, 12)):
        cache = rng.standard_normal((b, kv, s, h)).astype(np.float32)
        new = rng.standard_normal((b, kv, t, h)).astype(np.float32)
        valid = (rng.random((b, s)) < 0.7).astype(np.int32)
        new_valid = np.ones((b, t), np.int32)
        new_valid[0, 0] = 0  # left padding in row 0
        want = cache.copy()
        want[:, :, start : start + t] = new
        want_valid = valid.copy()
        want_valid[:, start : start + t] = new_valid
        got = jax.jit(lambda x, y, i: write_slots(x, y, i, mesh, names=LAYER_KV_NAMES))(
            init_like(cache, mesh), jnp.asarray(new), jnp.int32(start)
        )
        np.testing.assert_array_equal(np.asarray(got), want)
        got_valid = jax.jit(lambda x, y, i: write_slots(x, y, i, mesh, names=VALID_NAMES))(
            jnp.asarray(valid), jnp.asarray(new_valid), jnp.int32(start)
        )
        np.testing.assert_array_equal(np.asarray(got_valid), want_valid)
        if t <= 8:
            continue  # decode-sized chunks take the dense path (covered by the model test)
        q = rng.standard_normal((b, t, n, h)).astype(np.float32)
        slots = start + np.arange(t, dtype=np.int32)
        out = jax.jit(
            lambda q, k, v, m, sl: cached_attention(q, k, v, m, sl, mesh=mesh, key_block=4)
        )(jnp.asarray(q), got, got, got_valid, jnp.asarray(slots))
        k_rep = np.repeat(want, n // kv, axis=1)  # [B, N, S, H]
        scores = np.einsum("btnh,bnsh->bnts", q, k_rep) * h**-0.5
        mask = (np.arange(s)[None, :] <= slots[:, None])[None, None] & (want_valid > 0)[
            :, None, None, :
        ]
        mask = np.broadcast_to(mask, scores.shape)
        seen = mask.any(-1)  # a padded query at slot 0 sees nothing: compared nowhere
        scores = np.where(mask, scores, -np.inf)
        p = np.exp(scores - np.where(seen, scores.max(-1), 0.0)[..., None])
        p /= np.where(seen, p.sum(-1), 1.0)[..., None]
        ref = np.einsum("bnts,bnsh->btnh", p, k_rep)
        rows = seen.transpose(0, 2, 1)  # [B, T, N]
        assert rows.sum() > 0.9 * rows.size
        np.testing.assert_allclose(np.asarray(out)[rows], ref[rows], atol=1e-5, rtol=1e-5)


def init_like(x: np.ndarray, mesh) -> jax.Array:
    """`x` placed with the cache's sharding (slots over sp)."""
    return jax.device_put(jnp.asarray(x), logical_to_sharding(LAYER_KV_NAMES, x.shape, mesh))
