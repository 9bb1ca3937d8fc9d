"""Stage-1 parameters of a fresh run: random init, or read from another lwm checkpoint.

`train.init_from` names any lwm model checkpoint (`lwm convert from-hf` / `from-lwm` output, or a
training workdir such as another run's last stage). Its params are restored by orbax straight into
the run's shardings (each process reads only its shards; dtypes are cast to the run's
`param_dtype`). Also handled:
  - layer layout: per-layer blocks (`blocks/<i>/...`, e.g. converted from HF) into a scanned model
    (stacked on device, in the target sharding) and the reverse;
  - text -> vision extension: a text checkpoint into a model with `vision_vocab_size > 0` copies
    every shared param and leaves `embed/vision` and `vision_head` at their fresh init (how LWM's
    vision stages started from LWM-Text-1M);
  - `train.init_from_skip`: regexes on "/"-joined param paths kept at their fresh init.
Any other difference (a param missing from the checkpoint, one it has that the model lacks, a
shape) is a one-line LwmError naming the first offending params. The optimizer starts fresh.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lwm.errors import LwmError
from lwm.training.config import TrainConfig
from lwm.training.train_state import ModelDef, init_params

VISION_PARAMS = ("embed/vision", "vision_head")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out |= _flatten(v, f"{prefix}{k}/")
        return out
    return {prefix[:-1]: tree}


def _unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = v
    return out


def _is_per_layer(paths) -> bool:
    return any(re.match(r"blocks/\d+/", p) for p in paths)


def initial_params(
    train: TrainConfig,
    mdef: ModelDef,
    mesh: Mesh,
    *,
    log: Callable[[str], None] | None = None,
    strict: bool = False,
) -> Any:
    """The params a run starts from: `init_params` unless `train.init_from` is set."""
    if not train.init_from:
        return init_params(mdef, train.seed, mesh)
    return params_from_checkpoint(
        train.init_from,
        mdef,
        mesh,
        seed=train.seed,
        skip=tuple(train.init_from_skip),
        log=log,
        strict=strict,
    )


def params_from_checkpoint(
    directory: str | pathlib.Path,
    mdef: ModelDef,
    mesh: Mesh,
    *,
    seed: int = 0,
    skip: tuple[str, ...] = (),
    log: Callable[[str], None] | None = None,
    strict: bool = False,
) -> dict:
    """`mdef`'s params (pure dict, in their shardings on `mesh`) read from the checkpoint at
    `directory`, with fresh init for the vision params a text checkpoint lacks and for `skip`;
    `strict`: an unreadable newest step is an error instead of a fallback (`--strict`)."""
    from lwm.checkpoint import Checkpointer
    from lwm.models.io import resolve_checkpoint_dir

    path = resolve_checkpoint_dir(directory)
    target = _flatten(mdef.abstract_pure_params())
    shardings = _flatten(mdef.param_shardings(mesh))
    patterns = [re.compile(p) for p in skip]
    with Checkpointer(path, keep=None, async_save=False, strict=strict) as ckpt:
        step = ckpt.latest_step()
        if step is None:
            raise LwmError(f"train.init_from: no checkpoint in {path}")
        saved = ckpt.saved_tree(step)  # structure and shapes only, no array is read
        if not isinstance(saved, Mapping) or "params" not in saved:
            raise LwmError(f"train.init_from: checkpoint in {path} has no params")
        source = _flatten(saved["params"])
        src_layers = _is_per_layer(source)
        dst_layers = _is_per_layer(target)
        n_layers = mdef.config.num_layers

        def source_paths(p: str) -> list[str]:
            """The checkpoint paths that make target param `p`."""
            if not p.startswith("blocks/") or src_layers == dst_layers:
                return [p]
            if dst_layers:  # target blocks/<i>/rest <- stacked blocks/rest
                return [re.sub(r"^blocks/\d+/", "blocks/", p)]
            rest = p[len("blocks/") :]
            return [f"blocks/{i}/{rest}" for i in range(n_layers)]

        fresh = [p for p in target if any(pat.search(p) for pat in patterns)]
        extend = [
            p for p in target if p.startswith(VISION_PARAMS) and p not in source and p not in fresh
        ]
        if extend and any(p.startswith(VISION_PARAMS) for p in source):
            extend = []  # a vision checkpoint: its vision params must match like any other
        fresh += extend
        copied = sorted(p for p in target if p not in fresh)
        used: set[str] = set()
        request: dict[str, jax.ShapeDtypeStruct] = {}
        for p in copied:
            want = target[p]
            spec = shardings[p].spec
            for sp in source_paths(p):
                if sp not in source:
                    raise LwmError(
                        f"train.init_from {path}: param {sp} missing from the checkpoint (model "
                        f"has {p} {tuple(want.shape)}); the checkpoint is of a different model"
                    )
                shape = tuple(want.shape)
                sharding = shardings[p]
                if p.startswith("blocks/") and src_layers != dst_layers:
                    if dst_layers:  # read the stacked array, slice on device below
                        shape = (n_layers, *shape)
                        sharding = NamedSharding(mesh, PartitionSpec(None, *spec))
                    else:  # read one layer of the stack in the stacked sharding minus the axis
                        shape = shape[1:]
                        sharding = NamedSharding(mesh, PartitionSpec(*tuple(spec)[1:]))
                got = tuple(getattr(source[sp], "shape", ()) or ())
                if got != shape:
                    raise LwmError(
                        f"train.init_from {path}: param {sp} has shape {got}, the model "
                        f"expects {shape}"
                    )
                used.add(sp)
                request[sp] = jax.ShapeDtypeStruct(shape, want.dtype, sharding=sharding)
        extra = sorted(
            sp
            for sp in set(source) - used
            if not any(pat.search(sp) for pat in patterns)
            and not any(pat.search(re.sub(r"^blocks/\d+/", "blocks/", sp)) for pat in patterns)
        )
        if extra:
            raise LwmError(
                f"train.init_from {path}: checkpoint param {extra[0]} "
                f"{tuple(getattr(source[extra[0]], 'shape', ()))} is not in the model "
                f"({len(extra)} such); a different model (use train.init_from_skip to drop params)"
            )
        restored, _, _ = ckpt.restore(step, abstract_state=_unflatten(request), subtree="params")
    restored = _flatten(restored)
    out: dict[str, Any] = {}
    for p in copied:
        srcs = source_paths(p)
        if not p.startswith("blocks/") or src_layers == dst_layers:
            out[p] = restored[srcs[0]]
        elif dst_layers:
            i = int(p.split("/")[1])
            out[p] = jax.jit(lambda x, i=i: x[i], out_shardings=shardings[p])(restored[srcs[0]])
        else:
            out[p] = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=shardings[p])(
                *[restored[s] for s in srcs]
            )
    if fresh:
        out |= _fresh_subset(mdef, mesh, seed, fresh, shardings)
    if log is not None:
        note = f"; fresh init: {', '.join(sorted(fresh))}" if fresh else ""
        log(f"lwm train: params from {path} (step {step}){note}")
    return _unflatten({p: out[p] for p in target})


def _fresh_subset(mdef: ModelDef, mesh: Mesh, seed: int, paths, shardings) -> dict[str, Any]:
    """The run's own random init of `paths` only (XLA drops the rest of the init computation)."""
    from flax import nnx

    from lwm.io import str_keys
    from lwm.models.transformer import Transformer

    def create():
        model = Transformer(mdef.config, rngs=nnx.Rngs(seed), mesh=mesh)
        flat = _flatten(str_keys(nnx.state(model, nnx.Param).to_pure_dict()))
        return {p: flat[p] for p in paths}

    return jax.jit(create, out_shardings={p: shardings[p] for p in paths})()
