"""The device mesh `dp, fsdp, tp, sp`, built once by the entry point and passed down.

The `hybrid` attention backend views the same devices with `sp` split in two (`sp_grid`): an outer
ring axis, still named `sp`, and an inner all-to-all axis `ulysses`, innermost so that an
all-to-all group is adjacent devices (one node). Entry points keep building `dp, fsdp, tp, sp`
meshes (the KV cache, decode, the FFN and plans read `sp`); the view places every array exactly as
the plain mesh does, so moving between the two costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from lwm.errors import ConfigError

MESH_AXES = ("dp", "fsdp", "tp", "sp")
ULYSSES = "ulysses"
"""The inner (all-to-all) part of `sp` in an `sp_grid` view; sequence parallelism = sp x ulysses."""


def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes per axis in MESH_AXES order; at most one may be -1 (inferred from the device count)."""
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"unknown mesh axes {sorted(unknown)}; expected {MESH_AXES}")
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    inferred = [i for i, s in enumerate(shape) if s == -1]
    if len(inferred) > 1:
        raise ConfigError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    if any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
    known = math.prod(s for s in shape if s != -1)
    if inferred:
        if num_devices % known:
            raise ConfigError(
                f"mesh {dict(zip(MESH_AXES, shape))}: {num_devices} devices "
                f"not divisible by {known}"
            )
        shape[inferred[0]] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ConfigError(
            f"mesh {dict(zip(MESH_AXES, shape))} has {math.prod(shape)} devices "
            f"but {num_devices} are available"
        )
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with axes MESH_AXES; sp is the innermost axis so
    ring neighbours are adjacent devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(sizes, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - topology-aware placement is best effort (CPU, odd shapes)
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def sp_grid(mesh: Mesh, ulysses: int) -> Mesh:
    """`mesh` (axes MESH_AXES) with `sp` split into `sp` = sp / ulysses (the ring, outer) x
    `ulysses` (the all-to-all group, inner): device `s` of `sp` becomes (s // ulysses,
    s % ulysses), so a sequence sharded over `sp` is sharded over ("sp", "ulysses") as is."""
    if ULYSSES in mesh.shape:
        if mesh.shape[ULYSSES] != ulysses:
            raise ConfigError(f"mesh has {ULYSSES} = {mesh.shape[ULYSSES]}, expected {ulysses}")
        return mesh
    sp = int(mesh.shape.get("sp", 1))
    if ulysses < 1 or sp % ulysses:
        raise ConfigError(f"attention.ulysses = {ulysses} does not divide mesh.sp = {sp}")
    names = tuple(mesh.axis_names)
    if "sp" not in names:
        names, grid = names + ("sp",), mesh.devices[..., None]
    else:
        grid = np.moveaxis(mesh.devices, names.index("sp"), -1)
        names = tuple(a for a in names if a != "sp") + ("sp",)
    grid = grid.reshape(*grid.shape[:-1], sp // ulysses, ulysses)
    return Mesh(grid, names + (ULYSSES,))


def single_device_mesh() -> Mesh:
    return make_mesh({a: 1 for a in MESH_AXES}, jax.devices()[:1])
