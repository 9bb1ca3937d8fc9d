"""`lwm plan --inference`: the sampler's prefill chunk and decode step, compiled on abstract
shapes."""

import json

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from lwm.cli.main import main
from lwm.config import load_config
from lwm.inference.plan import kv_cache_bytes, plan_inference
from lwm.models.config import ModelConfig
from lwm.models.layer_weights import fetch_after
from lwm.sharding import logical_to_sharding, make_mesh


def _cfg():
    return ModelConfig.from_dict(load_config("debug").model).replace(
        vision_vocab_size=24, vision_eof_id=20, vision_eov_id=21
    )


def test_plan_on_8_devices_matches_the_analytic_kv_cache():
    assert jax.device_count() == 8
    cfg = _cfg()
    for sizes, shards in (({"sp": 8}, 8), ({"tp": 2, "sp": 4}, 8)):
        plan = plan_inference(cfg, make_mesh(sizes), 3000, prefill_chunk=256, cache_block=128)
        # 3000 tokens -> capacity bucket of cache_block x sp slots.
        assert plan.capacity == -(-3000 // (128 * sizes["sp"])) * 128 * sizes["sp"]
        want = 2 * cfg.num_layers * plan.capacity * cfg.num_kv_heads * cfg.head_dim * 4
        assert kv_cache_bytes(cfg, 1, plan.capacity) == want
        assert plan.kv_cache == want // shards  # slots over sp, kv heads over tp
        assert plan.params > 0 and plan.weights > 0
        assert plan.prefill.temporaries > 0 and plan.decode.temporaries > 0
        assert plan.prefill_chunk == 256
        assert plan.total > plan.weights + plan.kv_cache


def test_cli_reports_fit(capsys):
    args = ["plan", "--inference", "--config", "debug", "--seq-len", "2048", "--devices", "8"]
    assert main(args + ["--memory-per-device", "1GiB", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fits"] is True and d["mesh"]["sp"] == 8 and d["kv_cache"] > 0
    assert (d["kv_dtype"], d["kv_scales"]) == ("float32", 0)  # auto: the compute dtype
    assert main(args + ["--memory-per-device", "10KiB"]) == 0
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "KV cache / device" in out
    assert main(["plan", "--inference", "--config", "debug"]) == 2
    assert "needs --seq-len" in capsys.readouterr().err


def test_prefill_temporaries_follow_the_shard_not_the_cache():
    """On sp=8, growing the cache 8x may grow a prefill chunk's temporaries by at most the growth
    of the device's own KV shard (they hold a chunk's activations and per-block scores, not the
    cache). Writing the chunk at a traced slot outside the shard_map made XLA gather each
    layer's whole cache onto every device: the temporaries then grew by more than the whole
    (all-device) cache."""
    cfg = _cfg()  # f32: XLA:CPU computes bf16 dots in f32 (docs/gpu-tpu-and-pods.md)
    mesh = make_mesh({"sp": 8})
    small, big = (plan_inference(cfg, mesh, n, prefill_chunk=512) for n in (8192, 65536))
    shard_growth = big.kv_cache - small.kv_cache
    assert shard_growth == 7 * small.kv_cache > 0
    assert big.prefill.temporaries - small.prefill.temporaries <= shard_growth
    assert big.prefill.temporaries < big.kv_cache + 8 * 2**20  # a chunk's worth on a tiny model


def _bf16(cfg: ModelConfig, **kw) -> ModelConfig:
    """LWM-7B's inference dtypes: bf16 weights and compute (XLA:CPU upcasts bf16 dots to f32)."""
    return cfg.replace(param_dtype="bfloat16", dtype="bfloat16", **kw)


def test_temporaries_bound_as_the_cache_grows():
    """Issue 26's bound, on a model whose cache dwarfs its weights: growing the cache 8x grows
    neither program's temporaries by more than 5% of the device's KV shard growth. A prefill
    chunk needs its activations and per-block scores, a decode step reads the cache block by
    block: neither needs a copy of a layer's cache. Today's code failed both (~50%: a converted
    copy of the cache in decode, a copy of each layer's shard in the prefill write)."""
    cfg = _bf16(_cfg(), num_kv_heads=4)
    mesh = make_mesh({"sp": 8})
    # Both shards hold more slots than a decode block, so the blocks' own buffers are the same.
    small, big = (
        plan_inference(cfg, mesh, n, prefill_chunk=256, cache_block=128) for n in (32768, 262144)
    )
    shard_growth = big.kv_cache - small.kv_cache
    assert shard_growth == 7 * small.kv_cache and big.kv_cache > 40 * big.weights
    for name in ("prefill", "decode"):
        grew = getattr(big, name).temporaries - getattr(small, name).temporaries
        assert grew <= 0.05 * shard_growth, (name, grew, shard_growth)


def test_weights_are_gathered_one_layer_at_a_time():
    """Weights sharded over sp are all-gathered for a prefill chunk (its tokens are sharded over
    sp too), one layer at a time and in their own dtype: at most two layers' gathered weights plus
    one layer's f32 operands (XLA:CPU's bf16 dots) are alive, not the whole model. A decode step
    gathers nothing. Before, every layer was gathered at the program's start, in f32: 8 layers'
    worth of f32 weights in the prefill, every layer's local shard in f32 in the decode."""
    cfg = _bf16(_cfg(), num_layers=8, hidden_size=256, intermediate_size=1024, num_kv_heads=2)
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    layer_f32 = 4 * (2 * d * cfg.num_heads * h + 2 * d * cfg.num_kv_heads * h + 3 * d * f)
    plan = plan_inference(cfg, make_mesh({"sp": 8}), 2048, prefill_chunk=256, cache_block=128)
    assert plan.prefill.temporaries <= 3 * layer_f32, plan.prefill.temporaries / layer_f32
    assert plan.decode.temporaries <= layer_f32 / 2, plan.decode.temporaries / layer_f32


def test_cli_kv_dtype(capsys):
    args = ["plan", "--inference", "--config", "debug", "--seq-len", "2048", "--devices", "8"]
    args += ["--json", "--config.model.dtype=bfloat16"]
    assert main(args + ["--kv-dtype", "int8"]) == 0
    d = json.loads(capsys.readouterr().out)
    cfg = _bf16(_cfg())
    # int8 codes (half of a bf16 cache) plus one bf16 scale per (token, kv head) and layer.
    slots = cfg.num_layers * 2 * d["capacity"] * cfg.num_kv_heads // 8  # per device (sp=8)
    assert (d["kv_dtype"], d["kv_scales"]) == ("int8", slots * 2)
    assert d["kv_cache"] == slots * cfg.head_dim + slots * 2
    assert main(args + ["--kv-dtype", "int4"]) == 2  # one line, before anything is compiled
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "lwm plan: error: unknown kv_dtype 'int4'; expected one of auto, bfloat16, float32, "
        "int8, float8_e4m3fn"
    ]


def test_fetch_after_gathers_the_same_bits():
    """The per-layer fetch is a data dependency and a gather, never a change of value: bf16
    weights sharded over sp come back bit-identical, whole on every device (sharded only over
    what the activations do not use)."""
    mesh = make_mesh({"tp": 2, "sp": 4})
    names = ("embed", "heads", "head_dim")
    w = jax.random.normal(jax.random.key(0), (64, 4, 16), jnp.bfloat16)
    w = jax.device_put(w, logical_to_sharding(names, w.shape, mesh))
    x_btd = jnp.full((1, 8, 64), jnp.nan, jnp.float32)  # NaN > inf is false too

    out = jax.jit(lambda w, x: fetch_after(w, names, mesh, ("sp",), x.reshape(-1)[0] > jnp.inf))(
        w, x_btd
    )
    assert out.dtype == jnp.bfloat16 and bool((out == w).all())
    assert out.sharding.spec == P(None, "tp")  # gathered over sp, still split over tp
