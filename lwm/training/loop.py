"""The step loop of both trainers (the LM `Trainer`'s stages and the VQGAN trainer): steps a
state through `[step, ctx.end)` and fires the `Hooks` events around it; logging, eval,
checkpoints and stops are hooks (`lwm.training.hooks`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from lwm.training.hooks import Hooks, LoopContext, StageInfo, StepInfo


def run_loop(
    ctx: LoopContext,
    state: Any,
    data: Iterator[Any],
    step_fn: Callable[[Any, Any], tuple[Any, dict]],
    hooks: Hooks,
    *,
    step: int,
    stop: Callable[[], bool],
    last_metrics: Callable[[], dict[str, float]] = dict,
) -> StageInfo:
    """`state, metrics = step_fn(state, next(data))` from global step `step` to `ctx.end`, or
    until `stop()` (asked before each step: a hook requested it at the previous one). Fires
    "stage_start", "step" (a `StepInfo` after each step) and "stage_end" (the returned
    `StageInfo`; `preempted` when stopped early, `last_metrics()` its last logged record)."""
    hooks.fire("stage_start", StageInfo(ctx, step, state, data))
    while step < ctx.end and not stop():
        state, metrics = step_fn(state, next(data))
        step += 1
        hooks.fire("step", StepInfo(ctx, step, state, metrics, data))
    end = StageInfo(ctx, step, state, data, preempted=stop(), last_metrics=last_metrics())
    hooks.fire("stage_end", end)
    return end
