"""Typed configuration, read once at start from TOML, validated with errors that name the key.

Every section is a frozen dataclass whose fields are documented where they are declared;
:func:`from_mapping` turns a TOML table into one, refusing unknown keys and wrong types with a
:class:`~agent.errors.ConfigError` such as ``[detector] threads = "two": expected an integer``.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from agent.errors import ConfigError
from agent.pipeline import PrivacyConfig
from agent.vision.factory import DetectorConfig
from hw.camera.config import CameraConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

T = TypeVar("T")

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a syntax error names the file, line and column."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def from_mapping(cls: type[T], data: dict[str, Any], section: str) -> T:
    """Build dataclass ``cls`` from ``data`` (a TOML table); ``section`` names it in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"[{section}] unknown key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
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


# --- the agent's configuration file -------------------------------------------------------------

DEFAULT_CONFIG_PATH = Path("/etc/camveil/camveil.toml")


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where the redacted output of `camveil run` goes (local files; MQTT events come later)."""

    dir: Path = Path("/var/lib/camveil/out")
    """Folder for redacted video and snapshots."""
    video: bool = False
    """Write every redacted frame to ``redacted.mp4`` in ``dir``."""
    snapshot_every: int = 0
    """Write a PNG of every N-th redacted frame to ``dir/snapshots`` (0: never)."""

    def __post_init__(self) -> None:
        if self.snapshot_every < 0:
            raise ConfigError("[output] snapshot_every must be >= 0 (0 turns snapshots off)")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """The whole ``camveil.toml``: one table per section."""

    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    detector: DetectorConfig = dataclasses.field(default_factory=DetectorConfig)
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)


def load_config(path: Path) -> AgentConfig:
    """Read and validate the agent's TOML config; every error names the key and the fix."""
    data = read_toml(path)
    try:
        return from_mapping(AgentConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
