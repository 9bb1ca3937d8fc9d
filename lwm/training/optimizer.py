"""AdamW with global-norm clipping and a weight-decay mask chosen by parameter path."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

from lwm.pytree import key_path_str


def weight_decay_mask(
    params: Any, exclude: Sequence[str] = ("norm", "embed"), *, decay_1d: bool = False
) -> Any:
    """True for params that get weight decay: not matching any `exclude` regex and, unless
    `decay_1d`, at least 2-D (norm scales and biases are vectors)."""
    patterns = [re.compile(p) for p in exclude]

    def decide(path, x):
        name = key_path_str(path)
        if any(p.search(name) for p in patterns):
            return False
        return decay_1d or len(getattr(x, "shape", ())) >= 2

    return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(
    *,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    decay_mask: Any,
    clip_norm: float,
) -> optax.GradientTransformation:
    """clip_by_global_norm -> Adam -> decoupled weight decay on `decay_mask` params.

    The learning rate is *not* part of the transformation: the train step multiplies the update by
    `-lr(step)` (AdamW exactly). Keeping the schedule out of the optimizer state means a stage can
    keep its predecessor's moments while starting its own schedule.
    """
    parts = []
    if clip_norm > 0:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    return optax.chain(*parts)
