"""One table maps logical axis names (on params and activations) to mesh axes.

Parameters carry their names as `logical_axes` metadata; activations are constrained with
`with_logical_constraint`; ring attention derives its shard_map specs from the same names.
A mesh axis that does not divide a dimension (e.g. 2 KV heads over tp=4) is dropped for that
array, which then replicates along it. Axes absent from a mesh are skipped: `ulysses` (the inner
all-to-all part of `sp` in the hybrid backend's view, lwm/sharding/mesh.py `sp_grid`) exists only
there, so on the `dp, fsdp, tp, sp` meshes everything reads as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("dp", "fsdp")),
    ("length", ("sp", "ulysses")),
    ("act_embed", None),
    ("act_heads", "tp"),
    ("act_kv_heads", "tp"),
    ("act_mlp", "tp"),
    ("act_vocab", "tp"),
    ("head_dim", None),
    # parameters: sharded over fsdp and sp (sequence-parallel devices share parameter memory, as
    # LWM), and over tp for the tensor-parallel dimension.
    ("embed", ("fsdp", "sp", "ulysses")),
    ("heads", "tp"),
    ("kv_heads", "tp"),
    ("mlp", "tp"),
    ("vocab", "tp"),
    ("norm", None),
    ("layers", None),
)

_RULES = dict(LOGICAL_RULES)


def logical_to_spec(
    names: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """PartitionSpec for logical `names`; with shape and mesh, drops axes that do not divide."""
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        axes = _RULES.get(name) if name is not None else None
        if name is not None and name not in _RULES:
            raise KeyError(f"logical axis {name!r} has no rule in LOGICAL_RULES")
        if axes is None:
            out.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if a in mesh.shape)
            if shape is not None:
                kept, size = [], 1
                for a in axes:
                    if shape[i] % (size * mesh.shape[a]) == 0:
                        kept.append(a)
                        size *= mesh.shape[a]
                axes = tuple(kept)
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def logical_to_sharding(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh
) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def with_logical_constraint(x: jax.Array, names: Sequence[str | None], mesh: Mesh | None):
    """Sharding constraint by logical names; a no-op without a mesh or on a single device."""
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_sharding(names, x.shape, mesh))
