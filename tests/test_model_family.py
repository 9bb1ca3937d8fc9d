"""The model-family seam: a family is a `ModelConfig` (q/k/v biases, a registered RoPE scaling)
on the one forward path, and HF interop maps families through one table.

Oracles: transformers' own RoPE frequency functions (`ROPE_INIT_FUNCTIONS`) and its Qwen2 /
Llama-3 models (torch CPU, fp32) with random weights loaded into lwm's model.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm.errors import ConfigError, LwmError
from lwm.layers.rope_scaling import (
    ROPE_KINDS,
    RopeScaling,
    register_rope_kind,
    rope_inv_freq,
    scaled_inv_freq,
)
from lwm.models.config import ModelConfig
from lwm.models.io import set_params
from lwm.models.transformer import Transformer

TINY = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
LLAMA3 = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)


def test_default_rope_is_plain_rope_bit_for_bit():
    """`default` (and no scaling) are today's frequencies exactly: LWM checkpoints unchanged."""
    head_dim, theta = 64, 50_000_000.0
    plain = 1.0 / (theta ** (jnp.arange(0, head_dim, 2).astype(jnp.float32) / head_dim))
    np.testing.assert_array_equal(np.asarray(rope_inv_freq(head_dim, theta)), np.asarray(plain))
    for scaling in (None, RopeScaling()):
        got = scaled_inv_freq(head_dim, theta, scaling)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(plain))


@pytest.mark.parametrize(
    "kind, params",
    [("linear", dict(factor=4.0)), ("llama3", dict(LLAMA3, original_max_position_embeddings=64))],
)
def test_rope_kinds_match_transformers(kind, params):
    pytest.importorskip("torch")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    theta, head_dim = 500_000.0, 64
    hf = LlamaConfig(
        hidden_size=256,
        num_attention_heads=4,
        rope_parameters={"rope_type": kind, "rope_theta": theta, **params},
    )
    want, _ = ROPE_INIT_FUNCTIONS[kind](hf)
    got = scaled_inv_freq(head_dim, theta, RopeScaling(kind=kind, **params))
    np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-6)
    assert not np.allclose(np.asarray(got), np.asarray(rope_inv_freq(head_dim, theta)))


def test_a_registered_rope_kind_is_found_and_an_unknown_one_is_one_line():
    with pytest.raises(ConfigError, match=r"unknown RoPE scaling kind 'half'; expected one of"):
        RopeScaling(kind="half")

    @register_rope_kind("half")
    def half(inv_freq_f, scaling, theta):
        return inv_freq_f / 2

    try:
        got = scaled_inv_freq(8, 100.0, RopeScaling(kind="half"))
        np.testing.assert_allclose(np.asarray(got), np.asarray(rope_inv_freq(8, 100.0)) / 2)
    finally:
        del ROPE_KINDS["half"]


def test_config_reads_old_files_and_the_new_fields():
    """Saved config.json from before these fields (ffn_chunk_size still under attention) load;
    the new fields round-trip through to_dict / from_dict (the config file's form)."""
    old = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    old["num_kv_heads"] = 2
    old["attention"] = dict(backend="blockwise", ffn_chunk_size=8)
    cfg = ModelConfig.from_dict(old)
    assert cfg.ffn_chunk_size == 8 and cfg.attention.backend == "blockwise"
    assert cfg.rope_scaling is None and cfg.attention_bias is False
    assert cfg.replace(attention={"ffn_chunk_size": 4}).ffn_chunk_size == 4
    new = cfg.replace(attention_bias=True, rope_scaling={"kind": "llama3", **LLAMA3})
    assert new.rope_scaling == RopeScaling(kind="llama3", **LLAMA3)
    assert ModelConfig.from_dict(new.to_dict()) == new
    with pytest.raises(ConfigError, match="unknown RoPE scaling kind 'dynamic'"):
        ModelConfig.from_dict({**new.to_dict(), "rope_scaling": {"kind": "dynamic"}})


def _lwm_from_hf(hf_model, cfg: ModelConfig) -> Transformer:
    """lwm's model holding the HF model's weights (mapped by `params_from_hf`)."""
    from lwm.interop.hf_weights import params_from_hf

    tensors = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    set_params(model, params_from_hf(tensors.__getitem__, cfg))
    return model


def _compare(hf_model, cfg: ModelConfig) -> Transformer:
    import torch

    tokens = np.random.default_rng(0).integers(0, TINY["vocab_size"], (2, 40))
    hf_model.eval()
    with torch.no_grad():
        want = hf_model(torch.as_tensor(tokens)).logits.numpy()
    model = _lwm_from_hf(hf_model, cfg)
    got = np.asarray(model(jnp.asarray(tokens, jnp.int32)).logits)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    return model


def _lwm_config(**kw) -> ModelConfig:
    return ModelConfig(
        vocab_size=TINY["vocab_size"],
        hidden_size=TINY["hidden_size"],
        intermediate_size=TINY["intermediate_size"],
        num_layers=TINY["num_hidden_layers"],
        num_heads=TINY["num_attention_heads"],
        num_kv_heads=TINY["num_key_value_heads"],
        rms_norm_eps=TINY["rms_norm_eps"],
        **kw,
    )


def test_attention_bias_matches_qwen2():
    """Qwen2 is LLaMA plus q/k/v biases: `attention_bias=True` on the same forward path."""
    torch = pytest.importorskip("torch")
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(**TINY, rope_theta=20000.0))
    with torch.no_grad():  # HF initialises biases to zero: make them matter
        for name, p in hf.named_parameters():
            if name.endswith("_proj.bias"):
                p.copy_(0.5 * torch.randn_like(p))
    cfg = _lwm_config(attention_bias=True, rope_theta=20000.0)
    model = _compare(hf, cfg)
    attn = model.blocks[0].attn
    assert attn.bq[...].shape == (4, 8) and attn.bk[...].shape == attn.bv[...].shape == (2, 8)
    # The biases are used: zeroing them changes the logits.
    tokens = jnp.arange(12, dtype=jnp.int32)[None]
    before = model(tokens).logits
    for block in model.blocks:
        block.attn.bq[...] = jnp.zeros_like(block.attn.bq[...])
    assert float(jnp.max(jnp.abs(model(tokens).logits - before))) > 1e-3
    assert Transformer(_lwm_config(), rngs=nnx.Rngs(0)).blocks[0].attn.bq is None


def test_llama3_rope_matches_transformers_llama():
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = dict(LLAMA3, original_max_position_embeddings=16)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(
        LlamaConfig(**TINY, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, **rope})
    )
    _compare(hf, _lwm_config(rope_theta=5e5, rope_scaling=RopeScaling(kind="llama3", **rope)))


def test_hf_family_table_refuses_unregistered_families_in_one_line():
    from lwm.interop.hf_config import HF_FAMILIES, model_config_from_hf, model_config_to_hf

    assert list(HF_FAMILIES) == ["llama", "qwen2", "mistral"]
    gemma = dict(model_type="gemma", architectures=["GemmaForCausalLM"])
    message = (
        "unsupported model: model_type='gemma' architectures=['GemmaForCausalLM'] "
        "(expected a LLaMA LlamaForCausalLM, a Qwen2 Qwen2ForCausalLM, a Mistral "
        "MistralForCausalLM)"
    )
    with pytest.raises(LwmError) as e:
        model_config_from_hf(gemma)
    assert str(e.value) == message
    assert model_config_to_hf(_lwm_config(attention_bias=True))["model_type"] == "qwen2"
    assert model_config_to_hf(_lwm_config())["architectures"] == ["LlamaForCausalLM"]

    @register_rope_kind("half")
    def half(inv_freq_f, scaling, theta):
        return inv_freq_f / 2

    try:  # a kind only lwm knows has no transformers spelling: no family writes it
        with pytest.raises(LwmError, match="no HF model family represents this model"):
            model_config_to_hf(_lwm_config(rope_scaling=RopeScaling(kind="half")))
    finally:
        del ROPE_KINDS["half"]


def test_old_ffn_chunk_spelling_in_config_files_and_overrides():
    """`model.attention.ffn_chunk_size` (before the field moved to the model) still sets it,
    from a config file and from a command-line override."""
    from lwm.config import load_config

    config = load_config("lwm-7b", ["model.attention.ffn_chunk_size=512"])
    assert ModelConfig.from_dict(config.model).ffn_chunk_size == 512
    assert ModelConfig.from_dict(load_config("lwm-7b").model).ffn_chunk_size == 2048
    config.model.attention.ffn_chunk_size = 0  # a config file written with the old spelling
    assert ModelConfig.from_dict(config.model).ffn_chunk_size == 0
    assert ModelConfig.from_dict(load_config("lwm-7b", ["model.ffn_chunk_size=8"]).model) == (
        ModelConfig.from_dict(load_config("lwm-7b").model).replace(ffn_chunk_size=8)
    )
