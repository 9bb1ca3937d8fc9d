"""Sequence layouts for ring attention: which natural positions each of the `sp` shards holds.

With N shards of L = T / N rows each:
  - contiguous: shard i holds rows [i*L, (i+1)*L) (the reference library's placement);
  - zigzag:     the sequence is cut into 2N chunks; shard i holds chunk i then chunk 2N-1-i, so
                every shard has the same amount of causal work at every ring step;
  - striped:    shard i holds rows i, i+N, i+2N, ... (balanced at token granularity).
The hybrid backend lays a ring of R < N shards out over the N devices (`ring=R`): shard r is
spread over devices r*N/R ... (r+1)*N/R - 1 in order (zigzag moves whole half-blocks).

`to_layout` / `from_layout` permute a global array along its sequence axis. Host-side numpy arrays
are permuted with `np.take`. jax arrays are moved inside `shard_map` with point-to-point `ppermute`s
(zigzag) or one `all_to_all` (striped), so a sequence-sharded array is never gathered on one device.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from lwm.errors import ConfigError
from lwm.sharding.rules import logical_to_spec

LAYOUTS = ("contiguous", "zigzag", "striped")
SP = "sp"


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown attention layout {layout!r}; expected one of {LAYOUTS}")


def layout_multiple(layout: str, sp: int) -> int:
    """The sequence length must be a multiple of this for `layout` over `sp` shards."""
    check_layout(layout)
    if sp == 1:
        return 1
    return {"contiguous": sp, "zigzag": 2 * sp, "striped": sp * sp}[layout]


def check_length(layout: str, seq_len: int, sp: int) -> None:
    """Raises a ConfigError naming the numbers when `seq_len` cannot be laid out over `sp`."""
    m = layout_multiple(layout, sp)
    if seq_len % m:
        why = {"contiguous": "sp", "zigzag": "2 x sp", "striped": "sp x sp"}[layout]
        raise ConfigError(
            f"sequence length {seq_len} is not divisible by {m} ({why}, sp={sp}) "
            f"required by the {layout} layout"
        )


def natural_positions(layout: str, shard, local_len: int, sp: int, xp=jnp):
    """Natural sequence index of each local row of `shard` (int or traced scalar, or an array of
    shards broadcasting against rows). `xp` is `jnp` (traced) or `np` (host)."""
    r = xp.arange(local_len, dtype=xp.int32)
    if layout == "contiguous" or sp == 1:
        return shard * local_len + r
    if layout == "zigzag":
        u = local_len // 2
        return xp.where(r < u, shard * u + r, (2 * sp - 1 - shard) * u + (r - u))
    if layout == "striped":
        return r * sp + shard
    raise ConfigError(f"unknown attention layout {layout!r}; expected one of {LAYOUTS}")


def layout_permutation(layout: str, seq_len: int, sp: int) -> np.ndarray:
    """`perm` with `x_layout = x_natural[perm]` (perm[j]: natural index stored at layout row j)."""
    check_length(layout, seq_len, sp)
    shards = np.arange(sp, dtype=np.int32)[:, None]
    return natural_positions(layout, shards, seq_len // sp, sp, xp=np).reshape(-1)


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv


# ----------------------------------------------------------------------------- device movement


def _zigzag_moves(
    sp: int, inverse: bool, ring: int | None = None
) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """ppermute pairs grouped by (source slot, destination slot); slots are the two half-blocks
    of each of the `sp` devices.

    The zigzag layout over `ring` shards (default sp) of `sp / ring` devices each, in half-block
    units: layout unit j (device j // 2, slot j % 2) holds natural unit perm[j] (device
    perm[j] // 2, slot perm[j] % 2). With ring = sp that is chunk c at shard c if c < N else
    2N-1-c, slot 0 if c < N else 1.
    """
    perm = layout_permutation("zigzag", 2 * sp, sp if ring is None else ring)
    moves: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for j, c in enumerate(perm.tolist()):
        nat, lay = (c // 2, c % 2), (j // 2, j % 2)
        (src, a), (dst, b) = (lay, nat) if inverse else (nat, lay)
        moves.setdefault((a, b), []).append((src, dst))
    return moves


def _zigzag_local(x, *, axis: int, sp: int, inverse: bool, ring: int | None = None):
    is_bool = x.dtype == jnp.bool_
    if is_bool:
        x = x.astype(jnp.uint8)
    halves = jnp.split(x, 2, axis=axis)
    out = [jnp.zeros_like(halves[0]), jnp.zeros_like(halves[0])]
    for (a, b), perm in _zigzag_moves(sp, inverse, ring).items():
        # Shards that receive nothing in this ppermute get zeros, so summing assembles each slot.
        out[b] = out[b] + lax.ppermute(halves[a], SP, perm)
    y = jnp.concatenate(out, axis=axis)
    return y.astype(jnp.bool_) if is_bool else y


def _striped_local(x, *, axis: int, sp: int, inverse: bool, ring: int | None = None):
    local = x.shape[axis]
    if not inverse:
        # Local row a*N + b (natural i*L + a*N + b) goes to shard b, row i*L/N + a.
        y = x.reshape(*x.shape[:axis], local // sp, sp, *x.shape[axis + 1 :])
        y = jnp.swapaxes(y, axis, axis + 1)  # [.., N(dest b), L/N(a), ..]
        y = lax.all_to_all(y, SP, axis, axis, tiled=True)  # [.., N(src i), L/N(a), ..]
        return y.reshape(x.shape)
    y = x.reshape(*x.shape[:axis], sp, local // sp, *x.shape[axis + 1 :])  # [.., N(i), L/N(a)]
    y = lax.all_to_all(y, SP, axis, axis, tiled=True)  # [.., N(src b), L/N(a), ..]
    return jnp.swapaxes(y, axis, axis + 1).reshape(x.shape)


def _permute_on_mesh(
    x: jax.Array, layout: str, mesh: Any, axis: int, inverse: bool, ring: int
) -> jax.Array:
    sp = mesh.shape[SP]
    spec = [None] * x.ndim
    spec[axis] = SP
    if axis != 0:
        spec[0] = logical_to_spec(("batch",), (x.shape[0],), mesh)[0]
    local = {"zigzag": _zigzag_local, "striped": _striped_local}[layout]
    fn = functools.partial(local, axis=axis, sp=sp, inverse=inverse, ring=ring)
    return jax.shard_map(fn, mesh=mesh, in_specs=P(*spec), out_specs=P(*spec), check_vma=False)(x)


def _permute(x, layout: str, mesh: Any, axis: int, inverse: bool, ring: int | None):
    check_layout(layout)
    sp = 1 if mesh is None or SP not in mesh.shape else mesh.shape[SP]
    ring = sp if ring is None else ring
    axis = axis % x.ndim
    if ring != sp and (ring < 1 or sp % ring or layout == "striped"):
        raise ConfigError(
            f"a {layout} layout over {ring} ring shards of sp = {sp} devices is not supported"
        )
    check_length(layout, x.shape[axis], sp)
    if layout == "contiguous" or ring == 1:
        return x
    if isinstance(x, np.ndarray):
        perm = layout_permutation(layout, x.shape[axis], ring)
        return np.take(x, inverse_permutation(perm) if inverse else perm, axis=axis)
    return _permute_on_mesh(jnp.asarray(x), layout, mesh, axis, inverse, ring)


def to_layout(x, layout: str, mesh: Any, axis: int = 1, ring: int | None = None):
    """Natural order -> `layout` over the mesh's `sp` axis (numpy in, numpy out). `ring` (a
    divisor of sp; zigzag or contiguous): the layout of a ring of that many shards, each spread
    over sp / ring consecutive devices (the hybrid backend's ring x all-to-all grid)."""
    return _permute(x, layout, mesh, axis, inverse=False, ring=ring)


def from_layout(x, layout: str, mesh: Any, axis: int = 1, ring: int | None = None):
    """`layout` -> natural order; the inverse of `to_layout`."""
    return _permute(x, layout, mesh, axis, inverse=True, ring=ring)
