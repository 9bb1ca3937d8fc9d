"""`ModelOutput`: what `Transformer.__call__` returns, whatever heads or cache it is asked for."""

from __future__ import annotations

import dataclasses

import jax

from lwm.cache.kv_cache import KVCache


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelOutput:
    """The logits the call's `output` asked for, and the updated cache when it was given one
    (a pytree: it passes through `jit` and `nnx.jit` like a tuple)."""

    logits: jax.Array | None = None
    """Text logits `[B, T, V]` (output `text` or `both`; None for `vision`)."""
    vision_logits: jax.Array | None = None
    """Vision logits `[B, T, Vv]` (output `vision` or `both`; None for `text`)."""
    cache: KVCache | None = None
    """The cache after the call wrote the chunk (None without a cache)."""
