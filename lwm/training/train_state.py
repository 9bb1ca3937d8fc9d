"""The train state as a plain pytree, and moving params between it and the NNX model.

`state = {"step", "params", "opt_state", "rng"}`: `params` is the model's parameters as a pure
nested dict (what checkpoints hold, and what `lwm.load_model` restores with `subtree="params"`),
`rng` the raw uint32 key data (checkpointable without pickling a typed key).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lwm.io import str_keys
from lwm.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """The static half of a model: its graph and abstract parameter state (no arrays)."""

    config: ModelConfig
    graphdef: Any
    abstract_params: Any  # nnx.State of Params with ShapeDtypeStruct values
    rest: Any  # non-Param state (e.g. buffers), concrete, usually empty

    def merge(self, params: Any) -> nnx.Module:
        """The model with `params` (a pure dict, possibly traced) as its parameters."""
        state = jax.tree.map(lambda x: x, self.abstract_params)  # fresh Variables to fill in
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state, self.rest)

    def param_shardings(self, mesh: Mesh) -> Any:
        """NamedShardings for the pure params dict, from the params' logical axes."""
        from lwm.models.transformer import param_shardings

        model = nnx.merge(self.graphdef, self.abstract_params, self.rest)
        flat = nnx.to_flat_state(param_shardings(model, mesh))
        wanted = {k for k, _ in nnx.to_flat_state(self.abstract_params)}
        kept = {k: v for k, v in flat if k in wanted}
        return str_keys(_unflatten(kept))

    def abstract_pure_params(self) -> Any:
        """ShapeDtypeStructs of the params dict (string keys, as checkpoints store them)."""
        return str_keys(self.abstract_params.to_pure_dict())


def _unflatten(flat: dict[tuple, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        leaf = value.value if isinstance(value, nnx.Variable) else value
        node[path[-1]] = leaf
    return out


def model_def(cfg: ModelConfig, mesh: Mesh | None) -> ModelDef:
    """Builds the model abstractly (nothing allocated) and splits off its parameters."""
    from lwm.models.transformer import Transformer

    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise NotImplementedError("models with non-Param state are not supported by the trainer")
    return ModelDef(cfg, graphdef, params, rest)


def init_params(mdef: ModelDef, seed: int, mesh: Mesh) -> Any:
    """Initialises the parameters directly in their shardings (no host-side full copy)."""
    from lwm.models.transformer import Transformer

    shardings = mdef.param_shardings(mesh)

    def create():
        model = Transformer(mdef.config, rngs=nnx.Rngs(seed), mesh=mesh)
        return str_keys(nnx.state(model, nnx.Param).to_pure_dict())

    return jax.jit(create, out_shardings=shardings)()


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def rng_data(seed: int) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)


def count_params(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))
