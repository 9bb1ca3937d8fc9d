"""8-bit KV cache (`kv_dtype` int8 / float8_e4m3fn) and the block-by-block cache attention.

Oracles: dense attention in float64 numpy (over the full-precision keys, or over the dequantized
codes for the kernel's own exactness), the full-precision cache for the quantization error
(bounded here, the measured max/mean printed), and compiled memory for the decode temporaries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gguf_fixtures import converted_smollm2, real_text  # noqa: F401 - session fixture

from lwm.attention.cached import cached_attention, decode_attention
from lwm.cache.kv_cache import (
    KVCache,
    QuantKVCache,
    cache_specs,
    grow,
    init_cache,
    kv_cache_bytes,
    repeat_rows,
)
from lwm.cache.quant import codes_to, dequantize, quantize, stored_dtype
from lwm.errors import ConfigError
from lwm.models.config import ModelConfig, apply_kv_dtype
from lwm.sharding import make_mesh

B, N, K, H = 2, 4, 2, 16
STORAGE = {"int8": jnp.int8, "float8_e4m3fn": jnp.uint8}
# Relative error of the attention output vs the full-precision cache on random unit inputs:
# int8 keeps ~1/254 of each vector's absmax, e4m3 3 mantissa bits (~1/16 of each value).
BOUND = {"int8": 0.02, "float8_e4m3fn": 0.08}


def _dense(q_btnh, k_bsnh, v_bsnh, visible_bts):
    """float64 dense attention: `visible_bts[b, t, s]` says which keys query t sees."""
    q, k, v = (np.asarray(x, np.float64) for x in (q_btnh, k_bsnh, v_bsnh))
    rep = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
    s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    s = np.where(visible_bts[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", p, v)


def _random(seed, s, t):
    r = np.random.default_rng(seed)
    q = r.standard_normal((B, t, N, H)).astype(np.float32)
    k = r.standard_normal((B, K, s, H)).astype(np.float32)
    v = r.standard_normal((B, K, s, H)).astype(np.float32)
    return q, k, v


def _quantized(k_bksh, v_bksh, kind):
    kc, ks = quantize(jnp.asarray(k_bksh), STORAGE[kind], jnp.float32)
    vc, vs = quantize(jnp.asarray(v_bksh), STORAGE[kind], jnp.float32)
    return (kc, vc), dict(k_scale_bks=ks, v_scale_bks=vs), dequantize(kc, ks), dequantize(vc, vs)


def _decode(q, k, v, filled, new_k, new_v, mesh, block, **scales):
    """decode_attention with `filled` cache slots (rows left-padded by 0 and 3 slots) and the
    queries' own keys, plus the float64 dense oracle over the same keys."""
    s, t = k.shape[2], q.shape[1]
    valid = np.zeros((B, s), np.int32)
    valid[0, :filled] = 1
    valid[1, 3:filled] = 1
    slots = filled + np.arange(t, dtype=np.int32)
    out = decode_attention(
        jnp.asarray(q),
        k,
        v,
        jnp.asarray(valid),
        jnp.asarray(new_k),
        jnp.asarray(new_v),
        jnp.ones((B, t), jnp.int32),
        jnp.asarray(slots),
        mesh=mesh,
        block=block,
        **scales,
    )
    return np.asarray(out), valid


def _oracle(q, k_deq, v_deq, valid, new_k, new_v):
    t = q.shape[1]
    keys = np.concatenate([np.asarray(k_deq), new_k], axis=2).transpose(0, 2, 1, 3)
    vals = np.concatenate([np.asarray(v_deq), new_v], axis=2).transpose(0, 2, 1, 3)
    vis_cache = np.broadcast_to(valid[:, None, :] > 0, (B, t, valid.shape[1]))
    causal = np.tril(np.ones((t, t), bool))
    vis = np.concatenate([vis_cache, np.broadcast_to(causal, (B, t, t))], axis=2)
    return _dense(q, keys, vals, vis)


@pytest.mark.parametrize("filled, sp", [(1, 8), (37, 1), (200, 8)])
def test_decode_block_loop_matches_dense_attention(sp, filled):
    """The filled-slot block loop (16-slot blocks, a 512-slot cache) against dense attention:
    odd fill counts, rows with left padding, two queries, sharded over sp."""
    q, k, v = _random(filled, 512, 2)
    new_k = np.random.default_rng(1).standard_normal((B, K, 2, H)).astype(np.float32)
    new_v = np.random.default_rng(2).standard_normal((B, K, 2, H)).astype(np.float32)
    mesh = make_mesh({"sp": sp}) if sp > 1 else None
    got, valid = _decode(q, jnp.asarray(k), jnp.asarray(v), filled, new_k, new_v, mesh, 16)
    want = _oracle(q, k, v, valid, new_k, new_v)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kind, sp", [("int8", 1), ("float8_e4m3fn", 8)])
def test_quantized_decode_error_is_bounded(kind, sp):
    """An 8-bit cache against the full-precision one (error bounded, measured value printed),
    and exactly the dense attention over its own dequantized entries (the kernel applies the
    scales right)."""
    q, k, v = _random(3, 256, 1)
    new_k, new_v = k[:, :, :1] * 0.5, v[:, :, :1] * 0.5
    mesh = make_mesh({"sp": sp}) if sp > 1 else None
    (kc, vc), scales, k_deq, v_deq = _quantized(k, v, kind)
    got, valid = _decode(q, kc, vc, 101, new_k, new_v, mesh, 32, **scales)
    np.testing.assert_allclose(
        got, _oracle(q, k_deq, v_deq, valid, new_k, new_v), atol=2e-5, rtol=1e-4
    )
    full = _oracle(q, k, v, valid, new_k, new_v)
    err = np.abs(got - full) / np.abs(full).max()
    print(f"decode {kind} sp={sp}: max rel err {err.max():.4f}, mean {err.mean():.5f}")
    assert err.max() < BOUND[kind]


@pytest.mark.parametrize("kind, sp", [("int8", 8), ("float8_e4m3fn", 1)])
def test_quantized_prefill_error_is_bounded(kind, sp):
    """The prefill kernel (a 24-query chunk whose own keys are in the cache) on an 8-bit
    cache: exact against dense attention over the dequantized entries, bounded against the
    full-precision cache."""
    s, t, start = 256, 24, 90
    q, k, v = _random(5, s, t)
    mesh = make_mesh({"sp": sp}) if sp > 1 else None
    (kc, vc), scales, k_deq, v_deq = _quantized(k, v, kind)
    valid = np.zeros((B, s), np.int32)
    valid[:, : start + t] = 1
    slots = start + np.arange(t, dtype=np.int32)
    got = np.asarray(
        cached_attention(
            jnp.asarray(q),
            kc,
            vc,
            jnp.asarray(valid),
            jnp.asarray(slots),
            mesh=mesh,
            key_block=32,
            **scales,
        )
    )
    vis = (np.arange(s)[None, :] <= slots[:, None])[None] & (valid[:, None, :] > 0)
    kt, vt = (np.asarray(x).transpose(0, 2, 1, 3) for x in (k_deq, v_deq))
    np.testing.assert_allclose(got, _dense(q, kt, vt, vis), atol=2e-5, rtol=1e-4)
    full = _dense(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), vis)
    err = np.abs(got - full) / np.abs(full).max()
    print(f"prefill {kind} sp={sp}: max rel err {err.max():.4f}, mean {err.mean():.5f}")
    assert err.max() < BOUND[kind]


def test_quantize_round_trip():
    """Codes times stored scales recover each vector within its format's step; zero vectors
    stay zero (no NaN from a zero scale); bf16 scales are stored as their bits."""
    x = np.random.default_rng(0).standard_normal((3, 5, 64)).astype(np.float32) * 3
    x[0, 0] = 0.0
    for kind, tol in (("int8", 0.5 / 127 + 0.004), ("float8_e4m3fn", 1 / 16 + 0.004)):
        codes, scale = quantize(jnp.asarray(x), STORAGE[kind], stored_dtype(jnp.bfloat16))
        assert codes.dtype == STORAGE[kind] and scale.dtype == jnp.uint16
        assert codes_to(scale).dtype == jnp.bfloat16
        back = np.asarray(dequantize(codes, scale))
        absmax = np.abs(x).max(-1, keepdims=True)
        assert np.all(np.abs(back - x) <= tol * absmax + 1e-7), kind
        assert not np.isnan(back).any() and not back[0, 0].any()


def test_unknown_kv_dtype_is_a_one_line_error():
    for make in (
        lambda: ModelConfig(kv_dtype="int4"),
        lambda: apply_kv_dtype(ModelConfig(), "fp8"),
        lambda: ModelConfig.from_dict({"kv_dtype": "float16x"}),
    ):
        with pytest.raises(ConfigError) as e:
            make()
        assert "kv_dtype" in str(e.value) and "int8" in str(e.value) and "\n" not in str(e.value)
    assert apply_kv_dtype(ModelConfig(), None).kv_dtype == "auto"


CFG = dict(
    vocab_size=61,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_sequence_length=1 << 20,
    dtype="bfloat16",
)


def test_cache_scales_shapes_shardings_and_bytes():
    """An 8-bit cache: codes (int8, or e4m3 bits) plus [B, K, S] scales per layer in the compute
    dtype, sharded like the slots (sp) and kv heads (tp), through grow / repeat_rows; other
    caches carry no scales. Bytes: half a bf16 cache plus the scales."""
    mesh = make_mesh({"tp": 2, "sp": 4})
    for kind, code in (("int8", jnp.int8), ("float8_e4m3fn", jnp.uint8)):
        cfg = ModelConfig(**CFG, kv_dtype=kind)
        cache = init_cache(cfg, 1, 64, mesh)
        assert isinstance(cache, QuantKVCache) and cache.ks[0].dtype == code
        assert [x.shape for x in cache.k_scales] == [(1, 2, 64)] * 2
        assert cache.k_scales[0].dtype == jnp.uint16  # bf16 bits
        assert cache.v_scales[1].sharding.spec == jax.sharding.PartitionSpec(None, "tp", "sp")
        big = repeat_rows(grow(cache, 128, mesh), 3, mesh)
        assert big.v_scales[0].shape == (3, 2, 128) and big.v_scales[0].sharding.spec[2] == "sp"
        assert len(big.layer_arrays()) == 4 * cfg.num_layers
    plain = cache_specs(ModelConfig(**CFG), 1, 64)
    assert type(plain) is KVCache and plain.ks[0].dtype == jnp.uint16  # bf16 as its bits
    bf16 = kv_cache_bytes(ModelConfig(**CFG), 1, 1024)
    int8 = kv_cache_bytes(ModelConfig(**CFG, kv_dtype="int8"), 1, 1024)
    assert bf16 == 2 * 2 * 1024 * 2 * 8 * 2
    assert int8 == bf16 // 2 + 2 * 2 * 1024 * 2 * 2  # + a bf16 scale per (slot, kv head)


def _decode_temp_bytes(cfg, capacity, mesh):
    from flax import nnx

    from lwm.inference.sampler import DecodeMode, Sampler
    from lwm.inference.sampling import GREEDY
    from lwm.models.transformer import Transformer

    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh))
    sampler = Sampler(model, mesh=mesh)
    i32 = jnp.int32
    args = (
        sampler.state,
        cache_specs(cfg, 1, capacity, mesh),
        jax.ShapeDtypeStruct((1,), i32),
        jax.ShapeDtypeStruct((1,), jnp.bool_),
        jax.ShapeDtypeStruct((), i32),
        jax.ShapeDtypeStruct((), i32),
        jax.eval_shape(lambda: jax.random.key(0)),
        jax.ShapeDtypeStruct((4, 1), i32),
        jax.ShapeDtypeStruct((4,), jnp.float32),
    )
    step = sampler.step_fn(DecodeMode(), GREEDY)
    return step.lower(*args).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("kv_dtype, sp", [("auto", 1), ("int8", 8)])
def test_decode_temporaries_stay_small_as_the_cache_grows(kv_dtype, sp):
    """A bf16 model whose cache dwarfs its weights: the compiled decode step's temporaries stay
    under 1 MiB + 5% of the per-device cache at 64K and 256K slots (the cache is read block by
    block in its stored dtype; before, it was converted to f32 whole: ~2x the cache)."""
    cfg = ModelConfig(**CFG, kv_dtype=kv_dtype)
    mesh = make_mesh({"sp": sp}) if sp > 1 else None
    for capacity in (1 << 16, 1 << 18):
        shard = kv_cache_bytes(cfg, 1, capacity) // sp
        temp = _decode_temp_bytes(cfg, capacity, mesh)
        print(f"{kv_dtype} sp={sp} capacity {capacity}: temp {temp} B, cache shard {shard} B")
        assert temp <= (1 << 20) + 0.05 * shard, (capacity, temp, shard)


def _script(name: str):
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_model_8bit_cache_keeps_perplexity(converted_smollm2):  # noqa: F811
    """SmolLM2-135M-Instruct (the suite's real model) reading 512 tokens of real text through
    int8 / fp8 caches, two 256-token chunks (the second reads the first back from the cache):
    perplexity within 1% of the full-precision cache. scripts/eval_kv_dtype.py runs the needle
    grid and 4K perplexity."""
    import lwm
    from lwm.inference.runtime import load_tokenizer

    ev = _script("eval_kv_dtype")
    ckpt = str(converted_smollm2)
    tok = load_tokenizer(None, ckpt)
    ids = tok.encode(real_text(6000), bos=bool(tok.add_bos))[:513]
    nll = {
        kv: ev.cached_nll(lwm.load_model(ckpt, overrides={"kv_dtype": kv}), ids, 256)
        for kv in ("auto", "int8", "float8_e4m3fn")
    }
    for kv in ("int8", "float8_e4m3fn"):
        rel = float(np.exp(nll[kv] - nll["auto"]) - 1)
        print(f"{kv}: perplexity {np.exp(nll[kv]):.4f} vs {np.exp(nll['auto']):.4f}, {rel:+.5f}")
        assert abs(rel) < 0.01
