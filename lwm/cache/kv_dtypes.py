"""The names `ModelConfig.kv_dtype` / `--kv-dtype` accept (jax-free: the CLI parsers use them)."""

from __future__ import annotations

from lwm.errors import ConfigError

KV_DTYPES = ("auto", "bfloat16", "float32", "int8", "float8_e4m3fn")
"""`auto` = the compute dtype; `int8` / `float8_e4m3fn` = 8-bit codes plus per-token scales."""


def check_kv_dtype(name: str) -> str:
    """`name` if it is a kv dtype, else a one-line ConfigError naming it and the choices."""
    if name not in KV_DTYPES:
        raise ConfigError(f"unknown kv_dtype {name!r}; expected one of {', '.join(KV_DTYPES)}")
    return name
