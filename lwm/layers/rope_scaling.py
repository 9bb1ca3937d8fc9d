"""RoPE frequency scalings, a registry keyed by name (a model family's RoPE variant).

A kind maps the plain inverse frequencies `[H / 2]` (`rope_inv_freq`) to the ones the family
uses, so the attention layer stays one code path: `default` (plain RoPE, LLaMA-2 / LWM), `linear`
(position interpolation: every frequency / factor) and `llama3` (Llama-3.1: long wavelengths /
factor, short ones kept, a smooth blend between). A new kind is one `@register_rope_kind("name")`
function; `ModelConfig.rope_scaling` names it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from lwm.errors import ConfigError

RopeKind = Callable[[jax.Array, "RopeScaling"], jax.Array]
ROPE_KINDS: dict[str, RopeKind] = {}
"""Registered scalings: name -> `(inv_freq_f, scaling) -> scaled inv_freq_f`."""


def register_rope_kind(name: str) -> Callable[[RopeKind], RopeKind]:
    """Decorator registering a scaling under `name` (the value of `RopeScaling.kind`)."""

    def register(fn: RopeKind) -> RopeKind:
        ROPE_KINDS[name] = fn
        return fn

    return register


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """A RoPE scaling: the registered kind and its factors (HF's `rope_parameters`)."""

    kind: str = "default"
    """Registered kind: `default` (plain RoPE), `linear` or `llama3` (see `ROPE_KINDS`)."""
    factor: float = 1.0
    """Context extension factor: frequencies (all for `linear`, long ones for `llama3`) / factor."""
    low_freq_factor: float = 1.0
    """`llama3`: wavelengths over `original_max_position_embeddings / low_freq_factor` scale."""
    high_freq_factor: float = 4.0
    """`llama3`: wavelengths under `original_max_position_embeddings / high_freq_factor` stay."""
    original_max_position_embeddings: int = 8192
    """`llama3`: context length the model was pre-trained with."""

    def __post_init__(self):
        if self.kind not in ROPE_KINDS:
            raise ConfigError(
                f"unknown RoPE scaling kind {self.kind!r}; expected one of {sorted(ROPE_KINDS)}"
            )
        if self.factor <= 0:
            raise ConfigError(f"RoPE scaling factor must be > 0, got {self.factor}")


def rope_inv_freq(head_dim: int, theta: float) -> jax.Array:
    """Plain RoPE inverse frequencies `theta ** (-2i / head_dim)`, `[head_dim / 2]` fp32."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.int32).astype(jnp.float32) / head_dim
    return 1.0 / (theta**exponents)


def scaled_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> jax.Array:
    """The inverse frequencies of `scaling`'s kind (plain RoPE when None)."""
    inv_freq_f = rope_inv_freq(head_dim, theta)
    if scaling is None:
        return inv_freq_f
    return ROPE_KINDS[scaling.kind](inv_freq_f, scaling)


@register_rope_kind("default")
def default_rope(inv_freq_f: jax.Array, scaling: RopeScaling) -> jax.Array:
    return inv_freq_f


@register_rope_kind("linear")
def linear_rope(inv_freq_f: jax.Array, scaling: RopeScaling) -> jax.Array:
    return inv_freq_f / scaling.factor


@register_rope_kind("llama3")
def llama3_rope(inv_freq_f: jax.Array, scaling: RopeScaling) -> jax.Array:
    factor, old_len = scaling.factor, scaling.original_max_position_embeddings
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen_f = 2 * math.pi / inv_freq_f
    scaled_f = jnp.where(wavelen_f > low_freq_wavelen, inv_freq_f / factor, inv_freq_f)
    smooth_f = (old_len / wavelen_f - low) / (high - low)
    smoothed_f = (1 - smooth_f) * scaled_f / factor + smooth_f * scaled_f
    medium = ~(wavelen_f < high_freq_wavelen) & ~(wavelen_f > low_freq_wavelen)
    return jnp.where(medium, smoothed_f, scaled_f)
