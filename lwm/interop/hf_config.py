"""HF config.json <-> lwm `ModelConfig`, through one table of model families; refuses what lwm
cannot represent.

A family (`HfFamily`, keyed by HF `model_type`) says which `architectures` it covers, how its
config.json reads into a `ModelConfig` and how a `ModelConfig` it can represent is written back.
Weight names follow from the `ModelConfig` (`lwm.interop.hf_weights`: q/k/v bias tensors when
`attention_bias`). Registered: LLaMA 1/2/3.x (SmolLM2 is LLaMA, tied), Qwen2/Qwen2.5 (LLaMA with
q/k/v biases) and Mistral (LLaMA's forward when no sliding window applies). Each reads every
RoPE type lwm implements (`default`, `linear`, `llama3`, `yarn`) in both transformers spellings
(`lwm.interop.hf_fields.rope_from_hf`). `to-hf` writes LLaMA, or Qwen2 for a model with biases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lwm.errors import LwmError
from lwm.interop.hf_fields import (
    hf_bool,
    hf_dict,
    hf_float,
    hf_int,
    hf_str,
    hf_str_list,
    rope_from_hf,
)
from lwm.layers.rope_scaling import rope_scaling_to_hf
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
    """Whether `to_hf` is the family lwm writes this ModelConfig as."""


HF_FAMILIES: dict[str, HfFamily] = {}
"""Registered families by HF `model_type`."""
DEFAULT_MODEL_TYPE = "llama"
"""Assumed when a config.json names no `model_type`."""


def hf_family(hf: dict[str, Any]) -> HfFamily:
    """The registered family of a config.json dict, or a one-line LwmError."""
    hf = hf_dict(hf)
    model_type = hf_str(hf, "model_type", DEFAULT_MODEL_TYPE)
    family = HF_FAMILIES.get(model_type)
    default = (family or HF_FAMILIES[DEFAULT_MODEL_TYPE]).architectures[:1]
    archs = hf_str_list(hf, "architectures") or list(default)
    if family is None or not set(archs) & set(family.architectures):
        expected = ", ".join(f.description for f in HF_FAMILIES.values())
        raise LwmError(
            f"unsupported model: model_type={hf.get('model_type')!r} architectures={archs} "
            f"(expected {expected})"
        )
    return family


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Maps a HF config dict to ModelConfig through its family; raises LwmError naming what is
    unsupported or malformed."""
    return hf_family(hf).from_hf(hf_dict(hf))


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


# -- the LLaMA-shaped decoder every family here is -------------------------------------------


@dataclasses.dataclass(frozen=True)
class HfDefaults:
    """A family's transformers defaults for fields a config.json may leave out."""

    max_position_embeddings: int
    num_key_value_heads: int | None
    """None: as many as the query heads."""


def decoder_config_from_hf(
    hf: dict[str, Any], defaults: HfDefaults, *, attention_bias: bool
) -> ModelConfig:
    """The fields every LLaMA-shaped family shares, each checked (one-line LwmErrors)."""
    act = hf_str(hf, "hidden_act", "silu")
    if act != "silu":
        raise LwmError(f"unsupported config: hidden_act={act!r} (expected silu)")
    hidden = hf_int(hf, "hidden_size")
    num_heads = hf_int(hf, "num_attention_heads")
    head_dim = hf_int(hf, "head_dim", hidden // num_heads)
    if head_dim % 2:
        raise LwmError(f"config.json head_dim: RoPE needs an even head size, got {head_dim}")
    num_kv_heads = hf_int(hf, "num_key_value_heads", defaults.num_key_value_heads or num_heads)
    if num_heads % num_kv_heads:
        raise LwmError(
            f"config.json num_key_value_heads {num_kv_heads} does not divide "
            f"num_attention_heads {num_heads}"
        )
    max_positions = hf_int(hf, "max_position_embeddings", defaults.max_position_embeddings)
    theta, scaling = rope_from_hf(hf, max_positions)
    return ModelConfig(
        vocab_size=hf_int(hf, "vocab_size"),
        hidden_size=hidden,
        intermediate_size=hf_int(hf, "intermediate_size"),
        num_layers=hf_int(hf, "num_hidden_layers"),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rms_norm_eps=hf_float(hf, "rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        attention_bias=attention_bias,
        max_sequence_length=max_positions,
        tie_word_embeddings=hf_bool(hf, "tie_word_embeddings", False),
        initializer_range=hf_float(hf, "initializer_range", 0.02, positive=False),
    )


def writes_rope(cfg: ModelConfig) -> bool:
    """Whether transformers has a spelling for `cfg`'s RoPE (a kind registered only in lwm has
    none)."""
    try:
        rope_scaling_to_hf(cfg.rope_scaling, cfg.rope_theta)
    except LwmError:
        return False
    return True


def decoder_config_to_hf(
    cfg: ModelConfig, torch_dtype: str, architecture: str, model_type: str
) -> dict[str, Any]:
    """The config.json fields every family here shares. RoPE is written in both spellings:
    `rope_parameters` (transformers 5.x) and `rope_theta` + `rope_scaling` (4.x; 5.x reads
    `rope_scaling` first, and it says the same). A vision model becomes one vocabulary of text
    ids then vision ids (`vision_sidecar`), with an untied lm_head."""
    params = rope_scaling_to_hf(cfg.rope_scaling, cfg.rope_theta)
    legacy = None
    if cfg.rope_scaling is not None and cfg.rope_scaling.kind != "default":
        legacy = {k: v for k, v in params.items() if k != "rope_theta"}
        legacy["type"] = params["rope_type"]  # the key transformers < 4.43 read
    return {
        "architectures": [architecture],
        "model_type": model_type,
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
        "rope_scaling": legacy,
        "rope_parameters": params,
        "max_position_embeddings": cfg.max_sequence_length,
        # lwm's vision head is its own matrix, never the vision table: untied once combined.
        "tie_word_embeddings": cfg.tie_word_embeddings and not cfg.has_vision,
        "initializer_range": cfg.initializer_range,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
    }


# -- LLaMA 1/2/3.x, SmolLM2 -------------------------------------------------------------------

LLAMA_DEFAULTS = HfDefaults(max_position_embeddings=2048, num_key_value_heads=None)


def llama_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A HF LLaMA config dict as ModelConfig; raises LwmError naming what is unsupported."""
    for flag in ("attention_bias", "mlp_bias"):
        if hf_bool(hf, flag, False):
            # LLaMA's attention_bias also puts a bias on o_proj, which lwm's model lacks.
            raise LwmError(f"unsupported config: {flag}=true (lwm's LLaMA has no biases)")
    return decoder_config_from_hf(hf, LLAMA_DEFAULTS, attention_bias=False)


def llama_writes(cfg: ModelConfig) -> bool:
    """LLaMA has no q/k/v biases; any RoPE kind transformers spells."""
    return not cfg.attention_bias and writes_rope(cfg)


def llama_config_to_hf(cfg: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """A config.json dict that transformers' LlamaForCausalLM loads."""
    out = decoder_config_to_hf(cfg, torch_dtype, "LlamaForCausalLM", "llama")
    return {**out, "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2}


HF_FAMILIES["llama"] = HfFamily(
    description="a LLaMA LlamaForCausalLM",
    architectures=("LlamaForCausalLM",),
    from_hf=llama_config_from_hf,
    to_hf=llama_config_to_hf,
    writes=llama_writes,
)

# -- Qwen2 / Qwen2.5 ---------------------------------------------------------------------------

QWEN2_DEFAULTS = HfDefaults(max_position_embeddings=32768, num_key_value_heads=32)


def qwen2_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Qwen2: LLaMA with biases on q/k/v (always; o_proj has none). Its sliding window (off in
    every released Qwen2/2.5) is refused."""
    if hf_bool(hf, "use_sliding_window", False):
        raise LwmError(
            "unsupported config: use_sliding_window=true (lwm attends to the whole context)"
        )
    layer_types = hf_str_list(hf, "layer_types") or []
    other = sorted(set(layer_types) - {"full_attention"})
    if other:
        raise LwmError(f"unsupported config: layer_types has {other[0]!r} layers")
    return decoder_config_from_hf(hf, QWEN2_DEFAULTS, attention_bias=True)


def qwen2_config_to_hf(cfg: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """A config.json dict that transformers' Qwen2ForCausalLM loads."""
    out = decoder_config_to_hf(cfg, torch_dtype, "Qwen2ForCausalLM", "qwen2")
    return {**out, "use_sliding_window": False, "sliding_window": None}


HF_FAMILIES["qwen2"] = HfFamily(
    description="a Qwen2 Qwen2ForCausalLM",
    architectures=("Qwen2ForCausalLM",),
    from_hf=qwen2_config_from_hf,
    to_hf=qwen2_config_to_hf,
    writes=lambda cfg: cfg.attention_bias and writes_rope(cfg),
)

# -- Mistral -----------------------------------------------------------------------------------

MISTRAL_DEFAULTS = HfDefaults(max_position_embeddings=4096 * 32, num_key_value_heads=8)
MISTRAL_DEFAULT_WINDOW = 4096
"""transformers' MistralConfig default `sliding_window` (used when the key is absent)."""


def mistral_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Mistral: LLaMA's forward, plus a sliding window lwm does not implement. A window at least
    `max_position_embeddings` long masks nothing in any sequence the model is configured for
    (each query sees at most that many keys), so it is accepted; a shorter one is refused."""
    cfg = decoder_config_from_hf(hf, MISTRAL_DEFAULTS, attention_bias=False)
    window = hf.get("sliding_window", MISTRAL_DEFAULT_WINDOW)
    if window is not None:
        window = hf_int(hf, "sliding_window", MISTRAL_DEFAULT_WINDOW)
        if window < cfg.max_sequence_length:
            raise LwmError(
                f"unsupported config: sliding_window={window} (shorter than "
                f"max_position_embeddings {cfg.max_sequence_length}; lwm attends to the whole "
                "context)"
            )
    return cfg


def mistral_config_to_hf(cfg: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """A config.json dict that transformers' MistralForCausalLM loads (no sliding window)."""
    out = decoder_config_to_hf(cfg, torch_dtype, "MistralForCausalLM", "mistral")
    return {**out, "sliding_window": None}


HF_FAMILIES["mistral"] = HfFamily(
    description="a Mistral MistralForCausalLM",
    architectures=("MistralForCausalLM",),
    from_hf=mistral_config_from_hf,
    to_hf=mistral_config_to_hf,
    writes=lambda cfg: False,  # the same model is written as LLaMA
)

# -- vision models exported as one vocabulary --------------------------------------------------

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
