"""The skeleton both demo pipelines (`lwm demo`, `lwm demo --video`) share: the work-directory
layout, phase timing, training with per-stage wall times (a trainer hook), the stage table and
the summary files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections

from lwm.training.signals import Interrupted

STAGE_TIMES = "stage_times.json"


class TrainingInterrupted(Interrupted):
    """The demo's training stopped on SIGTERM / SIGINT after saving its step: the evals did not
    run (a partly trained model's answers must not land in the results the rerun resumes)."""

    def __init__(self, step: int, stage: int, num_stages: int, signal_name: str | None):
        self.step, self.stage, self.signal_name = step, stage, signal_name
        super().__init__(
            f"interrupted by {signal_name or 'a stop request'} at step {step} (stage "
            f"{stage + 1} of {num_stages}): checkpoint saved, no evals run; rerun the same "
            "command to continue"
        )


@dataclasses.dataclass
class DemoPaths:
    root: pathlib.Path

    @property
    def data(self) -> pathlib.Path:
        return self.root / "data"

    @property
    def train(self) -> pathlib.Path:
        return self.root / "train"

    @property
    def results(self) -> pathlib.Path:
        return self.root / "results"


class Phases:
    """Wall seconds of this invocation's phases, in the order run: `with phases("data"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t0

    def summary_line(self) -> str:
        phases = ", ".join(f"{k} {v / 60:.1f} min" for k, v in self.seconds.items())
        return (
            f"Wall time of this invocation: {phases} (a resumed run counts only its own work;"
            " stage times above accumulate over runs)."
        )


class StageTimes:
    """A trainer hook: wall seconds per stage (from its stage_start to its stage_end event),
    accumulated over runs in `results/stage_times.json` so a resumed run adds to them."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.times: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        self._stage: int | None = None
        self._t0 = 0.0

    def attach(self, trainer) -> None:
        trainer.add_hook(self.start, event="stage_start")
        trainer.add_hook(self.end, event="stage_end")

    def start(self, info) -> None:
        self.flush()
        self._stage, self._t0 = info.index, time.perf_counter()

    def end(self, info) -> None:  # noqa: ARG002 - hook signature
        self.flush()
        self._stage = None

    def flush(self) -> None:
        """Adds the running stage's time so far (also on an interrupted run)."""
        if self._stage is None:
            return
        from lwm.io import write_json

        now = time.perf_counter()
        key = str(self._stage)
        self.times[key] = self.times.get(key, 0.0) + now - self._t0
        self._t0 = now
        write_json(self.path, self.times)


def train_stages(config: ml_collections.ConfigDict, paths: DemoPaths) -> dict[str, float]:
    """Runs (or resumes) the training stages; returns wall seconds per stage, accumulated over
    runs in `results/stage_times.json`. Raises `TrainingInterrupted` when a signal stopped them."""
    from lwm.training.run_spec import parse_run
    from lwm.training.signals import take_stop_signal
    from lwm.training.trainer import Trainer

    paths.results.mkdir(parents=True, exist_ok=True)
    timer = StageTimes(paths.results / STAGE_TIMES)
    spec = parse_run(config)
    trainer = Trainer(spec, paths.train)
    timer.attach(trainer)
    try:
        result = trainer.run()
    finally:
        timer.flush()
    if result.preempted:
        raise TrainingInterrupted(result.step, result.stage, len(spec.stages), take_stop_signal())
    shutil.copy(paths.data / "tokenizer.model", paths.train / "tokenizer.model")
    return timer.times


def resolved_stages(config: ml_collections.ConfigDict) -> list:
    """The config's stages with every inherited field filled in (what the trainer runs)."""
    from lwm.models.config import ModelConfig
    from lwm.training.config import TrainConfig, resolve_stages

    model = ModelConfig.from_dict(config.model)
    train = TrainConfig.from_dict(config.get("train"))
    stages = config.get("stages") or []
    return resolve_stages(train, stages, model.rope_theta, model.max_sequence_length)


def stage_table(
    config: ml_collections.ConfigDict, paths: DemoPaths, stage_times: Mapping[str, float]
) -> tuple[list[str], dict[int, float]]:
    """Markdown rows (stage, seq_len, rope theta, steps, final loss, wall time) and the last
    logged loss per stage, from the trainer's metrics.jsonl."""
    from lwm.training.metrics import read_metrics

    last_loss: dict[int, float] = {}
    for r in read_metrics(paths.train / "metrics.jsonl"):
        last_loss[int(r["stage"])] = float(r["loss"])
    lines = [
        "| stage | seq_len | rope theta | steps | final loss | wall time |",
        "|---|---|---|---|---|---|",
    ]
    for st in resolved_stages(config):
        i = st.index
        t = stage_times.get(str(i))
        lines.append(
            f"| {i + 1} | {st.seq_len} | {st.rope_theta:g} | {st.steps} | "
            f"{last_loss.get(i, float('nan')):.3f} | {'-' if t is None else f'{t / 60:.1f} min'} |"
        )
    return lines, last_loss


def write_summary_files(
    paths: DemoPaths,
    lines: Sequence[str],
    data: Mapping[str, Any],
    copies: Sequence[tuple[pathlib.Path, str]] = (),
) -> str:
    """`results/summary.md` (the lines) and `summary.json` (`data`), each written atomically;
    copies the pictures in `copies` (source, name in results/) that exist beside them."""
    from lwm.io import write_json, write_text

    res = paths.results
    for src, name in copies:
        if src.is_file():
            shutil.copy(src, res / name)
    text = "\n".join(lines) + "\n"
    write_text(res / "summary.md", text)
    write_json(res / "summary.json", data)
    return text
