"""LWM's recipes (configs/lwm_text_1m.py, configs/lwm_vision_1m.py): the full configs parse on the
pod slices they are written for with LWM's published stage numbers, and a scaled-down copy of each
(same stages, meshes and batch structure; tiny model and lengths) compiles through every stage."""

from __future__ import annotations

import pytest

from lwm.config import load_config
from lwm.training.plan import plan_stage
from lwm.training.trainer import parse_run


def test_text_recipe_stages_on_256_devices():
    spec = parse_run(load_config("lwm_text_1m"), 256)
    assert spec.train.init_from and spec.model.vision_vocab_size == 0
    assert spec.model.rms_norm_eps == 1e-6 and spec.model.hidden_size == 4096
    assert [s.seq_len for s in spec.stages] == [2**15, 2**17, 2**18, 2**19, 2**20]
    assert [s.rope_theta for s in spec.stages] == [1e6, 1e7, 1e7, 2.5e7, 5e7]
    assert {s.batch_tokens for s in spec.stages} == {4 * 2**20}
    assert [m["sp"] for m in spec.mesh_sizes] == [2, 8, 16, 32, 64]  # devices move onto sp
    assert all(m["dp"] * m["fsdp"] * m["tp"] * m["sp"] == 256 for m in spec.mesh_sizes)


def test_vision_recipe_stages_on_512_devices():
    spec = parse_run(load_config("lwm_vision_1m"), 512)
    assert spec.train.init_from and spec.model.vision_vocab_size == 8448
    assert (spec.train.text_loss_weight, spec.train.vision_loss_weight) == (0.5, 0.5)
    assert [s.seq_len for s in spec.stages] == [2**10, 2**13, 2**15, 2**17, 2**20]
    assert {s.rope_theta for s in spec.stages} == {5e7}
    assert {s.batch_tokens for s in spec.stages} == {8 * 2**20}
    assert all(s.data.source == "dataset" and s.data.path for s in spec.stages)


def _tiny_copy(name: str, length_div: int):
    """The recipe with a tiny model, lengths / `length_div`, meshes fitted into 8 devices."""
    config = load_config(name)
    m = config.model
    for k, v in dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=1,
        num_heads=4,
        num_kv_heads=4,
        dtype="float32",
    ).items():
        m[k] = v
    if m.vision_vocab_size:
        m.vision_vocab_size, m.vision_eof_id, m.vision_eov_id = 24, 16, 17
    m.attention.query_chunk_size = m.attention.key_chunk_size = 16
    m.ffn_chunk_size = 0  # the blockwise FFN only adds compile time at these lengths
    longest = max(st.seq_len for st in config.stages) // length_div
    m.max_sequence_length = longest
    for st in config.stages:
        st.seq_len //= length_div
        st.max_sequence_length = st.seq_len
        st.batch_tokens = 4 * longest  # the last stage keeps LWM's few long sequences
        # sp grows as in the recipe, capped at 4 (8 simulated devices; ring steps cost compile time)
        st.mesh = dict(dp=1, fsdp=-1, tp=min(st.mesh["tp"], 2), sp=min(st.mesh["sp"], 4))
    return parse_run(config)


@pytest.mark.parametrize("name,length_div", [("lwm_text_1m", 2**9), ("lwm_vision_1m", 2**8)])
def test_scaled_down_recipe_compiles_every_stage(name, length_div):
    spec = _tiny_copy(name, length_div)
    assert len(spec.stages) == 5
    for i, st in enumerate(spec.stages):
        plan = plan_stage(spec, i)
        assert plan.seq_len == st.seq_len and plan.devices == 8
        assert plan.mesh["sp"] == spec.mesh_sizes[i]["sp"]
        assert plan.memory.total > 0
