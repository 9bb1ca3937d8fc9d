"""Learning-rate schedules: linear warmup followed by cosine decay, constant, or linear decay."""

from __future__ import annotations

import optax

from lwm.errors import ConfigError


def make_schedule(
    name: str, *, lr: float, steps: int, warmup_steps: int = 0, end_lr_ratio: float = 0.1
) -> optax.Schedule:
    """`steps` is the stage length; the decay reaches `lr * end_lr_ratio` at its last step."""
    warmup_steps = max(0, min(warmup_steps, steps))
    decay_steps = max(1, steps - warmup_steps)
    end = lr * end_lr_ratio
    if name == "constant":
        decay = optax.constant_schedule(lr)
    elif name == "warmup_cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_ratio)
    elif name == "warmup_linear":
        decay = optax.linear_schedule(lr, end, decay_steps)
    else:
        raise ConfigError(f"unknown learning-rate schedule {name!r}")
    if warmup_steps == 0:
        return decay
    # Warmup starts at lr / warmup_steps (not 0) so the first step already moves the params.
    warmup = optax.linear_schedule(lr / warmup_steps, lr, warmup_steps - 1 or 1)
    return optax.join_schedules([warmup, decay], [warmup_steps])
