"""The attention backend's typed config: which kernel, its block sizes and the ring layout."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lwm.errors import ConfigError

Layout = Literal["contiguous", "zigzag", "striped"]
AttentionKernel = Literal["auto", "xla", "pallas"]
KERNELS = ("auto", "xla", "pallas")


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    backend: str = "dense"
    """Implementation, a registered backend name (lwm/attention/base.py): `dense` (reference),
    `blockwise` (flash-style), `ring` (over `sp`), `ulysses` (all-to-all over `sp`), `hybrid`
    (all-to-all groups of `ulysses` devices x a ring over the rest of `sp`); `make_attention`
    rejects unknown names."""
    query_chunk_size: int = 512
    """Query block length for blockwise/ring attention (per device for ring)."""
    key_chunk_size: int = 512
    """Key/value block length for blockwise/ring attention."""
    causal_block_size: int | None = None
    """Block-causal masking (LWM option): tokens see whole blocks of this size; None = causal."""
    layout: Layout = "zigzag"
    """Placement of sequence chunks over `sp` for ring attention; load-balanced by default."""
    kernel: AttentionKernel = "auto"
    """Implementation of blockwise/ring attention: `xla` (einsum chunk loops), `pallas` (fused
    kernels, lwm/attention/pallas/; interpreted on CPU), `auto` = pallas on GPU/TPU, xla on CPU."""
    kernel_block_q: int = 0
    """Pallas query tile (rows per program, forward and backward); 0 = the backend's default."""
    kernel_block_k: int = 0
    """Pallas key tile (rows per inner step, forward and backward); 0 = the backend's default."""
    ulysses: int = 0
    """All-to-all group size U of the `hybrid` backend (`mesh.sp = 8, ulysses = 4`: 4-way
    all-to-all x 2-way zigzag ring); must divide `mesh.sp`. 0 = unset; only `hybrid` reads it
    (`ulysses` uses all of `sp`: 0 or `sp` there)."""

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ConfigError(
                f"unknown attention kernel {self.kernel!r}; expected one of {KERNELS}"
            )
        if self.ulysses < 0:
            raise ConfigError(f"attention.ulysses must be >= 0, got {self.ulysses}")
        if self.ulysses and self.backend not in ("hybrid", "ulysses"):
            raise ConfigError(
                f"attention.ulysses = {self.ulysses} is read by backend hybrid only, but "
                f"attention.backend is {self.backend!r}"
            )
