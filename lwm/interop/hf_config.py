"""HF config.json <-> lwm `ModelConfig`, through one table of model families; refuses what lwm
cannot represent.

A family (`HfFamily`, keyed by HF `model_type`) says which `architectures` it covers, how its
config.json reads into a `ModelConfig` and how a `ModelConfig` it can represent is written back.
Weight names follow from the `ModelConfig` (`lwm.interop.hf_weights`: q/k/v bias tensors when
`attention_bias`). Only LLaMA is registered; a family whose forward is LLaMA's with q/k/v biases
or a RoPE scaling (Qwen2, Llama-3) is one more entry mapping those fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lwm.errors import LwmError
from lwm.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class HfFamily:
    """One transformers model family that lwm reads and writes."""

    description: str
    """How refusals name it: `a LLaMA LlamaForCausalLM`."""
    architectures: tuple[str, ...]
    """HF `architectures` it covers; the first is written (and assumed when a file has none)."""
    from_hf: Callable[[dict[str, Any]], ModelConfig]
    """config.json dict -> ModelConfig (one-line LwmErrors for fields it cannot represent)."""
    to_hf: Callable[[ModelConfig, str], dict[str, Any]]
    """(ModelConfig, torch dtype) -> config.json dict."""
    writes: Callable[[ModelConfig], bool]
    """Whether `to_hf` can represent this ModelConfig."""


HF_FAMILIES: dict[str, HfFamily] = {}
"""Registered families by HF `model_type`."""
DEFAULT_MODEL_TYPE = "llama"
"""Assumed when a config.json names no `model_type`."""


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


def hf_family(hf: dict[str, Any]) -> HfFamily:
    """The registered family of a config.json dict, or a one-line LwmError."""
    family = HF_FAMILIES.get(hf.get("model_type", DEFAULT_MODEL_TYPE))
    default = (family or HF_FAMILIES[DEFAULT_MODEL_TYPE]).architectures[:1]
    archs = hf.get("architectures") or list(default)
    if family is None or not set(archs) & set(family.architectures):
        expected = " or ".join(f.description for f in HF_FAMILIES.values())
        raise LwmError(
            f"unsupported model: model_type={hf.get('model_type')!r} architectures={archs} "
            f"(expected {expected})"
        )
    return family


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Maps a HF config dict to ModelConfig through its family; raises LwmError naming what is
    unsupported."""
    return hf_family(hf).from_hf(hf)


def model_config_to_hf(cfg: ModelConfig, *, torch_dtype: str = "float32") -> dict[str, Any]:
    """A config.json dict that transformers loads, written by the first family that can
    represent `cfg`."""
    for family in HF_FAMILIES.values():
        if family.writes(cfg):
            return family.to_hf(cfg, torch_dtype)
    raise LwmError(
        f"no HF model family represents this model (attention_bias={cfg.attention_bias}, "
        f"rope_scaling={cfg.rope_scaling})"
    )


def llama_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A HF LLaMA config dict as ModelConfig; raises LwmError naming what is unsupported."""
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


def llama_writes(cfg: ModelConfig) -> bool:
    """LLaMA has no q/k/v biases, and lwm writes only plain RoPE into its config."""
    plain_rope = cfg.rope_scaling is None or cfg.rope_scaling.kind == "default"
    return not cfg.attention_bias and plain_rope


def llama_config_to_hf(cfg: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
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


HF_FAMILIES["llama"] = HfFamily(
    description="a LLaMA LlamaForCausalLM",
    architectures=("LlamaForCausalLM",),
    from_hf=llama_config_from_hf,
    to_hf=llama_config_to_hf,
    writes=llama_writes,
)

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
