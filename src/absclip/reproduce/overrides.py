"""``--set KEY=VALUE`` overrides: CLI strings applied to (nested) option dataclasses, typed by the
option they replace."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InputFileError, UnsupportedError
from ..methods import MethodOptions
from .presets import Preset


def parse_assignments(items: Iterable[str], what: str) -> dict[str, str]:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b.c": "x"}`` (the CLI's repeatable KEY=VALUE options)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputFileError(f"{what} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _coerce(key: str, value: Any, current: Any) -> Any:
    """A CLI string converted to the type of the option it replaces (typed values pass through)."""
    if not isinstance(value, str) or isinstance(current, str):
        return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            return tuple(float(v) for v in text.strip("()[]").split(","))
        if isinstance(current, list):
            return json.loads(text)
    except (ValueError, json.JSONDecodeError):
        raise InputFileError(f"--set {key}: cannot read {value!r} as {type(current).__name__}") from None
    if current is None:  # options that default to None (max_descriptions, waffle_words ...)
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def apply_overrides(options: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of the dataclass ``options`` with ``overrides`` applied; dotted keys reach nested configs."""
    for key, value in overrides.items():
        options = _set(options, key.split("."), value, key)
    return options


def _set(obj: Any, path: list[str], value: Any, key: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    if path[0] not in names:
        raise InputFileError(f"unknown option {key!r}; {type(obj).__name__} has: {', '.join(sorted(names))}")
    current = getattr(obj, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise InputFileError(f"option {key!r}: {path[0]} has no sub-options")
        return dataclasses.replace(obj, **{path[0]: _set(current, path[1:], value, key)})
    return dataclasses.replace(obj, **{path[0]: _coerce(key, value, current)})


def check_row_options(preset: Preset) -> None:
    """Raise if a row's overrides name an unknown option (the tests run this over every preset)."""
    for row in preset.rows:
        try:
            apply_overrides(MethodOptions(), row.overrides)
        except InputFileError as exc:
            raise UnsupportedError(f"{preset.name} row {row.label!r}: {exc}") from exc
