"""A run, parsed and validated before any device work: the config file's ConfigDict is read here,
once, into typed configs (model, train, data), resolved stages, and each stage's mesh sizes with
its shapes checked against them. Everything downstream takes the `RunSpec`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import ml_collections

from lwm.attention import make_attention
from lwm.data.config import DataConfig, run_data_config
from lwm.errors import ConfigError
from lwm.models.config import ModelConfig
from lwm.sharding.mesh import MESH_AXES, resolve_mesh_shape
from lwm.training.config import ResolvedStage, TrainConfig, resolve_stages
from lwm.training.sinks import check_sinks_available


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything parsed and validated from a config, before any device work."""

    model: ModelConfig
    train: TrainConfig
    stages: list[ResolvedStage]
    """Every stage with its inherited fields (and its data section) filled in."""
    mesh_sizes: list[dict[str, int]]
    """Per stage: the mesh axis sizes."""
    data: DataConfig
    """The run's data section (a stage's own, with its overrides, is `stages[i].data`)."""
    config_json: str = "{}"
    """The config as given (overrides applied), for the record: the workdir's `config.json` and
    the W&B run config. Never read back by training."""


def _mesh_dict(config: ml_collections.ConfigDict) -> dict[str, int]:
    mesh = config.get("mesh") or {}
    mesh = mesh.to_dict() if hasattr(mesh, "to_dict") else dict(mesh)
    return {a: int(mesh.get(a, 1)) for a in MESH_AXES} | {
        k: int(v) for k, v in mesh.items() if k not in MESH_AXES
    }


def parse_run(
    config: ml_collections.ConfigDict,
    num_devices: int | None = None,
    *,
    check_shapes: bool = True,
) -> RunSpec:
    """Builds typed configs and checks shapes against meshes; raises one-line ConfigErrors.

    `check_shapes=False` skips the per-stage length/batch divisibility checks (for callers that
    change a stage's shape first and check it themselves, like `lwm plan --seq-len`)."""
    num_devices = jax.device_count() if num_devices is None else num_devices
    if "model" not in config:
        raise ConfigError("config has no `model` section")
    model = ModelConfig.from_dict(config.model)
    train = TrainConfig.from_dict(config.get("train"))
    data = run_data_config(config.get("data"))
    raw_stages = config.get("stages") or []
    stages = resolve_stages(
        train,
        raw_stages,
        model.rope_theta,
        model.max_sequence_length,
        data,
        model_rope_scaling=model.rope_scaling,
    )
    base_mesh = _mesh_dict(config)
    meshes = []
    for st in stages:
        sizes = dict(st.mesh) if st.mesh is not None else dict(base_mesh)
        shape = dict(zip(MESH_AXES, resolve_mesh_shape(sizes, num_devices)))
        meshes.append(shape)
        if check_shapes:
            check_stage_shapes(model, st, shape)
    if train.eval_every:
        check_eval_data(data)
    check_sinks_available(train)
    if data.source == "synthetic" and data.path:
        raise ConfigError(
            f"data.path is {data.path!r} but data.source is 'synthetic' (it would be "
            "ignored); add --config.data.source=dataset"
        )
    return RunSpec(model, train, stages, meshes, data, config.to_json(indent=2))


def check_eval_data(data: DataConfig) -> None:
    """`train.eval_every` needs held-out data: the synthetic source has its own held-out stream,
    a dataset needs `data.eval_fraction` or `data.eval_path`."""
    if data.source == "synthetic":
        return
    if not data.eval_fraction and not data.eval_path:
        raise ConfigError(
            "train.eval_every > 0 needs a validation split: set data.eval_fraction (records held "
            "out of data.path) or data.eval_path (a separate dataset)"
        )


def check_stage_shapes(model: ModelConfig, st: ResolvedStage, mesh: Mapping[str, int]) -> None:
    """One-line ConfigErrors for a batch or length the stage's mesh and attention cannot split."""
    where = f"stages[{st.index}]"
    batch_par = mesh["dp"] * mesh["fsdp"]
    micro = st.batch_size // st.grad_accum
    if micro % batch_par:
        raise ConfigError(
            f"{where}: batch size {st.batch_size} (per microbatch {micro}) not divisible by "
            f"dp*fsdp = {batch_par}"
        )
    try:  # the attention op owns the sequence rules (sp, layout multiple, chunk sizes)
        op = make_attention(model.attention)
        op.check(st.seq_len, mesh)
        op.check_heads(model.num_heads, model.num_kv_heads, mesh)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
