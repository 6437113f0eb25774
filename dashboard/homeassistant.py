"""Home Assistant bridge: the dashboard's verified values as MQTT discovery entities.

Every payload a unit sends is sealed to the backend, so Home Assistant cannot read the units'
broker. The bridge reads what the dashboard's ingest already verified and stored (the SQLite
store, opened **read-only** beside the running dashboard) every ``interval_s`` and publishes to
Home Assistant's own broker (``camveil ha-bridge``, docs/DASHBOARD.md "Home Assistant"):

- per unit, retained MQTT discovery configs under ``<prefix>/<component>/camveil_<node>/<object>
  /config``: ``binary_sensor`` connectivity, ``sensor`` people and faces in view (the unit's
  differentially private counts of its latest presence window, with ``noised`` and ``epsilon``
  as attributes), fps and the status text, on one device ``camveil_<node>``;
- per unit, one retained JSON state ``<root>/<node>/state``, published only when it changed;
- the bridge's own availability ``<root>/bridge/availability`` (``online``, and ``offline`` as
  its last will), to which every entity is tied;
- for a unit no longer in the store, empty retained payloads that remove its entities.

Only these aggregates leave: no snapshot, no event body beyond the whole-view counts, no
visitor counts, and of a revoked unit nothing but its status. Shaping (:func:`report`,
:func:`state_payload`, :func:`discovery`) is pure; :class:`Bridge` is the loop and the session.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from dashboard.revocations import RevocationFile
from dashboard.store import Store
from dashboard.web.views import STATUSES, FleetRow, PresencePoint, Thresholds, fleet
from dashboard.web.views import presence_series as _presence_series

logger = logging.getLogger(__name__)

ONLINE: Final = "online"
OFFLINE: Final = "offline"
QOS: Final = 1


# --- reading the dashboard's store ------------------------------------------------------------


class ReadOnlyStore(Store):
    """The dashboard's store through a read-only connection (SQLite URI ``mode=ro``, plus
    ``query_only``): no migration, no WAL switch, never a write; a busy writer is waited for up
    to ``busy_timeout_s``. :mod:`dashboard.web.views` reads it as it reads the live store."""

    def __init__(self, path: Path, busy_timeout_s: float = 2.0) -> None:
        super().__init__(path)
        self._busy_timeout_s = busy_timeout_s

    def open(self) -> ReadOnlyStore:
        uri = self._path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self


# --- what is published ------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitReport:
    """Everything the bridge says about one unit. ``None``: unknown, stale or withheld."""

    device: str
    site: str
    status: str
    fps: float | None = None
    people: int | None = None
    faces: int | None = None
    noised: bool | None = None
    epsilon: float | None = None
    window_end_ms: int | None = None

    @property
    def online(self) -> bool:
        return self.status == ONLINE


def report(
    row: FleetRow, latest: PresencePoint | None, now: float, limits: Thresholds
) -> UnitReport:
    """One fleet row (and the unit's latest presence window) as published. A revoked unit is its
    status only; fps only while the health is current; counts only of an online unit whose
    latest window ended within ``limits.stale_after_s`` (never stale values shown as current)."""
    unit = row.unit
    if row.status == "revoked":
        return UnitReport(unit.device, unit.site, "revoked")
    fps = None if row.stale else unit.fps
    fresh = (
        latest is not None
        and row.status == ONLINE
        and now * 1000 - latest.end_ms <= limits.stale_after_s * 1000
    )
    if latest is None or not fresh:
        return UnitReport(unit.device, unit.site, row.status, fps=fps)
    return UnitReport(
        unit.device,
        unit.site,
        row.status,
        fps=fps,
        people=latest.people,
        faces=latest.faces,
        noised=latest.noised,
        epsilon=latest.eps,
        window_end_ms=latest.end_ms,
    )


def read_reports(
    store: Store,
    now: float,
    limits: Thresholds,
    revocations: RevocationFile | None = None,
) -> list[UnitReport]:
    """Every unit of the store, shaped by :func:`report` (sqlite3.Error passes through)."""
    revoked = revocations.current() if revocations is not None else {}
    out: list[UnitReport] = []
    for row in fleet(store, now, limits, revoked=revoked):
        latest = None
        if row.status != "revoked":
            series = _presence_series(store, row.device, limit=1)
            latest = series[-1] if series else None
        out.append(report(row, latest, now, limits))
    return out


def state_payload(unit: UnitReport) -> dict[str, Any]:
    """The JSON state of one unit (the keys are the same for every unit; null when unknown)."""
    end = unit.window_end_ms
    return {
        "status": unit.status,
        "online": unit.online,
        "fps": None if unit.fps is None else round(unit.fps, 2),
        "people": unit.people,
        "faces": unit.faces,
        "noised": unit.noised,
        "epsilon": unit.epsilon,
        "window_end": (
            None
            if end is None
            else datetime.fromtimestamp(end / 1000, tz=timezone.utc).isoformat(timespec="seconds")
        ),
    }


_NODE_SAFE: Final = re.compile(r"[A-Za-z0-9-]")


def node_id(device: str) -> str:
    """A device id as a Home Assistant node / object id (``[A-Za-z0-9_-]``), one to one: every
    other character (``_`` included) becomes ``_`` and its code point in hex, ``_`` again."""
    return "".join(c if _NODE_SAFE.fullmatch(c) else f"_{ord(c):x}_" for c in device)


def _slug(text: str) -> str:
    """An entity id's object part as Home Assistant writes it (``[a-z0-9_]``); Home Assistant
    itself adds ``_2`` if two units' slugs collide."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class Topics:
    prefix: str = "homeassistant"
    """Home Assistant's discovery prefix."""
    root: str = "camveil"
    """Where the bridge's states and availability live."""

    @property
    def availability(self) -> str:
        return f"{self.root}/bridge/availability"

    def state(self, node: str) -> str:
        return f"{self.root}/{node}/state"

    @property
    def states_filter(self) -> str:
        return f"{self.root}/+/state"

    def config(self, component: str, node: str, key: str) -> str:
        return f"{self.prefix}/{component}/camveil_{node}/{key}/config"


_COUNT_ATTRIBUTES: Final = (
    "{{ {'noised': value_json.noised, 'epsilon': value_json.epsilon, "
    "'window_end': value_json.window_end, 'privacy': 'differentially private count (noised "
    "on the unit) when noised is true; none when the unit is not online'} | tojson }}"
)

# (component, key, name, extra config); the value templates read the unit's state JSON
ENTITIES: Final[tuple[tuple[str, str, str, Mapping[str, Any]], ...]] = (
    (
        "binary_sensor",
        "connectivity",
        "Connectivity",
        {
            "device_class": "connectivity",
            "value_template": "{{ 'ON' if value_json.online else 'OFF' }}",
        },
    ),
    (
        "sensor",
        "people",
        "People in view",
        {
            "value_template": "{{ value_json.people }}",
            "state_class": "measurement",
            "unit_of_measurement": "people",
            "icon": "mdi:account-group",
            "json_attributes_template": _COUNT_ATTRIBUTES,
        },
    ),
    (
        "sensor",
        "faces",
        "Faces in view",
        {
            "value_template": "{{ value_json.faces }}",
            "state_class": "measurement",
            "unit_of_measurement": "faces",
            "icon": "mdi:face-man",
            "json_attributes_template": _COUNT_ATTRIBUTES,
        },
    ),
    (
        "sensor",
        "fps",
        "Frame rate",
        {
            "value_template": "{{ value_json.fps }}",
            "state_class": "measurement",
            "unit_of_measurement": "fps",
            "suggested_display_precision": 1,
            "entity_category": "diagnostic",
        },
    ),
    (
        "sensor",
        "status",
        "Status",
        {
            "value_template": "{{ value_json.status }}",
            "device_class": "enum",
            "options": list(STATUSES),
            "entity_category": "diagnostic",
        },
    ),
)


def discovery(unit: UnitReport, topics: Topics) -> dict[str, dict[str, Any]]:
    """Config topic -> discovery payload for every entity of ``unit``."""
    node = node_id(unit.device)
    device: dict[str, Any] = {
        "identifiers": [f"camveil_{node}"],
        "name": unit.device,
        "model": "camveil unit",
        "manufacturer": "camveil",
    }
    if unit.site:
        device["suggested_area"] = unit.site
    state = topics.state(node)
    out: dict[str, dict[str, Any]] = {}
    for component, key, name, extra in ENTITIES:
        config: dict[str, Any] = {
            "name": name,
            "unique_id": f"camveil_{node}_{key}",
            # Home Assistant >= 2025.10 (``object_id`` before; it stops working in 2026.4)
            "default_entity_id": f"{component}.{_slug(f'camveil_{unit.device}_{key}')}",
            "state_topic": state,
            "availability_topic": topics.availability,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
            "qos": QOS,
            "device": device,
            "origin": {"name": "camveil ha-bridge"},
            **extra,
        }
        if "json_attributes_template" in extra:
            config["json_attributes_topic"] = state
        out[topics.config(component, node, key)] = config
    return out


def removal_topics(node: str, topics: Topics) -> list[str]:
    """The retained topics of a unit's entities: an empty retained payload on each removes it."""
    return [topics.config(c, node, key) for c, key, _, _ in ENTITIES] + [topics.state(node)]


def _encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


# --- the bridge ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BridgeConfig:
    store: Path
    host: str
    port: int
    topics: Topics = field(default_factory=Topics)
    tls: bool = False
    ca_file: Path | None = None
    """mqtts: the CA to trust (None: the system's)."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    revocations: Path | None = None
    """The station's revocations.json (None: nothing is shown revoked)."""
    interval_s: float = 5.0
    limits: Thresholds = field(default_factory=Thresholds)
    client_id: str = "camveil-ha-bridge"
    keepalive_s: int = 30
    reconnect_max_s: int = 60


class Bridge:
    """Reads the store every ``interval_s`` and publishes what changed. Constructor only stores;
    :meth:`run` connects, loops until ``stop`` is set, then says ``offline`` and disconnects."""

    def __init__(self, config: BridgeConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._store: ReadOnlyStore | None = None
        self._revocations = RevocationFile(config.revocations)
        self._sent: dict[str, bytes] = {}  # topic -> retained payload published this session
        self._nodes: set[str] = set()  # nodes whose entities are (or were) on the broker
        self._connected = False
        self._outage_since: float | None = None
        self._refused: str | None = None
        self._store_trouble: str | None = None
        self.published = 0

    # --- lifetime ---

    def run(self, stop: threading.Event) -> None:
        self._start()
        try:
            while not stop.is_set():
                self.tick()
                stop.wait(self.config.interval_s)
        finally:
            self._close()

    def _start(self) -> None:
        cfg = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=True,
        )
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            context = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            client.tls_set_context(context)
        client.will_set(cfg.topics.availability, OFFLINE, qos=QOS, retain=True)
        client.reconnect_delay_set(1, cfg.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        client.loop_start()

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            if client.is_connected():
                info = client.publish(self.config.topics.availability, OFFLINE, QOS, retain=True)
                try:
                    info.wait_for_publish(timeout=2.0)
                except (RuntimeError, ValueError):
                    logger.warning("could not say offline before leaving; the last will will")
            client.disconnect()
            client.loop_stop()
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Bridge:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    # --- MQTT callbacks (paho's network thread) ---

    def _broker(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            why = str(rc)
            if self._refused != why:
                self._refused = why
                logger.error(
                    "Home Assistant broker %s refused the bridge: %s (check --username and "
                    "--password-file); retrying with backoff",
                    self._broker(),
                    why,
                )
            if self._outage_since is None:
                self._outage_since = time.monotonic()
            return
        with self._lock:
            self._connected = True
            self._sent.clear()  # a new session: publish everything again
        since, self._outage_since, self._refused = self._outage_since, None, None
        if since is None:
            logger.info("connected to the Home Assistant broker %s", self._broker())
        else:
            logger.info(
                "connected to the Home Assistant broker %s again after %.0f s",
                self._broker(),
                time.monotonic() - since,
            )
        client.publish(self.config.topics.availability, ONLINE, QOS, retain=True)
        client.subscribe(self.config.topics.states_filter, qos=QOS)

    def _on_connect_fail(self, _client: mqtt.Client, _u: Any) -> None:
        self._outage_started()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        with self._lock:
            was, self._connected = self._connected, False
        if was and self._client is not None:
            self._outage_started(f"lost the connection ({rc})")

    def _outage_started(self, why: str = "cannot connect") -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning(
                "Home Assistant broker %s: %s; retrying with backoff (up to %d s), said once "
                "per outage",
                self._broker(),
                why,
                self.config.reconnect_max_s,
            )

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        """A retained state from an earlier run: its unit is on the broker (removed at the next
        tick if the store no longer has it)."""
        parts = message.topic.split("/")
        root = self.config.topics.root.split("/")
        if message.payload and len(parts) == len(root) + 2 and parts[-2] != "bridge":
            with self._lock:
                self._nodes.add(parts[-2])

    # --- one round ---

    def tick(self) -> None:
        """Read the store, publish what changed (nothing while the broker is away)."""
        reports = self._read()
        if reports is None:
            return
        with self._lock:
            if not self._connected:
                return
            current = {node_id(r.device): r for r in reports}
            for node, unit in current.items():
                for topic, config in discovery(unit, self.config.topics).items():
                    self._publish(topic, _encode(config))
                self._publish(self.config.topics.state(node), _encode(state_payload(unit)))
            for node in sorted(self._nodes - set(current)):
                logger.info("unit %s is no longer in the store: removing its entities", node)
                for topic in removal_topics(node, self.config.topics):
                    self._publish(topic, b"")
                    self._sent.pop(topic, None)
            self._nodes = set(current)

    def _publish(self, topic: str, payload: bytes) -> None:
        if self._sent.get(topic) == payload or self._client is None:
            return
        info = self._client.publish(topic, payload, QOS, retain=True)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._sent[topic] = payload
            self.published += 1

    def _read(self) -> list[UnitReport] | None:
        """The store's units, or None (said once) while it cannot be read: missing, not yet
        migrated, locked past the busy timeout. Nothing is removed on a failed read."""
        try:
            if self._store is None:
                if not self.config.store.exists():
                    raise FileNotFoundError(f"{self.config.store} does not exist yet")
                self._store = ReadOnlyStore(self.config.store).open()
            reports = read_reports(
                self._store, self._clock(), self.config.limits, self._revocations
            )
        except (sqlite3.Error, OSError) as exc:
            why = str(exc)
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in why:
                self._drop_store()
            missing = isinstance(exc, FileNotFoundError) or "no such table" in why
            kind = "not created yet" if missing or "unable to open" in why else why
            if self._store_trouble != kind:
                self._store_trouble = kind
                logger.warning(
                    "cannot read the dashboard store %s (%s); retrying every %g s",
                    self.config.store,
                    why,
                    self.config.interval_s,
                )
            return None
        if self._store_trouble is not None:
            logger.info("reading the dashboard store %s again", self.config.store)
            self._store_trouble = None
        return reports

    def _drop_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
