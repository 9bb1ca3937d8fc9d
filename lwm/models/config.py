"""The typed model config, built from the `model` section of an ml_collections config.

A model family is a config: LLaMA-2 / LWM use the defaults; the knobs a family varies on
(`attention_bias` for q/k/v biases as in Qwen2, `rope_scaling` for Llama-3's or YaRN's RoPE)
change the weights or the RoPE frequencies, never the forward path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from lwm.attention import backend_names, make_attention, mesh_sp
from lwm.attention.config import AttentionConfig
from lwm.cache.kv_dtypes import check_kv_dtype
from lwm.config import parse_section
from lwm.dtypes import to_dtype
from lwm.errors import ConfigError
from lwm.layers.mlp import check_ffn_chunk
from lwm.layers.rope_scaling import RopeScaling

RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
LEGACY_FFN_KEY = "ffn_chunk_size"
"""`ffn_chunk_size` lived in the `attention` section before it moved to the model."""


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
    rope_scaling: RopeScaling | None = None
    """RoPE frequency scaling of the family (`lwm.layers.rope_scaling`: `linear`, `llama3`,
    `yarn`); None = plain RoPE (LLaMA-2, LWM). A training stage may set its own
    (`StageConfig.rope_scaling`)."""
    attention_bias: bool = False
    """Learned biases on the q/k/v projections (Qwen2); the output projection has none."""
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
    kv_dtype: str = "auto"
    """Storage of the KV cache when decoding (`lwm.cache.quant`): `auto` = the compute dtype
    `dtype`; `bfloat16` / `float32`; `int8` or `float8_e4m3fn` = 8-bit codes plus a scale per
    (token, kv head) in the compute dtype (half a bf16 cache). Training ignores it."""
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
    ffn_chunk_size: int = 0
    """Blockwise feed-forward: chunk length over the sequence (0 = off); a chunk shorter than
    the sequence must divide `seq_len / sp` (`lwm.layers.mlp.check_ffn_chunk`)."""
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
        if self.attention.backend not in backend_names():
            # Checked where the config is read (a registered backend's module must be imported
            # first), so a typo fails before any mesh or data work, as the Literal did.
            raise ConfigError(
                f"model.attention.backend {self.attention.backend!r}: expected one of "
                f"{', '.join(backend_names())}"
            )
        if self.ffn_chunk_size < 0:
            raise ConfigError(f"ffn_chunk_size must be >= 0, got {self.ffn_chunk_size}")
        to_dtype(self.param_dtype)
        to_dtype(self.dtype)
        check_kv_dtype(self.kv_dtype)

    @property
    def has_vision(self) -> bool:
        return self.vision_vocab_size > 0

    def check_shapes(self, seq_len: int, mesh: Any = None) -> None:
        """One-line ConfigErrors for sequences of `seq_len` the model cannot run on `mesh` (a
        Mesh or `{axis: size}`): the attention op's rules (length, then heads), then the
        blockwise FFN's."""
        op = make_attention(self.attention)
        op.check(seq_len, mesh)
        op.check_heads(self.num_heads, self.num_kv_heads, mesh)
        check_ffn_chunk(seq_len, mesh_sp(mesh), self.ffn_chunk_size)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Builds from the `model` section (see `lwm.config.parse_section`). The old spelling
        `attention.ffn_chunk_size` (config files and saved config.json from before the field
        moved here) is read as `ffn_chunk_size`; only a file or override that sets it puts it
        there, so it wins over the preset's top-level value."""
        if isinstance(d, cls):
            return d
        d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
        attention = d.get("attention")
        if isinstance(attention, Mapping) and LEGACY_FFN_KEY in attention:
            attention = dict(attention.to_dict() if hasattr(attention, "to_dict") else attention)
            d["ffn_chunk_size"] = attention.pop(LEGACY_FFN_KEY)
            d["attention"] = attention
        return parse_section(cls, d, "model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> ModelConfig:
        """A copy with fields replaced; `attention=` may be a dict of attention fields to change
        (its old `ffn_chunk_size` key sets the model's)."""
        if isinstance(kw.get("attention"), Mapping):
            attention = dict(kw["attention"])
            if LEGACY_FFN_KEY in attention:
                kw.setdefault("ffn_chunk_size", attention.pop(LEGACY_FFN_KEY))
            kw["attention"] = dataclasses.replace(self.attention, **attention)
        if isinstance(kw.get("rope_scaling"), Mapping):
            kw["rope_scaling"] = RopeScaling(**kw["rope_scaling"])
        return dataclasses.replace(self, **kw)


def apply_kv_dtype(cfg: ModelConfig, kv_dtype: str | None) -> ModelConfig:
    """`cfg` with the KV-cache storage of `--kv-dtype` (None = keep the config's); an unknown
    name is a one-line ConfigError."""
    return cfg if kv_dtype is None else cfg.replace(kv_dtype=check_kv_dtype(kv_dtype))
