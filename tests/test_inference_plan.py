"""`lwm plan --inference`: the sampler's prefill chunk and decode step, compiled on abstract
shapes."""

import json

import jax

from lwm.cli.main import main
from lwm.config import load_config
from lwm.inference.plan import kv_cache_bytes, plan_inference
from lwm.models.config import ModelConfig
from lwm.sharding import make_mesh


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
