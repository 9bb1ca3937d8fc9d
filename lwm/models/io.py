"""Model checkpoints: the params subtree of a `Checkpointer` directory plus the model config.

A model checkpoint is any `Checkpointer` directory whose state has a `params` subtree shaped like
`nnx.to_pure_dict(nnx.state(model, nnx.Param))` and whose metadata holds `model_config` (a
`ModelConfig.to_dict()`). `lwm convert from-hf` writes one at step 0; the trainer writes the same
keys, so `load_model` reads both (a training workdir's `checkpoints/` folder is found too).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from lwm.checkpoint import Checkpointer
from lwm.errors import LwmError
from lwm.io import str_keys
from lwm.models.config import ModelConfig
from lwm.models.transformer import Transformer, param_shardings

MODEL_CONFIG_KEY = "model_config"


def _int_keys(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {
            (int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v)
            for k, v in tree.items()
        }
    return tree


def get_params(model: nnx.Module) -> dict:
    """The parameters as a nested dict of arrays (string keys, layer indices as "0", "1", ...)."""
    return str_keys(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def set_params(model: nnx.Module, params: Mapping) -> None:
    """Loads a nested dict of arrays into `model`, checking structure and shapes."""
    state = nnx.state(model, nnx.Param)
    params = str_keys(params)
    want = str_keys(nnx.to_pure_dict(state))
    want_paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(want)}
    got_paths = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    if set(want_paths) != set(got_paths):
        missing = sorted(set(want_paths) - set(got_paths))
        extra = sorted(set(got_paths) - set(want_paths))
        raise LwmError(f"parameter tree mismatch: missing {missing[:3]}, unexpected {extra[:3]}")
    for path, x in want_paths.items():
        if tuple(x.shape) != tuple(got_paths[path].shape):
            raise LwmError(
                f"parameter {path} has shape {got_paths[path].shape}, expected {x.shape}"
            )
    nnx.replace_by_pure_dict(state, _int_keys(params))
    nnx.update(model, state)


def resolve_checkpoint_dir(path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path).expanduser()
    if not path.exists():
        raise LwmError(f"checkpoint directory not found: {path}")
    if (path / "checkpoints").is_dir():
        return path / "checkpoints"
    return path


def save_model(
    directory: str | pathlib.Path,
    model: Transformer,
    *,
    step: int = 0,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Writes the model's params and config as a one-step checkpoint (atomic, synchronous)."""
    save_params(directory, get_params(model), model.config, step=step, metadata=metadata)


def save_params(
    directory: str | pathlib.Path,
    params: Mapping,
    config: ModelConfig,
    *,
    step: int = 0,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Writes a parameter tree (as from `get_params`) and its config as a model checkpoint."""
    meta = {MODEL_CONFIG_KEY: config.to_dict(), **(metadata or {})}
    with Checkpointer(directory, keep=None, async_save=False) as ckpt:
        ckpt.save(step, {"params": str_keys(params)}, metadata=meta, force=True)


def load_params_numpy(
    directory: str | pathlib.Path, step: int | None = None
) -> tuple[dict, ModelConfig]:
    """The stored parameters as host numpy arrays (string keys) and the config."""
    path = resolve_checkpoint_dir(directory)
    with Checkpointer(path, keep=None, async_save=False, readonly=True) as ckpt:
        cfg = _stored_config(ckpt, path, step)
        params, _, _ = ckpt.restore(step, subtree="params")
    return params, cfg


def read_model_config(
    directory: str | pathlib.Path, step: int | None = None, *, strict: bool = False
) -> ModelConfig:
    """The ModelConfig stored with a checkpoint, without reading any array (`strict`: see
    `load_model`)."""
    path = resolve_checkpoint_dir(directory)
    with Checkpointer(path, keep=None, async_save=False, readonly=True, strict=strict) as ckpt:
        return _stored_config(ckpt, path, step)


def _stored_config(ckpt: Checkpointer, path: pathlib.Path, step: int | None) -> ModelConfig:
    if ckpt.latest_step() is None:
        raise LwmError(f"no checkpoint in {path}")
    meta = ckpt.metadata(step)
    if MODEL_CONFIG_KEY not in meta:
        raise LwmError(f"checkpoint in {path} has no model config (not an lwm model checkpoint)")
    return ModelConfig.from_dict(meta[MODEL_CONFIG_KEY])


def load_model(
    checkpoint_dir: str | pathlib.Path,
    *,
    mesh: Mesh | None = None,
    step: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> Transformer:
    """Loads a model from a checkpoint directory (converted model or training workdir).
    `strict`: an unreadable newest step is an error instead of a fallback (`--strict`).

    `overrides` replaces config fields at load time (e.g. `{"attention": {"backend": "ring"}}`,
    `{"rope_theta": ...}`); shapes must still match the stored parameters. On a mesh, parameters
    are read directly into their shardings.
    """
    path = resolve_checkpoint_dir(checkpoint_dir)
    with Checkpointer(path, keep=None, async_save=False, readonly=True, strict=strict) as ckpt:
        cfg = _stored_config(ckpt, path, step)
        return _restore_model(ckpt, cfg, mesh=mesh, step=step, overrides=overrides)


def _restore_model(
    ckpt: Checkpointer,
    cfg: ModelConfig,
    *,
    mesh: Mesh | None,
    step: int | None,
    overrides: Mapping[str, Any] | None,
) -> Transformer:
    if overrides:
        cfg = cfg.replace(**dict(overrides))
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), mesh=mesh))
    abstract_params = str_keys(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    if mesh is not None:
        shardings = str_keys(nnx.to_pure_dict(param_shardings(abstract, mesh)))
        shardings = {k: v for k, v in shardings.items() if k in abstract_params}
        abstract_params = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_params,
            shardings,
        )
    else:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract_params = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_params
        )
    params, _, _ = ckpt.restore(step, abstract_state=abstract_params, subtree="params")
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, _int_keys(params))
    return nnx.merge(graphdef, state)
