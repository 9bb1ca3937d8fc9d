"""The KV cache's storage dtype (`ModelConfig.kv_dtype`) and 8-bit quantization of its entries.

`auto` stores keys/values in the compute dtype, `bfloat16` / `float32` in that dtype. The 8-bit
kinds store one code per entry plus a scale per (row, kv head, slot) in the compute dtype:
`int8` codes are `round(x / s)` with `s = absmax / 127`, `float8_e4m3fn` codes are `x / s` cast
to e4m3 with `s = absmax / 448` (absmax over the head dim of that token's key or value). The
scale is rounded to its storage dtype *before* dividing, so `code * stored scale` is the value
the attention reads; codes are clipped to the format's range (a rounded-down scale could push
one past it, and e4m3fn has no infinity: it would become NaN).

16-bit and 8-bit floats are stored as their bits (bfloat16 as `uint16`, e4m3 codes as `uint8`;
the bitcast is free on every backend): XLA:CPU has no bf16/fp8 arithmetic and otherwise converts
the whole cache to f32 (f16 for fp8) around every one-slot update and before the attention
reads it, a converted copy of the cache in every decode step. Integer buffers are updated in
place and read block by block (`codes_to` converts one block).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lwm.cache.kv_dtypes import check_kv_dtype
from lwm.dtypes import to_dtype

QUANT_MAX = {"int8": 127.0, "float8_e4m3fn": 448.0}
"""Largest code of each quantized kind (the scale maps a token's absmax onto it)."""
FP8 = jnp.float8_e4m3fn
_BITS = {jnp.dtype(jnp.bfloat16): jnp.uint16, jnp.dtype(FP8): jnp.uint8}
"""Float formats stored as their bits, and back (`codes_to`)."""
_FLOATS = {jnp.dtype(v): k for k, v in _BITS.items()}


def is_quantized(kv_dtype: str) -> bool:
    """Whether a cache of `kv_dtype` stores 8-bit codes plus per-token scales."""
    return kv_dtype in QUANT_MAX


def kv_storage_dtype(cfg: Any) -> Any:
    """The dtype a cache of model config `cfg` stores keys/values in: `auto` = `cfg.dtype`;
    int8 codes as int8; bfloat16 and e4m3 codes as their bits (see the module docstring)."""
    name = check_kv_dtype(cfg.kv_dtype)
    if name == "int8":
        return jnp.dtype(jnp.int8)
    logical = FP8 if name == "float8_e4m3fn" else to_dtype(cfg.dtype if name == "auto" else name)
    return stored_dtype(logical)


def stored_dtype(dtype: Any) -> Any:
    """How a cache stores arrays of float `dtype` (its bits for bfloat16 / e4m3, else itself)."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(_BITS.get(dtype, dtype))


def to_storage(x: jax.Array, storage: Any) -> jax.Array:
    """Float keys/values `x` in an unquantized cache's `storage` dtype (bf16 as its bits)."""
    storage = jnp.dtype(storage)
    if storage in _FLOATS:
        return lax.bitcast_convert_type(x.astype(_FLOATS[storage]), storage)
    return x.astype(storage)


def quantize(x: jax.Array, storage: Any, scale_storage: Any) -> tuple[jax.Array, jax.Array]:
    """Entries `x [..., H]` -> (codes `[..., H]` in `storage` (int8, or uint8 holding e4m3
    bits), scales `[...]` in `scale_storage` (the compute dtype, as `stored_dtype`)), one scale
    per vector over the last axis (see the module docstring)."""
    int8 = jnp.dtype(storage) == jnp.int8
    qmax = QUANT_MAX["int8" if int8 else "float8_e4m3fn"]
    x = x.astype(jnp.float32)
    scale = to_storage(jnp.max(jnp.abs(x), axis=-1) / qmax, scale_storage)
    s = codes_to(scale, jnp.float32)
    y = jnp.clip(x / jnp.where(s > 0, s, 1.0)[..., None], -qmax, qmax)
    if int8:
        return jnp.round(y).astype(jnp.int8), scale
    return to_storage(y, jnp.uint8), scale


def codes_to(codes: jax.Array, dtype: Any = None) -> jax.Array:
    """Stored keys/values (floats, int8 codes, or float bits) as `dtype`, unscaled; `dtype`
    None = the stored float format itself (bits back to bfloat16 / e4m3)."""
    if codes.dtype in _FLOATS:
        codes = lax.bitcast_convert_type(codes, _FLOATS[codes.dtype])
    return codes if dtype is None else codes.astype(dtype)


def dequantize(codes: jax.Array, scale: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """`codes [..., H] * scale [...]` in `dtype` (tests and inspection; the attention kernels
    apply the scales to scores and probabilities instead, block by block)."""
    return codes_to(codes, dtype) * codes_to(scale, dtype)[..., None]
