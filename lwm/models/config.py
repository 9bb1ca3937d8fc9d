"""Typed model and attention configs, built from the `model` section of an ml_collections config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import jax.numpy as jnp

from lwm.errors import ConfigError

AttentionBackend = Literal["dense", "blockwise", "ring"]
Layout = Literal["contiguous", "zigzag", "striped"]
AttentionKernel = Literal["auto", "xla", "pallas"]
RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
OutputMode = Literal["text", "vision", "both"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name: str):
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    backend: AttentionBackend = "dense"
    """Implementation: `dense` (reference), `blockwise` (flash-style), `ring` (over `sp`)."""
    query_chunk_size: int = 512
    """Query block length for blockwise/ring attention (per device for ring)."""
    key_chunk_size: int = 512
    """Key/value block length for blockwise/ring attention."""
    causal_block_size: int | None = None
    """Block-causal masking (LWM option): tokens see whole blocks of this size; None = causal."""
    layout: Layout = "zigzag"
    """Placement of sequence chunks over `sp` for ring attention; load-balanced by default."""
    ffn_chunk_size: int = 0
    """Blockwise feed-forward: chunk length over the sequence (0 = off)."""
    kernel: AttentionKernel = "auto"
    """Implementation of blockwise/ring attention: `xla` (einsum chunk loops), `pallas` (fused
    kernels, lwm/attention/flash.py; interpreted on CPU), `auto` = pallas on GPU/TPU, xla on CPU."""
    kernel_block_q: int = 0
    """Pallas query tile (rows per program, forward and backward); 0 = the backend's default."""
    kernel_block_k: int = 0
    """Pallas key tile (rows per inner step, forward and backward); 0 = the backend's default."""

    def __post_init__(self):
        kernels = ("auto", "xla", "pallas")
        if self.kernel not in kernels:
            raise ConfigError(
                f"unknown attention kernel {self.kernel!r}; expected one of {kernels}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 32000
    """Text vocabulary size (LLaMA-2: 32000)."""
    hidden_size: int = 4096
    """Model width d_model."""
    intermediate_size: int = 11008
    """SwiGLU hidden width."""
    num_layers: int = 32
    """Number of transformer blocks."""
    num_heads: int = 32
    """Query heads."""
    num_kv_heads: int = 32
    """Key/value heads (grouped-query attention when < num_heads)."""
    head_dim: int = 0
    """Per-head width; 0 = hidden_size // num_heads."""
    rms_norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    rope_theta: float = 10000.0
    """RoPE base frequency (raised per context stage, as LWM: 1M ... 50M)."""
    max_sequence_length: int = 4096
    """Longest sequence the model is configured for (RoPE tables, inference limits)."""
    tie_word_embeddings: bool = False
    """Share the text embedding table with the output head."""
    initializer_range: float = 0.02
    """Std of the normal init for weights."""
    param_dtype: str = "float32"
    """Storage dtype of parameters."""
    dtype: str = "float32"
    """Compute dtype of activations and matmuls (softmax and norms accumulate in fp32)."""
    scan_layers: bool = False
    """Stack blocks and run them with a scan (faster compiles for deep models)."""
    remat_policy: RematPolicy = "none"
    """Rematerialization of each block in backward: none, full, or save dot outputs."""
    vision_vocab_size: int = 0
    """Vision vocabulary (VQ codes + special codes); 0 = text-only model. LWM: 8448."""
    vision_eof_id: int = 8192
    """End-of-frame code in the vision vocabulary (LWM: 8192)."""
    vision_eov_id: int = 8193
    """End-of-video code in the vision vocabulary (LWM: 8193)."""
    attention: AttentionConfig = dataclasses.field(default_factory=AttentionConfig)
    """Attention backend and its block sizes."""

    def __post_init__(self):
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise ConfigError(
                    f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.vision_vocab_size and not (
            self.vision_eof_id < self.vision_vocab_size
            and self.vision_eov_id < self.vision_vocab_size
        ):
            raise ConfigError(
                f"vision_eof_id/eov_id {self.vision_eof_id}/{self.vision_eov_id} "
                f"outside vision_vocab_size {self.vision_vocab_size}"
            )
        to_dtype(self.param_dtype)
        to_dtype(self.dtype)

    @property
    def has_vision(self) -> bool:
        return self.vision_vocab_size > 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Builds from a plain mapping or ConfigDict; unknown keys are an error."""
        d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
        attn = d.pop("attention", {}) or {}
        attn = dict(attn.to_dict() if hasattr(attn, "to_dict") else attn)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config fields: {sorted(unknown)}")
        attn_known = {f.name for f in dataclasses.fields(AttentionConfig)}
        if set(attn) - attn_known:
            raise ConfigError(f"unknown attention config fields: {sorted(set(attn) - attn_known)}")
        return cls(**d, attention=AttentionConfig(**attn))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> ModelConfig:
        """A copy with fields replaced; `attention=` may be a dict of attention fields to change."""
        if isinstance(kw.get("attention"), Mapping):
            kw["attention"] = dataclasses.replace(self.attention, **kw["attention"])
        return dataclasses.replace(self, **kw)
