"""Typed YAML -> dataclass loading, the one loader of every config file.

`pangu train` (`training.run_config.RunConfig`) and `pangu prepare-data`
(`data.pipeline.PipelineConfig`) both read their YAML through here: each
value is converted to the field's annotated type (nested dataclasses,
`int` / `float` / `bool` / `str`, lists, tuples, optional fields) and every
error names the file, the dotted field and what was expected, e.g.
`run.yaml: train.max_steps='many': expected a number`. The file itself is read by
`utils/yaml_file.read_yaml` (re-exported here), the one YAML reader of every command. A dataclass that
rejects its values in `__post_init__` (ConfigError / ValueError) gets the
same prefix.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import yaml

from ..errors import ConfigError
from ..utils.yaml_file import read_yaml  # noqa: F401 - the one YAML file reader, re-exported for the loaders


def apply_overrides(data: dict, overrides: list[str] | None, error: type[ConfigError] = ConfigError) -> dict:
    """Apply `a.b.c=value` command-line overrides (values parsed as YAML) in place."""
    for item in overrides or []:
        if "=" not in item:
            raise error(f"override {item!r}: expected KEY.PATH=VALUE")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise error(f"override {item!r}: {part} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def build(cls, data, where: str = "", error: type[ConfigError] = ConfigError, skip: tuple[str, ...] = ("source",)):
    """`cls(**data)` with every value converted to its annotated type; `skip` fields are not settable."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error(f"{where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name not in skip}
    unknown = sorted(set(data) - names)
    if unknown:
        raise error(f"{where + ': ' if where else ''}unknown field(s) {unknown}; expected some of {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k, error) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise error(f"{where + ': ' if where else ''}{exc}") from exc
    except (TypeError, ValueError) as exc:  # a required field missing, or __post_init__ refusing a value
        raise error(f"{where or cls.__name__}: {exc}") from exc


def _coerce(value: Any, hint, where: str, error):
    """Convert one YAML value to the annotated type, or raise naming the field."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return None if value is None else _coerce(value, args[0], where, error)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where, error)
    if hint is bool:
        if not isinstance(value, bool):
            raise error(f"{where}={value!r}: expected true or false")
        return value
    if hint in (int, float):
        return _number(value, hint, where, error)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise error(f"{where}={value!r}: expected a string")
        return str(value)
    if hint is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise error(f"{where}={value!r}: expected a list")
        return tuple(value)
    if hint in (list, dict) or origin in (list, dict):
        base = origin or hint
        if not isinstance(value, base):
            raise error(f"{where}={value!r}: expected a {'list' if base is list else 'mapping'}")
        return value
    return value


def _number(value, hint, where: str, error):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise error(f"{where}={value!r}: expected a number")
    try:
        number = float(value)
    except ValueError as exc:
        raise error(f"{where}={value!r}: expected a number") from exc
    if hint is int and number != int(number):
        raise error(f"{where}={value!r}: expected an integer")
    return float(number) if hint is float else int(number)
