"""The sections of ``camveil.toml``, one frozen dataclass each, every field documented where it is
declared and checked in ``__post_init__``. Sections owned by a stage live beside it and are
gathered here: [camera] (hw.camera.config), [detector] (agent.vision.factory), [privacy]
(agent.pipeline), [reid] (agent.vision.reid), [enrolment] (agent.vision.gallery), [status_led]
(hw.led)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from agent.config.validate import from_mapping
from agent.pipeline import PrivacyConfig
from agent.privacy.counts import DEFAULT_EPSILON_PER_DAY
from agent.vision.factory import DetectorConfig
from agent.vision.gallery import EnrolmentConfig
from agent.vision.reid import ReidConfig, check_windows
from contract.errors import ConfigError
from contract.statedir import DEFAULT_STATE_DIR
from hw.camera.config import CameraConfig
from hw.led import LedConfig

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
    bundle's settings, see :mod:`agent.config`)."""
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
    status_led: LedConfig = dataclasses.field(default_factory=LedConfig)
    """The board LED that shows the link state (hw/led.py documents the patterns)."""

    def __post_init__(self) -> None:
        check_windows(self.reid, self.events.presence_window_s)

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.mqtt.state_dir / "outbox.db"


def config_from_mapping(data: dict[str, Any]) -> AgentConfig:
    """Validate a whole config given as a mapping (the parsed TOML)."""
    return from_mapping(AgentConfig, data, "")
