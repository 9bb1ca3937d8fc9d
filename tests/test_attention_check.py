"""`AttentionOp.check(seq_len, mesh)`: the op's shape rules, before any compute.

Oracle: tracing the op itself on that mesh (layout permutation, kernel, inverse permutation).
The check must refuse exactly the shapes the traced op refuses, with a one-line ConfigError.
"""

import jax
import jax.numpy as jnp
import pytest

from lwm.attention import make_attention
from lwm.attention.config import AttentionConfig
from lwm.config import load_config
from lwm.errors import ConfigError
from lwm.sharding import make_mesh
from lwm.training.trainer import parse_run

B, N, K, H = 2, 4, 2, 8

CASES = [
    # backend, layout, sp, seq_len, query chunk, key chunk
    ("dense", "zigzag", 4, 64, 512, 512),
    ("dense", "zigzag", 4, 66, 512, 512),
    ("blockwise", "zigzag", 1, 64, 16, 16),
    ("blockwise", "zigzag", 1, 64, 24, 16),
    ("blockwise", "zigzag", 1, 40, 512, 16),
    ("blockwise", "zigzag", 4, 64, 16, 16),
    ("ring", "contiguous", 4, 64, 16, 16),
    ("ring", "contiguous", 4, 66, 16, 16),
    ("ring", "contiguous", 4, 64, 16, 12),
    ("ring", "zigzag", 4, 64, 8, 8),
    ("ring", "zigzag", 4, 60, 8, 8),
    ("ring", "zigzag", 4, 64, 16, 8),  # chunk clamped to the half-block of 8: fine
    ("ring", "zigzag", 2, 96, 16, 16),  # half-block of 24: 16 does not divide it
    ("ring", "striped", 4, 64, 16, 16),
    ("ring", "striped", 4, 48, 512, 512),  # 48 % 4 == 0 but not a multiple of sp^2 = 16
    ("ring", "striped", 2, 12, 3, 3),
]


def traced_op_error(cfg: AttentionConfig, mesh, seq_len: int) -> str | None:
    op = make_attention(cfg, causal=True, mesh=mesh)
    q = jax.ShapeDtypeStruct((B, seq_len, N, H), jnp.float32)
    kv = jax.ShapeDtypeStruct((B, seq_len, K, H), jnp.float32)

    def run(q, k, v):
        return op.from_layout(op(op.to_layout(q), op.to_layout(k), op.to_layout(v)))

    try:
        jax.eval_shape(run, q, kv, kv)
    except ConfigError as e:
        return str(e)
    return None


@pytest.mark.parametrize("backend, layout, sp, seq_len, qc, kc", CASES)
def test_check_refuses_exactly_what_the_op_refuses(backend, layout, sp, seq_len, qc, kc):
    cfg = AttentionConfig(backend=backend, layout=layout, query_chunk_size=qc, key_chunk_size=kc)
    mesh = make_mesh({"sp": sp, "fsdp": 8 // sp})
    sizes = {"dp": 1, "fsdp": 8 // sp, "tp": 1, "sp": sp}
    traced = traced_op_error(cfg, mesh, seq_len)
    # dense/blockwise run on global arrays, so the trace never refuses a length sp does not
    # divide; the check also enforces the sequence sharding of the activations over sp.
    if backend != "ring" and seq_len % sp:
        assert traced is None
        traced = f"seq_len {seq_len} not divisible by sp = {sp}"
    for where in (mesh, sizes):  # a Mesh or the trainer's {axis: size}
        if traced is None:
            make_attention(cfg).check(seq_len, where)
        else:
            with pytest.raises(ConfigError) as info:
                make_attention(cfg).check(seq_len, where)
            assert "\n" not in str(info.value)
            # the same rule fired: the kernel's message is contained in the check's
            assert str(info.value) in traced or traced in str(info.value), (info.value, traced)


def test_striped_length_not_a_multiple_of_sp_squared_refused_at_parse_time():
    """The trainer's old hand-written check ignored striped's sp x sp multiple; a config that
    only failed at trace time is now refused by `parse_run` with a one-line error."""
    overrides = [
        "mesh.fsdp=2",
        "mesh.sp=4",
        "model.attention.backend=ring",
        "model.attention.layout=striped",
        "train.seq_len=24",
        "train.batch_tokens=96",
    ]
    with pytest.raises(ConfigError) as info:
        parse_run(load_config("train_debug", overrides))
    msg = str(info.value)
    assert msg.startswith("stages[0]: sequence length 24 is not divisible by 16 (sp x sp, sp=4)")
    assert "striped" in msg and "\n" not in msg
    # a multiple of sp^2 passes
    ok = [o if o != "train.seq_len=24" else "train.seq_len=32" for o in overrides]
    ok = [o if o != "train.batch_tokens=96" else "train.batch_tokens=128" for o in ok]
    assert parse_run(load_config("train_debug", ok)).stages[0].seq_len == 32


def test_sampler_refuses_what_the_cache_attention_cannot_run():
    from lwm.inference.sampler import Sampler
    from lwm.models.config import ModelConfig
    from lwm.models.transformer import init_model

    cfg = ModelConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
        num_kv_heads=2, max_sequence_length=64,
    )  # fmt: skip
    mesh = make_mesh({"sp": 4, "fsdp": 2})
    model = init_model(cfg, mesh=mesh)
    with pytest.raises(ConfigError, match="^cache capacity 66 is not divisible by sp 4$"):
        Sampler(model, mesh=mesh, max_cache_len=66)
    assert Sampler(model, mesh=mesh, max_cache_len=64).max_cache_len == 64
    block_causal = init_model(cfg.replace(attention={"causal_block_size": 4}))
    with pytest.raises(ConfigError, match="needs token-causal attention"):
        Sampler(block_causal)


@pytest.mark.parametrize("seq_len, ok", [(24, False), (32, True), (6, True)])
def test_ffn_chunk_rule_checked_like_the_model_applies_it(seq_len, ok):
    """`ffn_chunk_size` (a model field, next to the MLP) tiles each sequence shard; the model's
    shape check and the traced model agree."""
    from flax import nnx

    from lwm.models.config import ModelConfig
    from lwm.models.transformer import Transformer

    cfg = ModelConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
        num_kv_heads=2, max_sequence_length=64, ffn_chunk_size=8,
    )  # fmt: skip
    mesh = make_mesh({"sp": 2, "fsdp": 4})
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh))
    tokens = jax.ShapeDtypeStruct((4, seq_len), jnp.int32)
    message = f"sequence length {seq_len} not divisible by sp 2 x ffn_chunk_size 8"
    if ok:
        cfg.check_shapes(seq_len, mesh)
        nnx.eval_shape(lambda m, t: m(t), model, tokens)
        return
    with pytest.raises(ConfigError, match=message):
        cfg.check_shapes(seq_len, mesh)
    with pytest.raises(ConfigError, match=message):
        nnx.eval_shape(lambda m, t: m(t), model, tokens)
