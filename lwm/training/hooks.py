"""Trainer hooks (Levanter-style): functions the train loop calls on its events.

    trainer.add_hook(fn, every=N)               # fn(StepInfo) after every N-th global step
    trainer.add_hook(fn, event="stage_start")   # fn(StageInfo); also "stage_end", "run_end"

A step hook also runs at each stage's last step (`info.stage_done`), so a stage always ends with
a log record, an eval and a checkpoint. Hooks run in the order they were added, on every process
(a hook that writes files checks `jax.process_index() == 0` itself); the trainer's own logging,
progress bar, eval, checkpointing and preemption are hooks too (`lwm.training.callbacks`). The
VQGAN trainer runs the same loop (`lwm.training.loop`) and events with its own hooks
(`lwm.video.vqgan_hooks`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol

import jax

from lwm.errors import LwmError

Event = Literal["stage_start", "step", "stage_end", "run_end"]
EVENTS: tuple[str, ...] = ("stage_start", "step", "stage_end", "run_end")


class LoopContext(Protocol):
    """What the loop and the hooks need of a stage: its global step range `[start, end)` and
    its index (the LM trainer's `StageContext`; the VQGAN trainer's one stage)."""

    start: int
    end: int

    @property
    def index(self) -> int: ...


@dataclasses.dataclass
class StageInfo:
    """A stage starting (`stage_start`) or ending (`stage_end`)."""

    ctx: Any  # a LoopContext: `lwm.training.stages.StageContext` in the LM trainer
    step: int
    """Global step: where this process enters the stage (beyond `ctx.start` on a mid-stage
    restart), or where it left it."""
    state: Any
    data: Iterator[Any]
    preempted: bool = False
    """stage_end only: the stage stopped early (SIGTERM or max_steps) with a checkpoint."""
    last_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    """stage_end only: the last record logged in the stage."""

    @property
    def index(self) -> int:
        return self.ctx.index


@dataclasses.dataclass
class StepInfo:
    """One finished train step: `state` is after the update, `metrics` the step's device
    values. Hooks add what they want logged at this step to `record` (the metrics hook writes it
    to the sinks once, with the train metrics)."""

    ctx: Any  # a LoopContext
    step: int
    state: Any
    metrics: dict[str, jax.Array]
    data: Iterator[Any]
    record: dict[str, float] = dataclasses.field(default_factory=dict)
    stopping: bool = False
    """Set by a hook that ends the loop at this step (before the hooks after it run): periodic
    hooks then run as at the stage's last step (the VQGAN trainer's stop)."""
    _scalars: dict[str, float] | None = None

    @property
    def stage_done(self) -> bool:
        return self.step == self.ctx.end

    @property
    def stage_step(self) -> int:
        return self.step - self.ctx.start

    def scalars(self) -> dict[str, float]:
        """The step's metrics as host floats (fetched once, on first use)."""
        if self._scalars is None:
            self._scalars = {k: float(v) for k, v in jax.device_get(self.metrics).items()}
        return self._scalars


@dataclasses.dataclass(frozen=True)
class _Hook:
    fn: Callable[[Any], None]
    event: str
    every: int


def make_hook(fn: Callable[[Any], None], *, every: int = 1, event: Event = "step") -> _Hook:
    """A validated hook: LwmError for an unknown event or a period below 1."""
    if event not in EVENTS:
        raise LwmError(f"hook event {event!r}: expected one of {EVENTS}")
    if every < 1:
        raise LwmError(f"hook every={every}: must be >= 1")
    return _Hook(fn, event, int(every))


class Hooks:
    """The hooks of one trainer, by event."""

    def __init__(self) -> None:
        self._hooks: list[_Hook] = []

    def extend(self, hooks: list[_Hook]) -> None:
        self._hooks.extend(hooks)

    def add(self, fn: Callable[[Any], None], *, every: int = 1, event: Event = "step") -> None:
        self._hooks.append(make_hook(fn, every=every, event=event))

    def fire(self, event: Event, info: Any) -> None:
        for h in self._hooks:
            if h.event != event:
                continue
            if event == "step" and info.step % h.every and not (info.stage_done or info.stopping):
                continue
            h.fn(info)
