"""The attention backend interface and its registry.

`AttentionOp` is dense attention and the base class of every backend. A backend is a subclass that
registers itself under a name, in its own module:

    @register_backend("mine")
    @dataclasses.dataclass(frozen=True)
    class MyAttentionOp(AttentionOp): ...

and `make_attention(cfg)` builds the one named by `cfg.backend`. The built-in backends (`dense`
here, `blockwise`, `ring`, `ulysses`, `hybrid`) register when the `lwm.attention` package is
imported, which Python does before any of its modules, so the registry is complete whenever
`make_attention` runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax

from lwm.attention.config import AttentionConfig
from lwm.attention.dense import dense_attention
from lwm.errors import ConfigError

OpT = TypeVar("OpT", bound=type)
_BACKENDS: dict[str, type] = {}


def register_backend(name: str) -> Callable[[OpT], OpT]:
    """Class decorator: `make_attention` builds `cls(config, causal, mesh)` for `backend = name`."""

    def register(cls: OpT) -> OpT:
        known = _BACKENDS.get(name)
        same = known is not None and (known.__module__, known.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )  # a module imported again re-registers its class
        if known is not None and not same:
            raise ValueError(f"attention backend {name!r} is already registered ({known})")
        _BACKENDS[name] = cls
        return cls

    return register


def backend_names() -> tuple[str, ...]:
    """The registered backend names, in registration order."""
    return tuple(_BACKENDS)


def mesh_sp(mesh: Any) -> int:
    """The sequence-parallel size of a Mesh or of a `{axis: size}` mapping: its `sp` axis, times
    its `ulysses` axis in the hybrid backend's split view (lwm.sharding.mesh.sp_grid); 1 when
    absent or None."""
    if mesh is None:
        return 1
    shape = mesh if isinstance(mesh, Mapping) else mesh.shape
    return int(shape.get("sp", 1)) * int(shape.get("ulysses", 1))


@register_backend("dense")
@dataclasses.dataclass(frozen=True)
class AttentionOp:
    """Dense attention; the base class of the other backends.

    `op(q_btnh, k_btkh, v_btkh, segment_ids_bt=None) -> out_btnh` on inputs in the op's layout;
    `check` (sequence length) and `check_heads` raise the op's shape rules as one-line
    ConfigErrors before any compute; `to_layout` / `from_layout` are the sequence permutation the
    op expects (identity here)."""

    config: AttentionConfig
    causal: bool = True
    mesh: Any = None

    def __call__(self, q_btnh, k_btkh, v_btkh, segment_ids_bt=None) -> jax.Array:
        return dense_attention(
            q_btnh,
            k_btkh,
            v_btkh,
            segment_ids_bt=segment_ids_bt,
            causal=self.causal,
            causal_block_size=self.config.causal_block_size,
        )

    def check(self, seq_len: int, mesh: Any = None) -> None:
        """Raises a one-line ConfigError when sequences of `seq_len` cannot run on `mesh` (a Mesh
        or `{axis: size}`; default: the op's own). Activations are sharded over `sp` on the
        sequence axis whatever the backend, so `sp` must divide it."""
        sp = mesh_sp(self.mesh if mesh is None else mesh)
        if seq_len % sp:
            raise ConfigError(f"seq_len {seq_len} not divisible by sp = {sp}")

    def check_heads(self, num_heads: int, num_kv_heads: int, mesh: Any = None) -> None:
        """Raises a one-line ConfigError when `num_heads` query heads over `num_kv_heads` kv
        heads cannot run on `mesh` (default: the op's own); ulysses and hybrid split heads over
        their all-to-all group."""
        if num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ConfigError(f"num_kv_heads {num_kv_heads} does not divide num_heads {num_heads}")

    def to_layout(self, x: jax.Array, axis: int = 1) -> jax.Array:
        return x

    def from_layout(self, x: jax.Array, axis: int = 1) -> jax.Array:
        return x


def make_attention(cfg: AttentionConfig, *, causal: bool = True, mesh: Any = None) -> AttentionOp:
    """Builds the backend registered as `cfg.backend`; `mesh` is required by `ring` (it shards
    over axis `sp`)."""
    cls = _BACKENDS.get(cfg.backend)
    if cls is None:
        raise ConfigError(
            f"unknown attention backend {cfg.backend!r}; expected one of {', '.join(_BACKENDS)}"
        )
    return cls(cfg, causal, mesh)
