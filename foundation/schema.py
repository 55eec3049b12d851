"""Config schemas and their validation, shared by the optimizers, the problem kinds and the runner.

A schema maps each key to ``(kind, default)`` or ``(kind, default, Range)``. ``kind`` is a Python type
(``float``, ``int``, ``bool``, ``str``), :class:`Name` (a string that becomes a file name), a
:class:`Choice` (or a plain tuple) of allowed strings, :class:`ListOf` an item kind, a nested schema
(dict), or :class:`Custom` (a function that validates the value itself). ``default`` is
``REQUIRED``, ``OPTIONAL`` (None: absent) or the value. :func:`validate_mapping` checks a mapping
against a schema and fills in defaults; every problem is one :class:`ConfigError` line naming the key
and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import reprlib
from dataclasses import dataclass
from typing import Any, Callable


class ConfigError(ValueError):
    """A bad configuration or command line: one line saying which key and what is allowed."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
OPTIONAL = None


@dataclass(frozen=True)
class Range:
    """Allowed interval of a numeric config value (a third element of a schema entry)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        def fmt(v: float) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        if self.high is None:
            assert self.low is not None  # every Range bounds at least one side
            return f"{'greater than' if self.low_open else 'at least'} {fmt(self.low)}"
        if self.low is None:
            return f"{'less than' if self.high_open else 'at most'} {fmt(self.high)}"
        return f"in {'(' if self.low_open else '['}{fmt(self.low)}, {fmt(self.high)}{')' if self.high_open else ']'}"


POSITIVE = Range(0.0, low_open=True)
NON_NEGATIVE = Range(0.0)
AT_LEAST_ONE = Range(1.0)
UNIT_INTERVAL = Range(0.0, 1.0)
SEED_RANGE = Range(0, 2**32 - 1)


class Choice(tuple):
    """Allowed string values of a key."""


class ListOf:
    def __init__(self, item):
        self.item = item


class Name(str):
    """Kind of a string that becomes a file or folder name."""


@dataclass(frozen=True)
class Custom:
    """A value checked by ``validate(dotted_key, value) -> value`` (e.g. an optimizer or compressor block);
    ``describe`` names what it takes on the configuration page."""

    validate: Callable[[str, Any], Any]
    describe: str = "mapping (see below)"


Float, Int, Bool, Str = float, int, bool, str
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
NAME_RULE = "1 to 100 letters, digits, '.', '_' or '-', not starting with '.' or '-'"

_EXCERPT = reprlib.Repr()
_EXCERPT.maxlevel, _EXCERPT.maxstring, _EXCERPT.maxother = 2, 40, 40
_EXCERPT.maxlist = _EXCERPT.maxdict = _EXCERPT.maxtuple = 4


def excerpt(value, limit: int = 60) -> str:
    """A short, one-line repr of ``value`` for error messages, however large or deep the value is."""
    text = _EXCERPT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def clip(text: object, limit: int = 160) -> str:
    """``text`` as one short line (for error messages that quote text from files or the system)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def key_text(key) -> str:
    """A config key as printed in messages: as is when plain, else a short repr."""
    return key if isinstance(key, str) and re.fullmatch(r"[\w.-]{1,60}", key) else excerpt(key)


def did_you_mean(word, options) -> str:
    if not isinstance(word, str) or len(word) > 100:
        return ""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def schema_entry(spec: tuple) -> tuple[Any, Any, Range | None]:
    """``(kind, default)`` or ``(kind, default, Range)`` -> (kind, default, range or None)."""
    kind, default, *rest = spec
    return kind, default, (rest[0] if rest else None)


def defaults(schema: dict) -> dict:
    """The default of every key of ``schema`` that has one (``REQUIRED`` keys are left out)."""
    return {key: spec[1] for key, spec in schema.items() if spec[1] is not REQUIRED}


def check_value(key: str, kind, value):
    """``value`` checked against ``kind`` (see the module docstring); returns it (numbers as float)."""
    if isinstance(kind, Custom):
        return kind.validate(key, value)
    if isinstance(kind, tuple):
        if isinstance(value, bool) and {"on", "off"} <= set(kind):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on / off as true / false
        if value not in kind:
            raise ConfigError(f"{key}: {excerpt(value)} is not allowed{did_you_mean(value, kind)}; "
                              f"allowed: {', '.join(map(str, kind))}")
        return value
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {excerpt(value)}")
        return [check_value(f"{key}[{i}]", kind.item, v) for i, v in enumerate(value)]
    if isinstance(kind, dict):
        return validate_mapping(key, kind, value)
    if kind is Bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {excerpt(value)}")
        return value
    if kind is Int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {excerpt(value)}")
        return value
    if kind is Float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {excerpt(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {excerpt(value)}")
        return float(value)
    if kind is Name:
        if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
            raise ConfigError(f"{key}: {excerpt(value)} cannot name a file; use {NAME_RULE}")
        return value
    if kind is Str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {excerpt(value)}")
        if "\0" in value:
            raise ConfigError(f"{key}: {excerpt(value)} contains a NUL character")
        return value
    raise TypeError(kind)


def validate_mapping(prefix: str, schema: dict, data: Any) -> dict:
    """Check ``data`` against ``schema``; return it with defaults filled in (raises ConfigError)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {excerpt(data)}")
    for key in data:
        if key not in schema:
            raise ConfigError(f"{prefix}.{key_text(key)}: unknown key{did_you_mean(key, schema)}; "
                              f"allowed: {', '.join(schema)}")
    out = {}
    for key, spec in schema.items():
        kind, default, bounds = schema_entry(spec)
        full = f"{prefix}.{key}"
        if key in data and data[key] is not None:
            out[key] = check_value(full, kind, data[key])
            if bounds is not None and not bounds.contains(out[key]):
                raise ConfigError(f"{full}: must be {bounds.describe()}, got {excerpt(out[key])}")
        elif default is REQUIRED:
            raise ConfigError(f"{full}: required key is missing")
        elif isinstance(kind, dict):
            out[key] = validate_mapping(full, kind, default)
        elif isinstance(kind, Custom) and default is not None:
            out[key] = kind.validate(full, copy.deepcopy(default))  # a default is filled in like a given value
        else:
            out[key] = copy.deepcopy(default)
    return out
