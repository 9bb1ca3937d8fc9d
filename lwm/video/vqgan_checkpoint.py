"""VQGAN checkpoints through the project's `Checkpointer` (orbax; JSON metadata, no pickle).

Layout of a VQGAN training workdir: `<workdir>/checkpoints/<step>/` holding the state
`{"model": ..., "opt": ..., ["disc": ..., "disc_opt": ...]}` and the metadata
`{"kind": "vqgan", "vqgan": VQGANConfig fields, "train": train config, "step": ...}`.
`load_vqgan` rebuilds the model from that metadata, so a checkpoint needs no config file; asking
for a preset (by name or config) that differs from the saved one is a one-line error.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
from flax import nnx

from lwm.checkpoint import Checkpointer, CheckpointError
from lwm.errors import LwmError
from lwm.io import str_keys
from lwm.video.config import VQGANConfig
from lwm.video.vqgan import VQGAN

KIND = "vqgan"


def state_tree(module: nnx.Module) -> dict:
    """All of a module's state as nested dicts with string keys (orbax-friendly)."""
    return str_keys(nnx.state(module).to_pure_dict())


def _like_template(template: Any, tree: Any) -> Any:
    """`tree` (string keys) re-keyed like `template` (e.g. int keys of nnx.List)."""
    if isinstance(template, dict):
        return {k: _like_template(v, tree[str(k)]) for k, v in template.items()}
    return tree


def load_state_tree(module: nnx.Module, tree: dict) -> None:
    """Writes a `state_tree`-shaped dict of arrays back into `module`."""
    state = nnx.state(module)
    pure = _like_template(state.to_pure_dict(), tree)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)


def checkpoint_dir(path: str | pathlib.Path) -> pathlib.Path:
    """Accepts a training workdir or its `checkpoints/` directory."""
    path = pathlib.Path(path).expanduser()
    if (path / "checkpoints").is_dir():
        return path / "checkpoints"
    return path


def vqgan_metadata(cfg: VQGANConfig, **extra: Any) -> dict[str, Any]:
    return {"kind": KIND, "vqgan": cfg.to_dict(), **extra}


def config_from_metadata(meta: dict[str, Any], where: str) -> VQGANConfig:
    if meta.get("kind") != KIND or "vqgan" not in meta:
        raise LwmError(f"{where}: not a VQGAN checkpoint (kind={meta.get('kind')!r})")
    try:
        return VQGANConfig.from_dict(meta["vqgan"])
    except LwmError as e:
        raise LwmError(f"{where}: bad VQGAN metadata: {e}") from None


def load_vqgan(
    checkpoint: str | pathlib.Path,
    *,
    step: int | None = None,
    expect: str | VQGANConfig | None = None,
) -> VQGAN:
    """The VQGAN of a `lwm vqgan train` checkpoint (latest step unless `step`).

    `expect`: a preset name or config the checkpoint must match (else a one-line error naming
    the checkpoint and both presets).
    """
    directory = checkpoint_dir(checkpoint)
    where = str(checkpoint)
    if not directory.is_dir():
        raise LwmError(f"{where}: no such checkpoint directory")
    ckpt = Checkpointer(directory, async_save=False, readonly=True)
    try:
        if ckpt.latest_step() is None:
            raise LwmError(f"{where}: contains no checkpoint")
        cfg = config_from_metadata(ckpt.metadata(step), where)
        if expect is not None:
            want = expect if isinstance(expect, VQGANConfig) else None
            name = expect.name if isinstance(expect, VQGANConfig) else str(expect)
            if cfg.name != name or (want is not None and want != cfg):
                raise LwmError(
                    f"{where}: checkpoint is VQGAN preset {cfg.name!r} "
                    f"({cfg.resolution}px, {cfg.codebook_size} codes), expected {name!r}"
                )
        model = nnx.eval_shape(lambda: VQGAN(cfg, rngs=nnx.Rngs(0)))
        target = {
            "model": jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state_tree(model)
            )
        }
        try:
            tree, _, _ = ckpt.restore(step, abstract_state=target["model"], subtree="model")
        except CheckpointError as e:
            raise LwmError(f"{where}: does not match its own VQGAN metadata: {e}") from None
    finally:
        ckpt.close()
    load_state_tree(model, tree)
    return model
