"""A TOML table into a typed, frozen dataclass, checked once: unknown keys (with a did-you-mean),
missing keys and wrong types are a ConfigError that names the key, such as
``[detector] threads = "two": expected an integer``. The sections are :mod:`agent.config.sections`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

from contract.errors import ConfigError

T = TypeVar("T")

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def from_mapping(cls: type[T], data: dict[str, Any], section: str) -> T:
    """Build dataclass ``cls`` from ``data`` (a TOML table); ``section`` names it in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {
        f.name: f
        for f in dataclasses.fields(cast(Any, cls))
        if f.init and not f.name.startswith("_")
    }
    where = f"[{section}]" if section else "top level:"
    unknown = sorted(set(data) - set(fields))
    if unknown:
        named = [_did_you_mean(key, fields) for key in unknown]
        raise ConfigError(
            f"{where} unknown key(s) {', '.join(named)}; known keys: {', '.join(sorted(fields))}"
        )
    missing = sorted(
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ConfigError(f"{where} missing key(s) {', '.join(missing)}: add them")
    kwargs = {
        name: _convert(hints[name], value, f"[{section}] {name}", f"{section}.{name}".strip("."))
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[{section}] {exc}") from exc


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    """``key``, or ``key (did you mean 'kind'?)`` when a known key is close to it."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"{key} (did you mean {close[0]!r}?)" if close else key


def _convert(hint: Any, value: Any, where: str, qual: str) -> Any:
    """Check / convert ``value`` to ``hint``; ``where`` names it in errors, ``qual`` is its
    dotted table path (for nested tables)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where, qual)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} = {value!r}: use one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} = {value!r}: expected a list")
        item = args[0] if args else Any
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, v, where, qual) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where} = {value!r}: expected {len(args)} values")
        return tuple(_convert(a, v, where, qual) for a, v in zip(args, value, strict=True))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, qual)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            options = ", ".join(repr(m.value) for m in hint)
            raise ConfigError(f"{where} = {value!r}: use one of {options}") from None
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: expected a path string")
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in _TYPE_WORDS:
        if isinstance(value, bool) != (hint is bool) or not isinstance(value, hint):
            raise ConfigError(f"{where} = {value!r}: expected {_TYPE_WORDS[hint]}")
        return value
    return value
