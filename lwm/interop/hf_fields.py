"""Typed reads of HF config.json fields: every value lwm uses is checked (type and range) and a bad
one is a one-line LwmError naming the field, never a traceback deep in model construction.

`rope_from_hf` reads the RoPE settings in both transformers spellings: 5.x's `rope_parameters`
and 4.x's top-level `rope_theta` + `rope_scaling` (`type` or `rope_type`). A file may carry both
(lwm's `to-hf` writes both so either version reads it); they must then say the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lwm.errors import LwmError
from lwm.layers.rope_scaling import RopeScaling, rope_scaling_from_hf

REQUIRED = object()
"""Default meaning "the field must be present"."""
DEFAULT_THETA = 10000.0
"""transformers' RoPE base when a file names none."""


def hf_dict(hf: Any, where: str = "config.json") -> dict[str, Any]:
    """`hf` if it is a JSON object, else a one-line LwmError."""
    if not isinstance(hf, Mapping):
        raise LwmError(f"{where} must hold a JSON object, got {type(hf).__name__}")
    return dict(hf)


def _value(hf: Mapping[str, Any], key: str, default: Any) -> Any:
    value = hf.get(key)
    if value is None:
        if default is REQUIRED:
            raise LwmError(f"config.json lacks {key}")
        return default
    return value


def hf_int(hf: Mapping[str, Any], key: str, default: Any = REQUIRED, *, minimum: int = 1) -> int:
    """An integer field >= minimum (an integral float such as 4096.0 is accepted)."""
    value = _value(hf, key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LwmError(f"config.json {key}: expected an integer >= {minimum}, got {value!r}")
    return value


def hf_float(
    hf: Mapping[str, Any], key: str, default: Any = REQUIRED, *, positive: bool = True
) -> float:
    """A number > 0 (or >= 0 when not `positive`)."""
    value = _value(hf, key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value > 0 if positive else value >= 0) or value != value:
        bound = "> 0" if positive else ">= 0"
        raise LwmError(f"config.json {key}: expected a number {bound}, got {value!r}")
    return float(value)


def hf_bool(hf: Mapping[str, Any], key: str, default: bool) -> bool:
    value = _value(hf, key, default)
    if not isinstance(value, bool):
        raise LwmError(f"config.json {key}: expected true or false, got {value!r}")
    return value


def hf_str(hf: Mapping[str, Any], key: str, default: Any = REQUIRED) -> str:
    value = _value(hf, key, default)
    if not isinstance(value, str):
        raise LwmError(f"config.json {key}: expected a string, got {value!r}")
    return value


def hf_str_list(hf: Mapping[str, Any], key: str) -> list[str] | None:
    """A list of strings, or None when absent."""
    value = hf.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LwmError(f"config.json {key}: expected a list of strings, got {value!r}")
    return value


def _describe(theta: float, scaling: RopeScaling | None) -> str:
    if scaling is None:
        return f"plain RoPE, theta {theta:g}"
    return f"{scaling.kind} x{scaling.factor:g}, theta {theta:g}"


def rope_from_hf(hf: Mapping[str, Any], max_positions: int) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from either spelling. transformers 4.x reads the top-level `rope_theta`
    and `rope_scaling`; 5.x reads `rope_scaling` when set, else `rope_parameters`. Where a
    file's spellings differ, the versions (or the file's author and lwm) could disagree on the
    positions the weights were trained with, so that is refused."""
    top = None if hf.get("rope_theta") is None else hf_float(hf, "rope_theta")
    views: dict[str, tuple[float, RopeScaling | None]] = {}
    for key in ("rope_parameters", "rope_scaling"):
        d = hf.get(key)
        if d is None:
            continue
        if not isinstance(d, Mapping):
            raise LwmError(f"config.json {key}: expected an object, got {d!r}")
        if d.get("rope_theta") is None:
            theta = DEFAULT_THETA if top is None else top
        else:
            theta = hf_float(d, "rope_theta")
            if top is not None and theta != top:
                raise LwmError(
                    f"config.json rope_theta {top:g} and {key}.rope_theta {theta:g} disagree"
                )
        scaling = rope_scaling_from_hf(d, max_position_embeddings=max_positions, where=key)
        views[key] = (theta, scaling)
    if not views:
        return (DEFAULT_THETA if top is None else top), None
    if len(set(views.values())) > 1:
        said = "; ".join(f"{k}: {_describe(*v)}" for k, v in views.items())
        raise LwmError(f"config.json's RoPE spellings disagree ({said})")
    return next(iter(views.values()))
