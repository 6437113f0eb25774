"""Typed configuration, read once at start from TOML, validated with errors that name the key.

Every section is a frozen dataclass whose fields are documented where they are declared;
:func:`from_mapping` turns a TOML table into one, refusing unknown keys and wrong types with a
:class:`~contract.errors.ConfigError` such as ``[detector] threads = "two": expected an integer``.

Where a setting comes from, lowest first (each layer replaces single keys of the one below)::

    defaults (the dataclasses below)
    provisioned settings   the ``settings`` of the bundle in <state_dir>/provisioned/bundle.cbor:
                           [camera] kind, source and [mqtt] enabled, chosen at the station
    the config file        /etc/camveil/camveil.toml, the operator's: it always wins
    remote.toml            changes made by signed ``set_config`` commands (not [mqtt]/[outbox])

So a unit installed from the template (which leaves those keys unset) and provisioned publishes
from its first boot, and an operator who writes a key in the file overrides the station.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import math
import re
import sys
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

from agent.pipeline import PrivacyConfig
from agent.privacy.counts import DEFAULT_EPSILON_PER_DAY
from agent.vision.factory import DetectorConfig
from agent.vision.gallery import EnrolmentConfig
from agent.vision.reid import ReidConfig, check_windows
from contract.errors import ConfigError, ProtocolViolationError
from contract.files import write_atomic
from contract.statedir import (
    BUNDLE_FILE,
    DEFAULT_STATE_DIR,
    PROVISIONED,
    PROVISIONED_SETTINGS,
    Bundle,
)
from hw.camera.config import CameraConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

T = TypeVar("T")
logger = logging.getLogger(__name__)

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


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


# --- the agent's configuration file -------------------------------------------------------------

DEFAULT_CONFIG_PATH = Path("/etc/camveil/camveil.toml")


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Local files that `camveil run` writes besides the sealed MQTT events: redacted video and
    snapshots."""

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
class MqttConfig:
    """The MQTT daemon: sealed events to the broker, signed commands from it."""

    enabled: bool = False
    """Run the agent as the MQTT daemon (events, commands); false: only the ``[output]`` files.
    Left unset in the file, a unit provisioned by a station takes the station's ``true`` (the
    bundle's settings, see the module docstring)."""
    state_dir: Path = DEFAULT_STATE_DIR
    """The unit's state from provisioning (``provisioned/``: identity.cbor, tls.key, tls.crt,
    ca.crt, bundle.cbor); the agent adds its sequence file and command replay state here."""
    broker: str = ""
    """Broker URL ``mqtts://host:port``; empty: the URL from provisioning."""
    keepalive_s: int = 30
    """MQTT keepalive; a dead link is noticed after about 1.5 times this."""
    reconnect_min_s: float = 1.0
    """First reconnect delay (doubles per failed attempt, with jitter)."""
    reconnect_max_s: float = 60.0
    """Longest reconnect delay."""
    max_outstanding: int = 100
    """Publishes waiting for their PUBACK before the outbox waits (backpressure)."""
    require_subscriber: bool = True
    """Keep (and retry) an event the broker acknowledged with "no matching subscribers": it
    reached no backend. Needed with shared subscriptions, which mosquitto forgets on restart."""

    def __post_init__(self) -> None:
        if not 5 <= self.keepalive_s <= 3600:
            raise ConfigError("[mqtt] keepalive_s must be between 5 and 3600 seconds")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError("[mqtt] need 0 < reconnect_min_s <= reconnect_max_s")
        if not 1 <= self.max_outstanding <= 65535:
            raise ConfigError("[mqtt] max_outstanding must be between 1 and 65535")
        if self.broker and not self.broker.startswith(("mqtts://", "ssl://")):
            raise ConfigError(
                f"[mqtt] broker = {self.broker!r}: use mqtts://host:port (TLS is required)"
            )


@dataclasses.dataclass(frozen=True)
class ZoneConfig:
    """A named rectangle of the view; a detection counts in it if its box centre is inside."""

    name: str
    """Zone label in presence events (letters, digits and _ . : / -)."""
    rect: tuple[float, float, float, float]
    """x0, y0, x1, y1 as fractions of the frame width and height (0..1)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}", self.name) or self.name == "all":
            raise ConfigError(
                f"[[events.zones]] name = {self.name!r}: use 1-64 letters, digits, _ . : / - "
                '("all" is the whole view, always present)'
            )
        x0, y0, x1, y1 = self.rect
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ConfigError(
                f"[[events.zones]] {self.name}: rect = {list(self.rect)} must be "
                "[x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1"
            )


@dataclasses.dataclass(frozen=True)
class EventsConfig:
    """What the daemon publishes, and how often."""

    presence_window_s: float = 60.0
    """One presence event per window: the most people / faces seen at once, per zone."""
    zones: tuple[ZoneConfig, ...] = ()
    """Extra zones (``[[events.zones]]`` tables); the zone "all" (whole view) is always there."""
    health_interval_s: float = 60.0
    """Seconds between health events."""
    tamper_every: int = 5
    """Run the tamper detector on every N-th frame (0: off)."""
    snapshot_on_tamper: bool = True
    """Send a snapshot (of the redacted frame) with every tamper finding."""
    snapshot_max_bytes: int = 256 * 1024
    """Size cap of a snapshot JPEG; quality, then size, are lowered to fit."""
    dp_epsilon: float | None = None
    """ε each presence window spends on its counts (discrete Laplace noise; unset: exact)."""
    dp_epsilon_per_day: float | None = None
    """ε budget per person per UTC day (unset: 10); windows beyond it are withheld."""
    suppress_below: int = 0
    """Presence counts (after noise) below this are sent as null (0: never)."""

    def __post_init__(self) -> None:
        if not 1.0 <= self.presence_window_s <= 86400:
            raise ConfigError("[events] presence_window_s must be between 1 and 86400 seconds")
        if not 1.0 <= self.health_interval_s <= 86400:
            raise ConfigError("[events] health_interval_s must be between 1 and 86400 seconds")
        if self.tamper_every < 0:
            raise ConfigError("[events] tamper_every must be >= 0 (0 turns tamper checks off)")
        if not 4096 <= self.snapshot_max_bytes <= 4 * 1024 * 1024 - 4096:
            raise ConfigError("[events] snapshot_max_bytes must be between 4096 and 4 MiB - 4096")
        if self.dp_epsilon is not None and not (
            math.isfinite(self.dp_epsilon) and self.dp_epsilon > 0
        ):
            raise ConfigError("[events] dp_epsilon must be a positive number (or unset)")
        day = self.dp_epsilon_per_day
        if day is not None and not (math.isfinite(day) and day > 0):
            raise ConfigError("[events] dp_epsilon_per_day must be a positive number (or unset)")
        if day is not None and self.dp_epsilon is None:
            raise ConfigError("[events] dp_epsilon_per_day needs dp_epsilon (the ε per window)")
        if self.dp_epsilon is not None and self.dp_epsilon > (day or DEFAULT_EPSILON_PER_DAY):
            raise ConfigError(
                f"[events] dp_epsilon ({self.dp_epsilon}) exceeds dp_epsilon_per_day "
                f"({day or DEFAULT_EPSILON_PER_DAY}): no window could ever be released"
            )
        if self.suppress_below < 0:
            raise ConfigError("[events] suppress_below must be >= 0")
        names = [z.name for z in self.zones]
        if len(set(names)) != len(names):
            raise ConfigError(f"[[events.zones]] zone names must be unique, got {names}")


@dataclasses.dataclass(frozen=True)
class OutboxConfig:
    """The durable queue of sealed envelopes waiting for the broker's PUBACK."""

    path: Path | None = None
    """SQLite database; unset: ``outbox.db`` in ``[mqtt] state_dir``."""
    max_bytes: int = 64 * 1024 * 1024
    """Bound of the stored envelopes; the oldest are evicted (counted in health) beyond it."""
    max_age_s: float = 7 * 24 * 3600.0
    """Envelopes older than this are evicted (counted in health)."""
    max_db_bytes: int | None = None
    """Cap of the database file itself; reaching it acts like a full disk (the oldest are
    evicted, counted ``disk_full``). Unset: only the filesystem limits it."""
    recover_corrupt: bool = False
    """A database that fails its integrity check at start is moved aside
    (``outbox.db.corrupt-<time>``) and a new one started, instead of refusing to start."""
    reserve_bytes: int = 1024 * 1024
    """Size of the reserve file kept beside the database and released when the disk is full,
    so the unit can still open, evict and keep running (capped at 1/8 of the filesystem)."""
    delete_on: str = "receipt"
    """When an envelope may be forgotten: ``receipt`` (the backend signed that it stored it;
    nothing is lost when a broker crashes) or ``puback`` (the broker took it: for a subscriber
    that sends no receipts, such as a third-party tool)."""
    receipt_timeout_s: float = 60.0
    """A published envelope with no receipt after this long is published again."""

    def __post_init__(self) -> None:
        if self.delete_on not in ("receipt", "puback"):
            raise ConfigError(
                f'[outbox] delete_on must be "receipt" or "puback", got {self.delete_on!r}'
            )
        if not 5.0 <= self.receipt_timeout_s <= 86400:
            raise ConfigError("[outbox] receipt_timeout_s must be between 5 and 86400 seconds")
        if self.max_bytes < 64 * 1024:
            raise ConfigError("[outbox] max_bytes must be at least 65536")
        if self.max_age_s < 60:
            raise ConfigError("[outbox] max_age_s must be at least 60 seconds")
        if self.max_db_bytes is not None and self.max_db_bytes < 256 * 1024:
            raise ConfigError(
                "[outbox] max_db_bytes must be at least 262144 (256 KiB), or left unset"
            )
        if not 64 * 1024 <= self.reserve_bytes <= 64 * 1024 * 1024:
            raise ConfigError("[outbox] reserve_bytes must be between 65536 and 67108864")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """The whole ``camveil.toml``: one table per section."""

    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    detector: DetectorConfig = dataclasses.field(default_factory=DetectorConfig)
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    mqtt: MqttConfig = dataclasses.field(default_factory=MqttConfig)
    events: EventsConfig = dataclasses.field(default_factory=EventsConfig)
    outbox: OutboxConfig = dataclasses.field(default_factory=OutboxConfig)
    reid: ReidConfig = dataclasses.field(default_factory=ReidConfig)
    """Anonymous re-identification (off by default; agent/vision/reid.py documents each key)."""
    enrolment: EnrolmentConfig = dataclasses.field(default_factory=EnrolmentConfig)
    """Enrolled verification (off by default; agent/vision/gallery.py documents each key)."""

    def __post_init__(self) -> None:
        check_windows(self.reid, self.events.presence_window_s)

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.mqtt.state_dir / "outbox.db"


@dataclasses.dataclass(frozen=True)
class Provisioned:
    """The settings the station put in this unit's bundle (see the module docstring)."""

    path: Path
    """``<state_dir>/provisioned/bundle.cbor``."""
    present: bool
    """The unit is provisioned (the bundle exists), whether or not it carries settings."""
    settings: dict[str, dict[str, Any]]
    """``{section: {key: value}}``; empty when not provisioned or for a bundle from before
    first-boot settings."""


def read_provisioned(state_dir: Path) -> Provisioned:
    """The provisioned settings in ``state_dir`` (nothing if the unit is not provisioned).

    Keys this version does not know (a newer station's) are ignored with a warning. A bundle
    that cannot be read or decoded is a ConfigError that names the file and the fix."""
    path = Path(state_dir) / PROVISIONED / BUNDLE_FILE
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return Provisioned(path, False, {})
    except OSError as exc:
        raise ConfigError(
            f"cannot read the provisioned settings in {path}: {exc.strerror or exc}; run as the "
            "unit's user (sudo -u camveil), or give another state dir ([mqtt] state_dir)"
        ) from None
    try:
        settings = Bundle.decode(data).settings
    except ProtocolViolationError as exc:
        raise ConfigError(f"{path}: {exc}; factory-reset the unit and provision it again") from None
    known: dict[str, dict[str, Any]] = {}
    ignored = []
    for section, table in settings.items():
        for key, value in table.items():
            if key in PROVISIONED_SETTINGS.get(section, {}):
                known.setdefault(section, {})[key] = value
            else:
                ignored.append(f"{section}.{key}")
    if ignored:
        logger.warning(
            "%s: provisioned setting(s) %s unknown to this camveil version: ignored",
            path,
            ", ".join(sorted(ignored)),
        )
    return Provisioned(path, True, known)


@dataclasses.dataclass(frozen=True)
class LoadedConfig:
    """A validated config and the layers it was built from."""

    config: AgentConfig
    file: dict[str, Any]
    """The config file's mapping (with a ``state_dir`` override applied)."""
    provisioned: Provisioned
    base: dict[str, Any]
    """The provisioned settings with the file merged on top: what remote changes apply to."""

    def set_in_file(self, section: str, key: str) -> bool:
        table = self.file.get(section)
        return isinstance(table, dict) and key in table


def load_layers(path: Path, state_dir: Path | None = None) -> LoadedConfig:
    """The config file over the provisioned settings, validated. ``state_dir`` replaces the
    file's ``[mqtt] state_dir`` (``camveil run --state-dir``). An error names the config file, or
    the bundle when only its settings make the config invalid (e.g. a camera kind this version
    does not have: setting the key in the file overrides it)."""
    file = read_toml(path)
    if state_dir is not None:
        file = merge_mapping(file, {"mqtt": {"state_dir": str(state_dir)}})
    mqtt = file.get("mqtt")
    where = mqtt.get("state_dir") if isinstance(mqtt, dict) else None
    provisioned = read_provisioned(Path(where) if isinstance(where, str) else DEFAULT_STATE_DIR)
    base = merge_mapping(provisioned.settings, file)
    try:
        config = config_from_mapping(base)
    except ConfigError as exc:
        own = _error_of(file) if provisioned.settings else exc
        if own is None:  # the file alone is fine: the station's settings do not fit
            raise ConfigError(
                f"{provisioned.path} (settings from provisioning): {exc}; set the key in {path} "
                "to override it, or provision the unit again"
            ) from None
        raise ConfigError(f"{path}: {own}") from None
    return LoadedConfig(config, file, provisioned, base)


def _error_of(data: dict[str, Any]) -> ConfigError | None:
    """What is wrong with ``data`` on its own (None: nothing)."""
    try:
        config_from_mapping(data)
    except ConfigError as exc:
        return exc
    return None


def load_config(path: Path, state_dir: Path | None = None) -> AgentConfig:
    """Read and validate the agent's TOML config over the provisioned settings
    (:func:`load_layers`); every error names the file, the key and the fix."""
    return load_layers(path, state_dir).config


REMOTE_CONFIG_FILE = "remote.toml"


def remote_config_path(config: AgentConfig) -> Path:
    """Where changes made by ``set_config`` commands are kept: ``remote.toml`` in the state dir.

    ``/etc/camveil/camveil.toml`` stays the administrator's file: it is root-owned and read-only
    for the agent (``ProtectSystem=strict``, only ``/var/lib/camveil`` writable), so remote
    changes live beside the unit's other state and are merged on top of it at every start.
    """
    return config.mqtt.state_dir / REMOTE_CONFIG_FILE


def load_with_remote(
    path: Path, state_dir: Path | None = None
) -> tuple[AgentConfig, dict[str, Any], dict[str, Any]]:
    """The config file (over the provisioned settings) with the remote overlay merged on top
    (when ``[mqtt]`` is enabled).

    Returns the validated config, the base mapping (provisioned settings and file) and the
    overlay's mapping. An overlay that no longer validates (e.g. after a software update) is moved
    aside to ``remote.toml.rejected`` and logged, so the unit still starts (and stays reachable)
    with the file's own settings.
    """
    loaded = load_layers(path, state_dir)
    config, base = loaded.config, loaded.base
    overlay_path = remote_config_path(config)
    if not config.mqtt.enabled or not overlay_path.exists():
        return config, base, {}
    overlay = read_toml(overlay_path)
    try:
        merged = config_from_mapping(merge_mapping(base, overlay))
        if (merged.mqtt, merged.outbox) != (config.mqtt, config.outbox):
            raise ConfigError("it may not change [mqtt] or [outbox]")
    except ConfigError as exc:
        aside = overlay_path.with_name(overlay_path.name + ".rejected")
        overlay_path.replace(aside)
        logger.error("remote config %s ignored (moved to %s): %s", overlay_path, aside, exc)
        return config, base, {}
    return merged, base, overlay


def config_from_mapping(data: dict[str, Any]) -> AgentConfig:
    """Validate a whole config given as a mapping (the parsed TOML)."""
    return from_mapping(AgentConfig, data, "")


def merge_mapping(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` merged in: tables recursively, everything else replaced."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_mapping(out[key], value)
        else:
            out[key] = value
    return out
