"""TOML config files: read one (every failure a ConfigError that names the file and the fix),
write a mapping back as TOML text, replace a file crash-safely."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

from contract.errors import ConfigError
from contract.files import write_atomic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

_UTF8_BOM = b"\xef\xbb\xbf"
_OTHER_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; every failure is a ConfigError that names the file and the fix (a
    syntax error also the line and column). A UTF-8 byte-order mark is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give the path of the file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    for bom, encoding in _OTHER_BOMS.items():
        if data.startswith(bom):
            raise ConfigError(
                f"config file {path} is saved as {encoding}; TOML files must be UTF-8: save it "
                "again as UTF-8"
            )
    data = data.removeprefix(_UTF8_BOM)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 (byte {exc.start}); TOML files must be UTF-8: "
            "save it again as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def dump_toml(data: dict[str, Any]) -> str:
    """TOML text of a plain mapping (what :func:`read_toml` returns): tables, arrays of tables,
    strings, integers, finite floats, booleans and arrays of those. Used to persist a config
    changed by a ``set_config`` command; comments of the original file are not kept."""
    lines: list[str] = []
    _dump_table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _toml_value(name)


def _dump_table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {
        k: v
        for k, v in data.items()
        if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))
    }
    for k, v in scalars.items():
        lines.append(f"{_key(k)} = {_toml_value(v)}")
    for k, v in data.items():
        if k in scalars:
            continue
        sub = [*path, _key(k)]
        if isinstance(v, dict):
            lines.extend(["", f"[{'.'.join(sub)}]"])
            _dump_table(v, sub, lines)
        else:
            for item in v:
                lines.extend(["", f"[[{'.'.join(sub)}]]"])
                _dump_table(item, sub, lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write {value} to a config file")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write a {type(value).__name__} to a config file")


def write_config_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` crash-safely (:func:`contract.files.write_atomic`, 0644)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text.encode("utf-8"), 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write config file {path}: {exc.strerror or exc}") from None
