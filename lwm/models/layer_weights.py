"""Just-in-time layer weights for the cached forward pass (prefill chunks, decode steps).

Parameters are sharded over fsdp x sp on `embed` (`lwm.sharding.rules`). A prefill chunk's
activations are sharded over the same axes by token, so every weight is all-gathered for its
matmul. Left to itself, XLA issues every layer's all-gathers at the program's start (they depend
only on the parameters), and XLA:CPU, which computes bf16 dots in f32, moves the conversion in
front of the gather: the whole model was resident at once, in f32 (26 GiB per device for
LWM-7B at any length). Here layer `i + 1`'s weights are gathered only once layer `i`'s input
exists, so at most two layers are resident (one in use, one in flight), and as raw bits, so no
conversion moves across the gather.

The order is a data dependency, not `optimization_barrier` (XLA:CPU deletes barriers before
scheduling, and the plan is compiled there): the local shard is xor-ed with `x > inf` (false,
NaN included; XLA does not fold it) of one activation element, and pinned to its own sharding,
so sharding propagation cannot move the xor after the gather. That costs one pass over the local
shard (1/sp of the layer) per chunk.

A decode step's few tokens cannot be sharded by token: its activations are replicated, and XLA
keeps the weights where they are (partial products, then an all-reduce of the small result), so
nothing is gathered then. On XLA:CPU, which converts every bf16 weight to f32 for its dot, the
local shards are still ordered layer by layer (the xor fuses into that conversion), so one or two
layers' f32 copies exist at a time, not the whole model's (3 GiB per device for LWM-7B); on
accelerators a decode step's weights are left untouched. A scan over layers is not an option:
each layer owns its cache buffer (`Transformer.layer_blocks`); scanned (stacked) weights are
sliced per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lwm.sharding import logical_to_spec

WEIGHT_AXES = ("fsdp", "sp")
"""Mesh axes that shard parameters but not heads: what FSDP gathers for compute."""
ACTIVATION_NAMES = ("batch", "length", "act_embed")


def gather_axes(shape_btd: Sequence[int], mesh: Mesh | None) -> tuple[str, ...]:
    """The weight axes the activations `[B, T, D]` are sharded on: weights must be gathered over
    them for the matmuls (a prefill chunk's tokens over sp); none for a decode step."""
    if mesh is None or mesh.size == 1:
        return ()
    spec = logical_to_spec(ACTIVATION_NAMES, tuple(shape_btd), mesh)
    used = [a for e in spec if e is not None for a in ((e,) if isinstance(e, str) else e)]
    return tuple(a for a in WEIGHT_AXES if a in used)


def _without(spec: PartitionSpec, axes: tuple[str, ...]) -> PartitionSpec:
    def keep(entry):
        if entry is None:
            return None
        kept = tuple(a for a in ((entry,) if isinstance(entry, str) else entry) if a not in axes)
        return None if not kept else kept[0] if len(kept) == 1 else kept

    return PartitionSpec(*(keep(e) for e in spec))


def _bits_dtype(dtype) -> jnp.dtype:
    return jnp.dtype(f"uint{8 * jnp.dtype(dtype).itemsize}")


def _on_cpu(mesh: Mesh | None) -> bool:
    return (mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()) == "cpu"


def fetch_after(
    x: jax.Array,
    names: Sequence[str | None],
    mesh: Mesh | None,
    axes: tuple[str, ...],
    dep: jax.Array,
) -> jax.Array:
    """Parameter `x` (logical axes `names`), readable only once the boolean scalar `dep` (always
    false) exists, and all-gathered over mesh `axes` in its own dtype (still sharded over the
    other axes, tp)."""
    bits = jax.lax.bitcast_convert_type(x, _bits_dtype(x.dtype))
    bits = bits ^ dep.astype(bits.dtype)
    if mesh is not None and mesh.size > 1:
        spec = logical_to_spec(names, x.shape, mesh)
        bits = jax.lax.with_sharding_constraint(bits, NamedSharding(mesh, spec))
        if axes:
            bits = jax.lax.with_sharding_constraint(bits, NamedSharding(mesh, _without(spec, axes)))
    return jax.lax.bitcast_convert_type(bits, x.dtype)


class LayerWeights:
    """The blocks of a model (a list, or one stacked block when `scanned`), one layer at a time:
    `fetch(i, after_btd)` returns block `i` whose weights are read only once `after_btd` exists,
    gathered over `axes` (see the module docstring). Without `axes`, only XLA:CPU's narrow
    weights are ordered so (their f32 copies); elsewhere the block is returned as it is."""

    def __init__(self, blocks, *, scanned: bool, mesh: Mesh | None, axes: tuple[str, ...]):
        self.scanned = scanned
        self.mesh = mesh
        self.axes = axes if mesh is not None else ()
        self.cpu = _on_cpu(mesh)
        if scanned:
            self.graphdef, self.state = nnx.split(blocks)
        else:
            self.blocks = list(blocks)

    def _ordered(self, x: jax.Array) -> bool:
        if self.axes:
            return True
        return self.cpu and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize < 4

    def fetch(self, i: int, after_btd: jax.Array) -> nnx.Module:
        if self.scanned:
            graphdef, state = self.graphdef, jax.tree.map(lambda x: x[i], self.state)
        else:
            graphdef, state = nnx.split(self.blocks[i])
        dep = after_btd.reshape(-1)[0] > jnp.inf

        def fetch(v):
            names = v.get_metadata().get("logical_axes")
            x = v.get_value()
            if names is None or len(names) != x.ndim or not self._ordered(x):
                return v
            return v.replace(fetch_after(x, names, self.mesh, self.axes, dep))

        state = jax.tree.map(fetch, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        return nnx.merge(graphdef, state)
