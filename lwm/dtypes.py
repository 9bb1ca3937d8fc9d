"""Dtype names used in configs (`"float32"`, `"bfloat16"`, `"float16"`) and their jnp types."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lwm.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name: str):
    """The jnp dtype of a config's dtype name; a one-line ConfigError for an unknown name."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}") from None


def to_numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a config's dtype name (bfloat16 is ml_dtypes', as jax's); converters
    write parameters in it."""
    return np.dtype(to_dtype(name))
