"""Config files and command-line overrides, without `eval`.

A config file is a Python file under `configs/` defining `get_config()` that returns an
`ml_collections.ConfigDict`. Overrides look like `--config.model.num_layers=4`; the value is parsed
according to the type of the existing field (bool, int, float, str, tuple/list via
`ast.literal_eval`, which only accepts literals). Unknown keys are an error, as in
`ml_collections.config_flags`.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from lwm.errors import ConfigError

CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(name_or_path: str) -> pathlib.Path:
    """A path to a config file, or a bare preset name found in the repository's `configs/`."""
    path = pathlib.Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIGS_DIR / name_or_path, CONFIGS_DIR / f"{name_or_path}.py"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {name_or_path}")


def load_config_file(name_or_path: str) -> ml_collections.ConfigDict:
    path = resolve_config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"lwm_config_{path.stem.replace('-', '_')}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - report any failure of the user's file on one line
        raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    try:
        config = module.get_config()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"get_config() in {path} failed: {type(e).__name__}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {path} must return an ml_collections.ConfigDict")
    return config


# The typed dataclass behind each top-level section, for the declared type of a field whose value
# in the config is None (its Python value says nothing about what it may hold).
_TYPED_SECTIONS = {
    "model": ("lwm.models.config", "ModelConfig"),
    "train": ("lwm.training.config", "TrainConfig"),
    "data": ("lwm.data.config", "DataConfig"),
}


def declared_type(key: str) -> Any | None:
    """The annotation of `--config.KEY`'s field in its typed section (`model.attention.x` ->
    `AttentionConfig.x`), or None when it is not a dataclass field we know."""
    import dataclasses
    import importlib
    import typing

    parts = key.split(".")
    if parts[0] not in _TYPED_SECTIONS or len(parts) < 2:
        return None
    module, name = _TYPED_SECTIONS[parts[0]]
    try:
        cls: Any = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    for i, part in enumerate(parts[1:]):
        if not dataclasses.is_dataclass(cls):
            return None
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001 - an annotation we cannot resolve: no opinion
            return None
        if part not in hints:
            return None
        hint = hints[part]
        if i == len(parts) - 2:
            return hint
        inner = [a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
        cls = inner[0] if inner else None
    return None


def _admits_str(hint: Any) -> bool:
    import typing

    if hint is Any or hint is str:
        return True
    args = typing.get_args(hint)
    return any(_admits_str(a) for a in args) if args else False


def _type_name(hint: Any) -> str:
    import typing

    args = typing.get_args(hint)
    if args:
        return " | ".join(_type_name(a) for a in args)
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _parse_value(key: str, text: str, current: Any) -> Any:
    if isinstance(current, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}: expected a bool, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--config.{key}: expected an int, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--config.{key}: expected a float, got {text!r}") from None
    if isinstance(current, str):
        return text
    # None, tuples, lists, dicts: Python literals only (ast.literal_eval never runs code).
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if current is None:
            declared = declared_type(key)
            if declared is None or _admits_str(declared):
                return text  # an unset field given a bare word: take it as a string
            raise ConfigError(
                f"--config.{key}: expected {_type_name(declared)}, got {text!r}"
            ) from None
        raise ConfigError(f"--config.{key}: expected a Python literal, got {text!r}") from None
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        return type(current)(value)
    return value


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
    """Applies `a.b.c=value` overrides in order; returns the same (mutated) config."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node: Any = config
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, ml_collections.ConfigDict) and part in node:
                node = node[part]
            else:
                raise ConfigError(f"--config.{key}: no field {'.'.join(parts[: i + 1])!r}")
        leaf = parts[-1]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ConfigError(f"--config.{key}: no such field")
        with node.unlocked():
            node[leaf] = _parse_value(key, text, node[leaf])
    return config


def split_config_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=v` / `--config.a.b v` tokens from the rest of argv."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--config."):
            body = token[len("--config.") :]
            if "=" in body:
                overrides.append(body)
            elif i + 1 < len(argv):
                overrides.append(f"{body}={argv[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"{token} needs a value")
        else:
            rest.append(token)
        i += 1
    return rest, overrides


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config file and applies overrides."""
    return apply_overrides(load_config_file(name_or_path), overrides)
