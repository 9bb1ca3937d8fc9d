"""Config files and command-line overrides, without `eval`.

A config file is a Python file under `configs/` defining `get_config()` that returns an
`ml_collections.ConfigDict`. Overrides look like `--config.model.num_layers=4`; the value is parsed
according to the type of the existing field (bool, int, float, str, tuple/list via
`ast.literal_eval`, which only accepts literals). Unknown keys are an error, as in
`ml_collections.config_flags`.

`parse_section(cls, section, name)` turns a section into its typed config dataclass (the one parser
of every `from_dict`): unknown keys and ill-typed values are one-line errors naming the field.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import ml_collections

from lwm.errors import ConfigError

T = TypeVar("T")

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
    import importlib

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
    if hint is Any or hint is str:
        return True
    args = typing.get_args(hint)
    return any(_admits_str(a) for a in args) if args else False


def _type_name(hint: Any) -> str:
    """`int | None`, `tuple[int, ...]`, `Literal['a', 'b']`: an annotation as error text."""
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    return str(hint).replace("typing.", "")


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


MOVED_KEYS = {"model.attention.ffn_chunk_size": "model.ffn_chunk_size"}
"""Old override keys of fields that moved -> their new key (used when the config lacks the old)."""


def moved_key(config: ml_collections.ConfigDict, key: str) -> str:
    """`key`, or its new spelling when it names a moved field the config does not hold."""
    node: Any = config
    for part in key.split(".") if key in MOVED_KEYS else ():
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return MOVED_KEYS[key]
        node = node[part]
    return key


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
    """Applies `a.b.c=value` overrides in order; returns the same (mutated) config."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = moved_key(config, key)
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
        value = _parse_value(key, text, node[leaf])
        with node.unlocked():
            try:
                node[leaf] = value
            except TypeError:  # ConfigDict keeps a field's type (e.g. a number for a list)
                raise ConfigError(
                    f"--config.{key}: {value!r} is a {type(value).__name__}, the field holds a "
                    f"{type(node[leaf]).__name__} ({node[leaf]!r})"
                ) from None
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


# ----------------------------------------------------------------------------- typed sections


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` as the annotated type `tp` (a dataclass field's), or a one-line ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:  # Optional[X]: X's own (more specific) error
            return _coerce(value, rest[0], where)
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} {value!r}: expected one of {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else parse_section(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{where}: expected a sequence ({_type_name(tp)}), got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {value!r}")
            return tuple(
                _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value))
            )
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if type(value) is int and value in (0, 1):
            return bool(value)  # older configs' 0 / 1 flags
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # e.g. steps=1e4
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _as_dict(mapping: Any, section: str) -> dict[str, Any]:
    if mapping is None:
        return {}
    if hasattr(mapping, "to_dict"):
        mapping = mapping.to_dict()
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{section}: expected a mapping of fields, got {mapping!r}")
    return dict(mapping)


def parse_fields(cls: type, mapping: Any, section: str) -> dict[str, Any]:
    """The fields of dataclass `cls` present in `mapping`, coerced to their annotated types
    (for partial overrides, e.g. a stage's `data`). Unknown keys: a one-line ConfigError naming
    the section, the keys and the allowed fields."""
    values = _as_dict(mapping, section)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown {section} fields: {unknown}; allowed: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    return {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}


def config_section(cls: type, name: str, **fields: Any) -> ml_collections.ConfigDict:
    """A config-file section with every field of dataclass `cls` at its default (replaced by
    `fields`), so each can be set with `--config.<section>.<field>=...`; parsed back by
    `parse_section`. An unknown field is a one-line ConfigError."""
    values = dataclasses.asdict(cls())
    unknown = set(fields) - set(values)
    if unknown:
        raise ConfigError(f"unknown {name} config fields: {sorted(unknown)}")
    return ml_collections.ConfigDict({**values, **fields})


def parse_section(cls: type[T], mapping: Any, section: str) -> T:
    """Builds the typed config dataclass `cls` from a config section (ConfigDict, dict or None;
    an instance of `cls` is returned as is). Missing fields take their defaults; values are
    checked and coerced against the field annotations (Optional, Literal, tuples, dicts, nested
    config dataclasses); every error is one line naming `section.field`."""
    if isinstance(mapping, cls):
        return mapping
    return cls(**parse_fields(cls, mapping, section))
