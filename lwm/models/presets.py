"""Model presets (plain dicts of ModelConfig fields) and the base run config built on them."""

from __future__ import annotations

import copy

import ml_collections

from lwm.errors import ConfigError

_LLAMA2_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_sequence_length=4096,
)

# How lwm runs LWM's 7B models: scanned + rematted layers, bf16 compute over fp32 params, ring
# attention (shared by `lwm-7b` and LWM's released models below).
_LWM_RUNTIME = dict(
    scan_layers=True,
    remat_policy="full",
    param_dtype="float32",
    dtype="bfloat16",
    attention=dict(
        backend="ring",
        query_chunk_size=1024,
        key_chunk_size=1024,
        layout="zigzag",
    ),
    ffn_chunk_size=2048,
)
_LWM_VISION = dict(vision_vocab_size=8448, vision_eof_id=8192, vision_eov_id=8193)

PRESETS: dict[str, dict] = {
    # Unit tests and quick CLI checks.
    "debug": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=160,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_sequence_length=2048,
    ),
    # The CPU demo: a few million parameters.
    "tiny": dict(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=704,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        max_sequence_length=16384,
    ),
    "200m": dict(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_layers=12,
        num_heads=16,
        num_kv_heads=16,
        max_sequence_length=4096,
    ),
    # TinyLlama-1.1B shape (GQA 32/4).
    "1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_layers=22,
        num_heads=32,
        num_kv_heads=4,
        max_sequence_length=4096,
    ),
    # LLaMA-2 7B.
    "7b": dict(_LLAMA2_7B),
    # LWM-7B: LLaMA-2 7B + vision (8192 VQ codes + 256 reserved; end-of-frame 8192, end-of-video
    # 8193), at its final 1M-token stage (RoPE theta 50M), ring attention, scanned + rematted.
    "lwm-7b": dict(
        _LLAMA2_7B,
        **_LWM_RUNTIME,
        **_LWM_VISION,
        rope_theta=50_000_000.0,
        max_sequence_length=1_048_576,
    ),
    # Current open models (their HF config.json), for `lwm info`, `lwm plan` and recipes that
    # start from them (`lwm convert from-hf` / `from-gguf` reads the real config from the file).
    # SmolLM2-135M(-Instruct): LLaMA shape, GQA 9/3, tied embeddings, BPE tokenizer.json.
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        rms_norm_eps=1e-5,
        rope_theta=100_000.0,
        max_sequence_length=8192,
        tie_word_embeddings=True,
    ),
    # Llama-3.2-1B(-Instruct): GQA 32/8, tied, Llama-3.1's RoPE scaling (factor 32 over 8K).
    "llama-3.2-1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=500_000.0,
        rope_scaling=dict(
            kind="llama3",
            factor=32.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        max_sequence_length=131_072,
        tie_word_embeddings=True,
    ),
    # Qwen2.5-0.5B(-Instruct): q/k/v biases, GQA 14/2, tied.
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        max_sequence_length=32768,
        tie_word_embeddings=True,
        attention_bias=True,
    ),
}

# LWM's released models (LargeWorldModel/LWM README and paper, arXiv 2402.08268): LLaMA-2 7B with
# LWM's rms_norm_eps 1e-6 and each context stage's RoPE theta. Released Jax checkpoints load with
# `lwm convert from-lwm PARAMS OUT --config <name>`; the text models also ship as HF (from-hf).
_LWM_BASE = dict(_LLAMA2_7B, **_LWM_RUNTIME, rms_norm_eps=1e-6)
# context -> (max_sequence_length, RoPE theta) of LWM's text stages.
_LWM_TEXT_STAGES = {
    "32k": (32_768, 1_000_000.0),
    "128k": (131_072, 10_000_000.0),
    "256k": (262_144, 10_000_000.0),
    "512k": (524_288, 25_000_000.0),
    "1m": (1_048_576, 50_000_000.0),
}
for _ctx, (_len, _theta) in _LWM_TEXT_STAGES.items():
    for _name in (f"lwm-text-{_ctx}", f"lwm-text-chat-{_ctx}"):
        PRESETS[_name] = dict(_LWM_BASE, rope_theta=_theta, max_sequence_length=_len)
# Vision-language models: every vision stage used theta 50M (paper, vision-language table).
for _name, _len in (
    ("lwm-1m", 1_048_576),
    ("lwm-chat-1m", 1_048_576),
    ("lwm-chat-128k", 131_072),
    ("lwm-chat-32k", 32_768),
):
    PRESETS[_name] = dict(
        _LWM_BASE, **_LWM_VISION, rope_theta=50_000_000.0, max_sequence_length=_len
    )


def model_preset(name: str) -> dict:
    """A deep copy of the preset's ModelConfig fields."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def base_config(preset: str) -> ml_collections.ConfigDict:
    """A run config with the model preset and a default mesh (all devices on fsdp)."""
    from lwm.attention.config import AttentionConfig
    from lwm.models.config import ModelConfig

    spec = model_preset(preset)
    model = ModelConfig.from_dict(spec).to_dict()
    # head_dim is derived (hidden_size / num_heads) unless the preset fixes it: keep it 0 here, or
    # a config that changes the width or head count would silently keep the preset's head size.
    model["head_dim"] = int(spec.get("head_dim", 0))
    model["attention"] = dict(model.get("attention") or AttentionConfig().__dict__)
    config = ml_collections.ConfigDict()
    config.preset = preset
    config.model = ml_collections.ConfigDict(model)
    config.mesh = ml_collections.ConfigDict(dict(dp=1, fsdp=-1, tp=1, sp=1))
    return config
