"""Where the trainer's metric records go: `metrics.jsonl` always, TensorBoard event files
(`train.tensorboard`) and Weights & Biases (`train.wandb_project`) when asked for.

A record is `{"step", "stage", "seq_len", <metric>: value, ...}`; eval metrics are the keys
starting with `eval_`. TensorBoard and W&B get them as `train/<metric>` and `eval/<metric>`.

TensorBoard is written with tensorboardX: a maintained pure-Python writer of the event-file
format (numpy and protobuf only). `flax.metrics.tensorboard` and `clu.metric_writers` both write
through TensorFlow, a dependency of gigabytes this project does not otherwise need (TFDS reads our
array_record data without it).
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

from lwm.errors import ConfigError
from lwm.training.config import TrainConfig
from lwm.training.metrics import MetricsWriter

_KEYS = ("step",)


class MetricSink(Protocol):
    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # in sys.modules as None: imports of it are blocked
        return False


def check_sinks_available(train: TrainConfig) -> None:
    """One-line ConfigErrors (before any compute) for a sink asked for but not installed."""
    if train.tensorboard and not _installed("tensorboardX"):
        raise ConfigError("train.tensorboard needs tensorboardX (pip install tensorboardX)")
    if train.wandb_project and not _installed("wandb"):
        raise ConfigError(
            f"train.wandb_project={train.wandb_project!r} needs wandb (pip install wandb)"
        )


def tag(key: str) -> str:
    """The TensorBoard / W&B name of a record key: `eval_loss` -> `eval/loss`, `loss` ->
    `train/loss`."""
    if key.startswith("eval_"):
        return "eval/" + key[len("eval_") :]
    return "train/" + key


def _scalars(record: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in record.items():
        if k in _KEYS or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if math.isfinite(v):
            out[tag(k)] = float(v)
    return out


class JsonlSink:
    """`<workdir>/metrics.jsonl`: one JSON object per record, appended."""

    def __init__(self, path: pathlib.Path, resume_step: int):
        self._writer = MetricsWriter(path)
        self._writer.truncate_after(resume_step)

    def write(self, record: Mapping[str, Any]) -> None:
        self._writer.write(record)

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Event files under `<workdir>/tensorboard`. A restart purges events after the restored
    step (TensorBoard drops them), as metrics.jsonl is truncated."""

    def __init__(self, logdir: pathlib.Path, resume_step: int):
        from tensorboardX import SummaryWriter

        # tensorboardX names event files by the second and the host: a writer opened in the same
        # second as the previous one (a quick restart) would overwrite its file, losing the steps
        # before the restart. A random suffix keeps every writer's file.
        self._writer = SummaryWriter(
            logdir=str(logdir),
            purge_step=resume_step + 1 if resume_step else None,
            filename_suffix=f".{secrets.token_hex(4)}",
        )

    def write(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        for name, value in _scalars(record).items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """A W&B run in `<workdir>/wandb`; its id is kept there so a restart continues the same run.
    `WANDB_MODE=offline` writes it locally (sync later with `wandb sync`)."""

    def __init__(
        self, project: str, workdir: pathlib.Path, config: Mapping[str, Any], resume_step: int
    ):
        import wandb

        from lwm.io import write_text

        root = workdir / "wandb"
        root.mkdir(parents=True, exist_ok=True)
        id_file = root / "run_id"
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)
            write_text(id_file, run_id + "\n")
        self._run = wandb.init(
            project=project,
            dir=str(root),
            id=run_id,
            name=workdir.name,
            resume="allow",
            config=dict(config),
        )

    def write(self, record: Mapping[str, Any]) -> None:
        self._run.log(_scalars(record), step=int(record["step"]))

    def close(self) -> None:
        self._run.finish()


def make_sinks(
    train: TrainConfig, workdir: pathlib.Path, config: Mapping[str, Any], resume_step: int
) -> list[MetricSink]:
    """The sinks the config asks for (call on the primary process only)."""
    check_sinks_available(train)
    sinks: list[MetricSink] = [JsonlSink(workdir / "metrics.jsonl", resume_step)]
    if train.tensorboard:
        sinks.append(TensorBoardSink(workdir / "tensorboard", resume_step))
    if train.wandb_project:
        sinks.append(WandbSink(train.wandb_project, workdir, config, resume_step))
    return sinks
