"""HF `LlamaConfig` (config.json) <-> lwm `ModelConfig`; refuses what lwm cannot represent."""

from __future__ import annotations

from typing import Any

from lwm.errors import LwmError
from lwm.models.config import ModelConfig

_SUPPORTED_ARCHS = {"LlamaForCausalLM"}


def _rope_theta(hf: dict[str, Any]) -> float:
    # transformers >= 5 keeps RoPE settings in `rope_parameters`; older files use rope_theta and
    # rope_scaling at the top level.
    # Every place a scaling may be named is checked: a file can carry both (a top-level linear
    # `rope_scaling` beside `rope_parameters.rope_type: default`), and either one would change
    # the positions the weights were trained with.
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    named = {
        "rope_parameters.rope_type": params.get("rope_type"),
        "rope_scaling.rope_type": scaling.get("rope_type"),
        "rope_scaling.type": scaling.get("type"),
    }
    for where, rope_type in named.items():
        if rope_type not in (None, "default"):
            raise LwmError(
                f"unsupported RoPE scaling {where}={rope_type!r} (only plain RoPE is supported)"
            )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Maps a HF LLaMA config dict to ModelConfig; raises LwmError naming what is unsupported."""
    archs = hf.get("architectures") or ["LlamaForCausalLM"]
    if hf.get("model_type", "llama") != "llama" or not set(archs) & _SUPPORTED_ARCHS:
        raise LwmError(
            f"unsupported model: model_type={hf.get('model_type')!r} architectures={archs} "
            "(expected a LLaMA LlamaForCausalLM)"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise LwmError(f"unsupported config: {flag}=true (lwm's LLaMA has no biases)")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise LwmError(f"unsupported config: hidden_act={act!r} (expected silu)")
    missing = [
        k
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        if k not in hf
    ]
    if missing:
        raise LwmError(f"config.json lacks {', '.join(missing)}")
    num_heads = int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or hf["hidden_size"] // num_heads)
    return ModelConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(hf),
        max_sequence_length=int(hf.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
    )


def model_config_to_hf(cfg: ModelConfig, *, torch_dtype: str = "float32") -> dict[str, Any]:
    """A config.json dict that transformers' LlamaForCausalLM loads. A vision model becomes one
    vocabulary of text ids then vision ids (`vision_sidecar`), with an untied lm_head."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size + cfg.vision_vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "max_position_embeddings": cfg.max_sequence_length,
        # lwm's vision head is its own matrix, never the vision table: untied once combined.
        "tie_word_embeddings": cfg.tie_word_embeddings and not cfg.has_vision,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": cfg.initializer_range,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
    }


VISION_SIDECAR = "lwm_vision.json"
"""File next to config.json describing the combined text ++ vision vocabulary."""


def vision_sidecar(cfg: ModelConfig) -> dict[str, Any]:
    """Offsets of an exported vision model: HF id = text id, or vision_offset + vision id."""
    off = cfg.vocab_size
    return {
        "format": "lwm-vision-vocab/1",
        "text_vocab_size": cfg.vocab_size,
        "vision_offset": off,
        "vision_vocab_size": cfg.vision_vocab_size,
        "vision_eof_id": off + cfg.vision_eof_id,
        "vision_eov_id": off + cfg.vision_eov_id,
        "vision_eof_code": cfg.vision_eof_id,
        "vision_eov_code": cfg.vision_eov_id,
        "vocab_size": off + cfg.vision_vocab_size,
        "how": "hf_id = vision_offset + code for vision tokens (VQGAN codes, end-of-frame, "
        "end-of-video), text ids unchanged; logits[..., :vision_offset] are lwm's text logits "
        "and logits[..., vision_offset:] its vision logits",
    }
