"""RoPE frequency scalings, a registry keyed by name (a model family's RoPE variant).

A kind maps the plain inverse frequencies `[H / 2]` (`rope_inv_freq`) to the ones the family
uses, so the attention layer stays one code path: `default` (plain RoPE, LLaMA-2 / LWM), `linear`
(position interpolation: every frequency / factor), `llama3` (Llama-3.1: long wavelengths /
factor, short ones kept, a smooth blend between) and `yarn` (YaRN: the same split by rotations
over the original context, plus a factor on cos/sin). A new kind is one
`@register_rope_kind("name")` function; `ModelConfig.rope_scaling` names it.

`rope_scaling_from_hf` reads transformers' spelling (`rope_parameters` / `rope_scaling` dicts,
`rope_type` or `type`), as HF config.json files and training stages write it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lwm.errors import ConfigError

RopeKind = Callable[[jax.Array, "RopeScaling", float], jax.Array]
ROPE_KINDS: dict[str, RopeKind] = {}
"""Registered scalings: name -> `(inv_freq_f, scaling, theta) -> scaled inv_freq_f`."""
ATTENTION_FACTORS: dict[str, Callable[[RopeScaling], float]] = {}
"""Kinds that scale cos/sin (YaRN): name -> `scaling -> factor`; other kinds use 1."""
UNSUPPORTED_KINDS = {
    "dynamic": "dynamic NTK rescales with the running sequence length",
    "longrope": "LongRoPE's per-frequency factors are not implemented",
}
"""HF rope types lwm refuses, with why (any other unknown type is refused too)."""


def register_rope_kind(
    name: str, *, attention_factor: Callable[[RopeScaling], float] | None = None
) -> Callable[[RopeKind], RopeKind]:
    """Decorator registering a scaling under `name` (the value of `RopeScaling.kind`);
    `attention_factor` gives the kind's cos/sin multiplier (None: 1)."""

    def register(fn: RopeKind) -> RopeKind:
        ROPE_KINDS[name] = fn
        if attention_factor is not None:
            ATTENTION_FACTORS[name] = attention_factor
        return fn

    return register


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """A RoPE scaling: the registered kind and its factors (HF's `rope_parameters`)."""

    kind: str = "default"
    """Registered kind: `default` (plain RoPE), `linear`, `llama3` or `yarn` (`ROPE_KINDS`)."""
    factor: float = 1.0
    """Context extension factor: frequencies (all for `linear`, long ones for `llama3` / `yarn`)
    / factor."""
    low_freq_factor: float = 1.0
    """`llama3`: wavelengths over `original_max_position_embeddings / low_freq_factor` scale."""
    high_freq_factor: float = 4.0
    """`llama3`: wavelengths under `original_max_position_embeddings / high_freq_factor` stay."""
    original_max_position_embeddings: int = 8192
    """`llama3` / `yarn`: context length the model was pre-trained with."""
    beta_fast: float = 32.0
    """`yarn`: frequencies turning more than this many times over the original context stay."""
    beta_slow: float = 1.0
    """`yarn`: frequencies turning fewer than this many times over it are / factor."""
    truncate: bool = True
    """`yarn`: round the blend's dimension range outward to whole dimensions (HF's default)."""
    attention_factor: float | None = None
    """`yarn`: multiplier of cos/sin; None = from factor (and mscale / mscale_all_dim)."""
    mscale: float | None = None
    """`yarn`: with mscale_all_dim, the attention factor is
    `get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)`."""
    mscale_all_dim: float | None = None
    """`yarn`: see `mscale`."""

    def __post_init__(self):
        if self.kind not in ROPE_KINDS:
            raise ConfigError(
                f"unknown RoPE scaling kind {self.kind!r}; expected one of {sorted(ROPE_KINDS)}"
            )
        if not self.factor > 0:
            raise ConfigError(f"RoPE scaling factor must be > 0, got {self.factor}")
        if self.original_max_position_embeddings < 1:
            raise ConfigError(
                "RoPE scaling original_max_position_embeddings must be >= 1, got "
                f"{self.original_max_position_embeddings}"
            )
        if self.kind == "llama3" and self.low_freq_factor == self.high_freq_factor:
            raise ConfigError("llama3 RoPE scaling needs low_freq_factor != high_freq_factor")
        if self.attention_factor is not None and not self.attention_factor > 0:
            raise ConfigError(f"RoPE attention_factor must be > 0, got {self.attention_factor}")


def rope_inv_freq(head_dim: int, theta: float) -> jax.Array:
    """Plain RoPE inverse frequencies `theta ** (-2i / head_dim)`, `[head_dim / 2]` fp32."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.int32).astype(jnp.float32) / head_dim
    return 1.0 / (theta**exponents)


def scaled_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None) -> jax.Array:
    """The inverse frequencies of `scaling`'s kind (plain RoPE when None)."""
    inv_freq_f = rope_inv_freq(head_dim, theta)
    if scaling is None:
        return inv_freq_f
    return ROPE_KINDS[scaling.kind](inv_freq_f, scaling, theta)


def rope_attention_factor(scaling: RopeScaling | None) -> float:
    """The multiplier of cos/sin (YaRN's attention temperature); 1 for other kinds."""
    if scaling is None or scaling.kind not in ATTENTION_FACTORS:
        return 1.0
    return ATTENTION_FACTORS[scaling.kind](scaling)


@register_rope_kind("default")
def default_rope(inv_freq_f: jax.Array, scaling: RopeScaling, theta: float) -> jax.Array:
    return inv_freq_f


@register_rope_kind("linear")
def linear_rope(inv_freq_f: jax.Array, scaling: RopeScaling, theta: float) -> jax.Array:
    return inv_freq_f / scaling.factor


@register_rope_kind("llama3")
def llama3_rope(inv_freq_f: jax.Array, scaling: RopeScaling, theta: float) -> jax.Array:
    factor, old_len = scaling.factor, scaling.original_max_position_embeddings
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen_f = 2 * math.pi / inv_freq_f
    scaled_f = jnp.where(wavelen_f > low_freq_wavelen, inv_freq_f / factor, inv_freq_f)
    smooth_f = (old_len / wavelen_f - low) / (high - low)
    smoothed_f = (1 - smooth_f) * scaled_f / factor + smooth_f * scaled_f
    medium = ~(wavelen_f < high_freq_wavelen) & ~(wavelen_f > low_freq_wavelen)
    return jnp.where(medium, smoothed_f, scaled_f)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature `0.1 * mscale * ln(factor) + 1` (1 when not extending)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(scaling: RopeScaling) -> float:
    if scaling.attention_factor is not None:
        return scaling.attention_factor
    if scaling.mscale and scaling.mscale_all_dim:  # DeepSeek's spelling of the temperature
        num = yarn_mscale(scaling.factor, scaling.mscale)
        return num / yarn_mscale(scaling.factor, scaling.mscale_all_dim)
    return yarn_mscale(scaling.factor)


def yarn_dim_range(scaling: RopeScaling, head_dim: int, theta: float) -> tuple[float, float]:
    """The (low, high) frequency indices between which YaRN blends: index i turns
    `L / (2 pi theta^(2i/H))` times over the original context L, so beta_fast rotations sit at
    the low index and beta_slow at the high one (computed in float64, as HF does)."""

    def dim_at(rotations: float) -> float:
        old_len = scaling.original_max_position_embeddings
        return head_dim * math.log(old_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_at(scaling.beta_fast), dim_at(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, head_dim - 1)


@register_rope_kind("yarn", attention_factor=yarn_attention_factor)
def yarn_rope(inv_freq_f: jax.Array, scaling: RopeScaling, theta: float) -> jax.Array:
    half = inv_freq_f.shape[-1]
    low, high = yarn_dim_range(scaling, 2 * half, theta)
    if low == high:
        high += 0.001  # a zero-width ramp: HF widens it the same way
    ramp_f = jnp.clip((jnp.arange(half, dtype=jnp.float32) - low) / (high - low), 0.0, 1.0)
    keep_f = 1.0 - ramp_f  # 1: high frequency (extrapolate, kept); 0: interpolated (/ factor)
    return inv_freq_f / scaling.factor * (1.0 - keep_f) + inv_freq_f * keep_f


# -- transformers' spelling ----------------------------------------------------------------

_HF_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": (
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "truncate",
        "attention_factor",
        "mscale",
        "mscale_all_dim",
    ),
}
_REQUIRED = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
    "yarn": ("factor",),
}


def hf_rope_type(d: Mapping[str, Any], where: str) -> str:
    """The `rope_type` (or older `type`) of a HF RoPE dict; `default` when it names none."""
    rope_type, old = d.get("rope_type"), d.get("type")
    if rope_type is not None and old is not None and rope_type != old:
        raise ConfigError(f"{where}: rope_type {rope_type!r} and type {old!r} disagree")
    rope_type = rope_type if rope_type is not None else old if old is not None else "default"
    if not isinstance(rope_type, str):
        raise ConfigError(f"{where}.rope_type: expected a string, got {rope_type!r}")
    return rope_type


def rope_scaling_from_hf(
    d: Mapping[str, Any], *, max_position_embeddings: int, where: str = "rope_parameters"
) -> RopeScaling | None:
    """A HF RoPE dict (`rope_parameters` / `rope_scaling`, `rope_theta` ignored) as a
    RopeScaling (None for `default`). Missing optional values take transformers' defaults
    (`original_max_position_embeddings`: the model's max positions). Unsupported types and keys,
    missing required keys and ill-typed values are one-line ConfigErrors."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    kind = hf_rope_type(d, where)
    if kind not in _HF_KEYS:
        why = UNSUPPORTED_KINDS.get(kind, "unknown")
        raise ConfigError(
            f"unsupported RoPE scaling {where}.rope_type={kind!r} ({why}; lwm reads "
            f"{', '.join(_HF_KEYS)})"
        )
    # Another kind's settings are ignored, as transformers ignores them (Llama-3 files carry an
    # original_max_position_embeddings their linear scaling never reads); others are refused.
    known = {"rope_type", "type", "rope_theta", *(k for keys in _HF_KEYS.values() for k in keys)}
    extra = sorted(k for k in d if k not in known and d[k] is not None)
    if d.get("partial_rotary_factor") in (1, 1.0):
        extra.remove("partial_rotary_factor")
    if extra:
        raise ConfigError(f"unsupported {kind} RoPE setting {where}.{extra[0]}={d[extra[0]]!r}")
    if kind == "default":
        return None
    d = {k: v for k, v in d.items() if k in _HF_KEYS[kind] and v is not None}
    missing = [k for k in _REQUIRED.get(kind, ()) if k not in d]
    if missing:
        raise ConfigError(f"{where}: {kind} RoPE scaling needs {', '.join(missing)}")

    def number(key: str, *, positive: bool = True) -> float | None:
        value = d.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (value > 0 if positive else value >= 0)
        ):
            raise ConfigError(
                f"{where}.{key}: expected a number {'> 0' if positive else '>= 0'}, got {value!r}"
            )
        return float(value)

    original = d.get("original_max_position_embeddings", max_position_embeddings)
    if isinstance(original, float) and original.is_integer():
        original = int(original)
    if isinstance(original, bool) or not isinstance(original, int) or original < 1:
        raise ConfigError(
            f"{where}.original_max_position_embeddings: expected an integer >= 1, got {original!r}"
        )
    fields: dict[str, Any] = {
        "kind": kind,
        "factor": number("factor"),
        "original_max_position_embeddings": original,
    }
    for key in ("low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow"):
        if d.get(key) is not None:
            fields[key] = number(key)
    for key in ("attention_factor", "mscale", "mscale_all_dim"):
        fields[key] = number(key, positive=key == "attention_factor")
    if d.get("truncate") is not None:
        if not isinstance(d["truncate"], bool):
            raise ConfigError(f"{where}.truncate: expected true or false, got {d['truncate']!r}")
        fields["truncate"] = d["truncate"]
    return RopeScaling(**fields)


def rope_scaling_to_hf(scaling: RopeScaling | None, theta: float) -> dict[str, Any]:
    """HF's `rope_parameters` dict for `scaling` at base `theta` (the inverse of
    `rope_scaling_from_hf`: only the keys of its kind)."""
    kind = "default" if scaling is None else scaling.kind
    if kind not in _HF_KEYS:
        raise ConfigError(f"RoPE scaling kind {kind!r} has no transformers spelling")
    out: dict[str, Any] = {"rope_type": kind, "rope_theta": theta}
    for key in _HF_KEYS[kind]:
        value = getattr(scaling, key)
        if value is not None:
            out[key] = value
    return out
