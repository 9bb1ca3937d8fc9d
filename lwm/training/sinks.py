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
import time
from collections.abc import Mapping
from typing import Any, Protocol

from lwm.errors import ConfigError
from lwm.training.config import TrainConfig
from lwm.training.metrics import MetricsWriter

_KEYS = ("step",)

LOGGED_FILE = "logged_step"
"""In `<workdir>/wandb`: the last step the W&B run logged."""


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
    step (TensorBoard drops them), as metrics.jsonl is truncated; a fresh start purges all (the
    events of a run killed before its first checkpoint would otherwise show twice)."""

    def __init__(self, logdir: pathlib.Path, resume_step: int):
        from tensorboardX import SummaryWriter

        # tensorboardX names event files by the second and the host: a writer opened in the same
        # second as the previous one (a quick restart) would overwrite its file, losing the steps
        # before the restart. A nanosecond suffix keeps every writer's file, and keeps name order
        # (the order TensorBoard reads them in, so the order its purges apply in) creation order.
        self._writer = SummaryWriter(
            logdir=str(logdir),
            purge_step=resume_step + 1,
            filename_suffix=f".{time.time_ns()}",
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
    `WANDB_MODE=offline` writes it locally (sync later with `wandb sync`).

    A W&B history cannot be rewound: a restart from a checkpoint older than the last step
    logged (a kill between checkpoints) skips the steps the run already logged (`LOGGED_FILE`)
    instead of logging them twice; a resume recomputes them bit-identically, so W&B shows the
    same values metrics.jsonl holds."""

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
        self._logged_path = root / LOGGED_FILE
        self._logged = _read_step(self._logged_path)
        self._run = wandb.init(
            project=project,
            dir=str(root),
            id=run_id,
            name=workdir.name,
            resume="allow",
            config=dict(config),
        )

    def write(self, record: Mapping[str, Any]) -> None:
        from lwm.io import write_text

        step = int(record["step"])
        if step <= self._logged:
            return  # this W&B run already holds it (logged before a restart)
        self._run.log(_scalars(record), step=step)
        self._logged = step
        write_text(self._logged_path, f"{step}\n")

    def close(self) -> None:
        self._run.finish()


def _read_step(path: pathlib.Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


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
