"""Typed VQGAN config, built from the `vqgan` section of an ml_collections config file."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lwm.config import parse_section
from lwm.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    name: str = "vqgan_lwm"
    """Preset name, stored in checkpoint metadata so a loader can refuse the wrong preset."""
    resolution: int = 256
    """Square frame size the model encodes (frames are resized + center-cropped to it)."""
    in_channels: int = 3
    """Image channels (RGB)."""
    base_channels: int = 128
    """Width of the first encoder level; level i has base_channels * channel_multipliers[i]."""
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4, 6)
    """Per-level width multipliers; len - 1 stride-2 downsamplings (LWM: 256 -> 16)."""
    num_res_blocks: int = 2
    """Residual blocks per encoder level (and per decoder level unless `decoder_res_blocks`)."""
    decoder_res_blocks: int = 0
    """Residual blocks per decoder level; 0 = `num_res_blocks` (LWM: num_res_blocks + 1 = 3)."""
    mid_res_blocks: int = 0
    """Residual blocks in the encoder's and decoder's middle stage; 0 = `num_res_blocks`
    (LWM: always 2)."""
    norm_groups: int = 32
    """GroupNorm groups (must divide every level's width)."""
    codebook_size: int = 8192
    """Number of codebook entries (LWM: 8192). Must stay below the end-of-frame code id."""
    embed_dim: int = 64
    """Width of a codebook vector (LWM: 64)."""
    commitment_weight: float = 0.25
    """Weight of the commitment loss ||z - sg(e)||^2 (pulls encoder outputs to their codes)."""
    codebook_weight: float = 1.0
    """Weight of the codebook loss ||sg(z) - e||^2 (pulls codes to encoder outputs)."""
    usage_decay: float = 0.99
    """Decay of the per-code usage EMA that drives dead-code restarts."""
    dead_code_threshold: float = 0.03
    """A code whose usage EMA (expected hits per step) falls below this is restarted; 0 = off."""
    dtype: str = "float32"
    """Compute dtype of convolutions (params stay float32)."""

    def __post_init__(self):
        object.__setattr__(self, "channel_multipliers", tuple(self.channel_multipliers))
        if len(self.channel_multipliers) < 1:
            raise ConfigError("vqgan.channel_multipliers must not be empty")
        factor = self.downsample_factor
        if self.resolution % factor:
            raise ConfigError(
                f"vqgan.resolution {self.resolution} not divisible by the downsampling "
                f"factor {factor} of channel_multipliers {self.channel_multipliers}"
            )
        for m in self.channel_multipliers:
            if (self.base_channels * m) % self.norm_groups:
                raise ConfigError(
                    f"vqgan.norm_groups {self.norm_groups} does not divide level width "
                    f"{self.base_channels * m}"
                )
        if self.num_res_blocks < 1 or self.decoder_res_blocks < 0 or self.mid_res_blocks < 0:
            raise ConfigError(
                "vqgan.num_res_blocks must be >= 1, decoder_res_blocks / mid_res_blocks >= 0 "
                "(0 = num_res_blocks)"
            )
        if self.codebook_size < 2 or self.embed_dim < 1:
            raise ConfigError("vqgan.codebook_size must be >= 2 and embed_dim >= 1")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"vqgan.dtype {self.dtype!r}: expected float32/bfloat16/float16")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def decoder_blocks(self) -> int:
        """Residual blocks per decoder level (resolved)."""
        return self.decoder_res_blocks or self.num_res_blocks

    @property
    def mid_blocks(self) -> int:
        """Residual blocks of the middle stages (resolved)."""
        return self.mid_res_blocks or self.num_res_blocks

    @property
    def latent_size(self) -> int:
        """Codes per side of a frame (LWM: 16)."""
        return self.resolution // self.downsample_factor

    @property
    def tokens_per_frame(self) -> int:
        return self.latent_size**2

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VQGANConfig:
        """Builds from the `vqgan` section (see `lwm.config.parse_section`)."""
        return parse_section(cls, d, "vqgan")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_multipliers"] = list(self.channel_multipliers)
        return d
