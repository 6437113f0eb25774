"""A fleet of simulated units in one process, for load tests, benchmarks and the demo.

Each simulated unit is a real unit without a camera:

- **provisioned the real way** (:func:`provision_fleet`): the unit side
  (:class:`provisioning.unit.UnitServer` over a :class:`~provisioning.unit.UnitStore` state
  directory, keys made on the "unit") answers the station's
  :class:`~provisioning.station.Station` over an in-memory serial link with the same framing,
  CSR and proof of possession as over USB; the station records it in its inventory and rewrites
  ``devices.cbor``, so a running dashboard picks the unit up live;
- **real envelopes**: events made by :class:`agent.events.EventBuilder` (presence, health,
  optional snapshots of a synthetic frame that went through :func:`agent.privacy.redact.redact`)
  with a persisted :class:`agent.sequence.SequenceStore`, sealed to the station's backend key and
  signed with the unit's key;
- **real MQTT sessions**: one client per unit with the unit's own TLS certificate (the broker
  takes the client id from its CN and lets it publish only under ``camveil/v1/<its id>/``), a
  retained ``online`` status at connect and a pre-sealed ``offline`` status as last will.

The clients are not one thread each: :class:`Fleet` drives them from ``threads`` selector loops
(paho's external event loop API: ``loop_read`` / ``loop_write`` / ``loop_misc``), which keeps 500
units to one or two threads. Everything a loop's clients do (publish, reconnect) happens on that
loop's thread; other threads hand work over through a queue and a wake-up socket.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import random
import selectors
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent import __version__
from agent.config import config_digest, config_from_mapping
from agent.events import EventBuilder, LinkState, new_boot_id, seal_event
from agent.outbox import OutboxStats
from agent.privacy.redact import RedactionConfig, redact
from agent.sequence import SequenceStore
from agent.stats import PipelineStats
from agent.unitstate import BrokerAddress, UnitState
from agent.vision.detection import Box
from contract.confighash import ConfigDigest
from contract.envelope.seal import SealedEnvelope
from contract.mqtt import QOS, tls_context
from hw.frame import Frame
from provisioning.serial_proto import Channel, MemoryLink
from provisioning.station import Station, StationPaths
from provisioning.unit import UnitServer, UnitStore

logger = logging.getLogger(__name__)

DEVICE_PREFIX: Final = "cv-sim-"
_DISCONNECT_WITH_WILL: Final = 0x04


def sim_device_id(index: int, prefix: str = DEVICE_PREFIX) -> str:
    return f"{prefix}{index:04d}"


# --- provisioning --------------------------------------------------------------------------------


def provision_unit(station: Path, state_dir: Path, device_id: str, site: str) -> None:
    """Provision one simulated unit with the station over an in-memory serial link (the same
    protocol, keys made on the unit's side); a unit already provisioned is left as it is."""
    store = UnitStore(state_dir)
    store.recover()
    if store.is_provisioned():
        return
    station_end, unit_end = MemoryLink.pair()
    server = UnitServer(store, Channel(unit_end))
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            server.serve_once(0.05)

    thread = threading.Thread(target=serve, name=f"unit-{device_id}", daemon=True)
    thread.start()
    try:
        Station(StationPaths(station), Channel(station_end), timeout=5.0).provision(
            site=site, device_id=device_id
        )
    finally:
        done.set()
        thread.join(timeout=5)


def provision_fleet(
    station: Path,
    state_root: Path,
    count: int,
    *,
    prefix: str = DEVICE_PREFIX,
    site: str = "simulated",
    on_unit: Callable[[str], None] | None = None,
    parallel: int = 8,
) -> list[Path]:
    """State directories of ``count`` units (``state_root/<device id>``), provisioning those
    that are not yet, ``parallel`` at a time (as several stations sharing one inventory would:
    its write transactions serialise them)."""
    state_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    devices = [sim_device_id(i, prefix) for i in range(1, count + 1)]

    def one(device: str) -> None:
        provision_unit(station, state_root / device, device, site)
        if on_unit is not None:
            on_unit(device)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for future in [pool.submit(one, d) for d in devices]:
            future.result()
    return [state_root / d for d in devices]


# --- one unit's events ---------------------------------------------------------------------------


class SimUnit:
    """A unit's identity, sequence and event builder (no camera, no outbox). ``open()`` takes
    the sequence file (one process per unit), ``close()`` releases it."""

    def __init__(self, state_dir: Path, *, rng: random.Random | None = None) -> None:
        self.state = UnitState.load(state_dir)
        self.device = self.state.device_id
        self._rng = rng or random.Random()  # noqa: S311 - simulated readings, not secrets
        self._seqs: SequenceStore | None = None
        self._builder: EventBuilder | None = None
        self._started = time.monotonic()
        self.boot = new_boot_id()

    def open(self) -> SimUnit:
        self._seqs = SequenceStore(self.state.seq_path)
        self._seqs.open()
        self._builder = EventBuilder(self.device, self.boot, self._seqs)
        return self

    def close(self) -> None:
        if self._seqs is not None:
            self._seqs.close()
            self._seqs = None

    @property
    def builder(self) -> EventBuilder:
        if self._builder is None:
            raise RuntimeError("SimUnit used before open()")
        return self._builder

    def _seal(self, event: Any) -> SealedEnvelope:
        return seal_event(event, sender=self.state.identity, recipient=self.state.backend)

    def status(self, state: LinkState) -> SealedEnvelope:
        return self._seal(self.builder.status(state))

    def presence(self) -> SealedEnvelope:
        now = time.time()
        people = self._rng.choice((0, 0, 0, 1, 1, 2, 3))
        counts = {"all": (people, self._rng.randint(0, people))}
        return self._seal(self.builder.presence(now - 10.0, now, counts))

    def health(self) -> SealedEnvelope:
        pipeline = PipelineStats(frames_in=100, frames_out=100 - self._rng.randint(0, 2))
        for stage in ("detect", "redact", "encode"):
            pipeline.time(stage, self._rng.uniform(0.005, 0.04))
        if self._rng.random() < 0.1:
            pipeline.drop("overload")
        outbox = OutboxStats(
            depth=self._rng.randint(0, 3),
            bytes=0,
            in_flight=0,
            oldest_age_s=None,
            evicted_total={},
            rejected_total={},
            corrupt_recovered=0,
            awaiting_receipt=0,
            delete_on="puback",  # simulated units keep no outbox: nothing waits for a receipt
        )
        return self._seal(
            self.builder.health(
                fps=round(self._rng.uniform(8.0, 12.0), 2),
                pipeline=pipeline,
                outbox=outbox,
                cpu_temp_c=round(self._rng.uniform(42.0, 68.0), 1),
                uptime_s=time.monotonic() - self._started,
                versions={"camveil": __version__, "simulated": "1"},
                models={"detector": "sim-0000000000000000"},
                config=_default_digest(),
            )
        )

    def snapshot(self) -> SealedEnvelope:
        """A snapshot of a synthetic scene whose "face" region went through the real redaction."""
        frame = synthetic_frame(self._rng)
        box = Box(120.0, 60.0, 200.0, 150.0)
        redacted = redact(frame, [box], RedactionConfig())
        return self._seal(self.builder.snapshot(redacted, trigger="simulated"))


@functools.cache
def _default_digest() -> ConfigDigest:
    """Simulated units run the default config, with no remote overlay."""
    return config_digest(config_from_mapping({}), {})


def synthetic_frame(rng: random.Random, width: int = 320, height: int = 240) -> Frame:
    """A small scene: gradient background, a few blocks, a light "face" disc at (160, 105)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = (x * 255 // width).astype(np.uint8)
    pixels[..., 1] = (y * 255 // height).astype(np.uint8)
    pixels[..., 2] = 90
    for _ in range(3):
        x0, y0 = rng.randrange(0, width - 40), rng.randrange(0, height - 40)
        pixels[y0 : y0 + 40, x0 : x0 + 40] = [rng.randrange(256) for _ in range(3)]
    face = (x - 160) ** 2 + (y - 105) ** 2 < 35**2
    pixels[face] = (224, 172, 140)
    return Frame(pixels=pixels, index=0, ts=time.time(), mono=time.monotonic(), source="sim")


# --- the MQTT side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimSettings:
    rate: float = 0.2
    """Events per second per unit (0: only status at connect)."""
    health_every: int = 10
    """Every n-th event of a unit is a health event, the rest presence."""
    snapshot_every: int = 0
    """Every n-th event is a snapshot (0: none)."""
    threads: int = 1
    """Selector loops the clients are spread over."""
    keepalive_s: int = 60
    max_inflight: int = 20
    """Unacknowledged publishes per client."""


@dataclass
class FleetStats:
    connected: int = 0
    published: int = 0
    acked: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    disconnects: int = 0
    acked_envelopes: list[tuple[str, int]] = field(default_factory=list)
    """(device, seq) of every PUBACKed event (``record_acked``)."""


class _Conn:
    def __init__(self, unit: SimUnit, loop: _Loop) -> None:
        self.unit = unit
        self.loop = loop
        self.client: mqtt.Client | None = None
        self.inflight: dict[int, SealedEnvelope] = {}
        self.connected = False
        self.next_reconnect = 0.0
        self.events = 0


class _Loop(threading.Thread):
    """One selector loop driving many paho clients (all paho calls on this thread)."""

    def __init__(self, fleet: Fleet, conns: list[_Conn] | None = None) -> None:
        super().__init__(name="sim-loop", daemon=True)
        self.fleet = fleet
        self.conns: list[_Conn] = conns or []
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.inbox: deque[Callable[[], None]] = deque()
        self.stopping = False
        self.generating = True
        self.draining_until = 0.0
        self.publish_will = True
        self.schedule: list[tuple[float, int, _Conn]] = []

    def call(self, fn: Callable[[], None]) -> None:
        self.inbox.append(fn)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    # paho socket callbacks (this thread)
    def _sock_open(self, client: mqtt.Client, conn: _Conn, sock: Any) -> None:
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _sock_close(self, client: mqtt.Client, conn: _Conn, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def _want_write(self, client: mqtt.Client, conn: _Conn, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _done_write(self, client: mqtt.Client, conn: _Conn, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(sock, selectors.EVENT_READ, conn)

    def connect(self, conn: _Conn) -> None:
        fleet = self.fleet
        unit = conn.unit
        client = conn.client
        if client is None:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=unit.device,
                protocol=MQTTProtocolVersion.MQTTv5,
                userdata=conn,
            )
            state = unit.state
            client.tls_set_context(tls_context(state.ca_cert, state.tls_cert, state.tls_key))
            client.max_inflight_messages_set(fleet.settings.max_inflight)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_publish = self._on_publish
            client.on_socket_open = self._sock_open
            client.on_socket_close = self._sock_close
            client.on_socket_register_write = self._want_write
            client.on_socket_unregister_write = self._done_write
            conn.client = client
        will = unit.status(LinkState.OFFLINE)  # pre-sealed at connect, fresh seq each time
        client.will_set(will.topic, will.data, qos=QOS, retain=True)
        try:
            broker = fleet.broker
            client.connect(broker.host, broker.port, keepalive=fleet.settings.keepalive_s)
        except OSError as exc:
            logger.warning("simulate: %s cannot connect (%s)", unit.device, exc)
            conn.next_reconnect = time.monotonic() + 2.0 + random.random()  # noqa: S311

    def _on_connect(
        self, client: mqtt.Client, conn: _Conn, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if rc.is_failure:
            with self.fleet.lock:
                self.fleet.stats.refused[f"connect:{rc.getName()}"] += 1
            return
        conn.connected = True
        with self.fleet.lock:
            self.fleet.stats.connected += 1
        self.publish(conn, conn.unit.status(LinkState.ONLINE), retain=True)

    def _on_disconnect(
        self, client: mqtt.Client, conn: _Conn, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        if conn.connected:
            with self.fleet.lock:
                self.fleet.stats.connected -= 1
                self.fleet.stats.disconnects += 1
        conn.connected = False
        conn.inflight.clear()  # paho resends its own queue on reconnect; we only count
        if not self.stopping:
            conn.next_reconnect = time.monotonic() + 1.0 + random.random()  # noqa: S311

    def _on_publish(
        self, client: mqtt.Client, conn: _Conn, mid: int, rc: ReasonCode, props: Any
    ) -> None:
        envelope = conn.inflight.pop(mid, None)
        stats = self.fleet.stats
        if rc.is_failure:
            with self.fleet.lock:
                stats.refused[rc.getName()] += 1
            return
        with self.fleet.lock:
            stats.acked += 1
            if self.fleet.record_acked and envelope is not None and "/event/" in envelope.topic:
                stats.acked_envelopes.append((envelope.device, envelope.seq))

    def publish(self, conn: _Conn, envelope: SealedEnvelope, retain: bool = False) -> None:
        client = conn.client
        if client is None:
            return
        info = client.publish(envelope.topic, envelope.data, qos=QOS, retain=retain)
        with self.fleet.lock:
            if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                conn.inflight[info.mid] = envelope
                self.fleet.stats.published += 1
            else:
                self.fleet.stats.refused[f"publish:{info.rc}"] += 1

    def run(self) -> None:
        for conn in self.conns:
            self.connect(conn)
        last_misc = 0.0
        while not self.stopping or self.inbox:
            self._step(last_misc)
            if time.monotonic() - last_misc >= 0.5:
                last_misc = time.monotonic()
            if self.draining_until and (
                time.monotonic() > self.draining_until
                or not any(c.inflight for c in self.conns if c.connected)
            ):
                self._disconnect_all()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(
            c.client is not None and c.client.socket() is not None for c in self.conns
        ):
            for key, mask in self.sel.select(0.05):
                if key.data is not None:
                    self._io(key.data, mask)
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _step(self, last_misc: float) -> None:
        timeout = 0.2
        if self.schedule:
            timeout = min(timeout, max(0.0, self.schedule[0][0] - time.monotonic()))
        for key, mask in self.sel.select(timeout):
            conn = key.data
            if conn is None:
                with contextlib.suppress(BlockingIOError, OSError):
                    self._wake_r.recv(4096)
                continue
            self._io(conn, mask)
        while self.inbox:
            self.inbox.popleft()()
        now = time.monotonic()
        self._generate(now)
        if now - last_misc >= 0.5:
            for conn in self.conns:
                if conn.client is None:
                    continue
                if conn.connected or conn.next_reconnect == 0.0:
                    conn.client.loop_misc()
                elif now >= conn.next_reconnect and not self.stopping:
                    conn.next_reconnect = 0.0
                    self.connect(conn)

    def _io(self, conn: _Conn, mask: int) -> None:
        client = conn.client
        if client is None:
            return
        if mask & selectors.EVENT_READ:
            client.loop_read()
            sock = client.socket()
            while sock is not None and getattr(sock, "pending", lambda: 0)():
                client.loop_read()
                sock = client.socket()
        if mask & selectors.EVENT_WRITE and client.socket() is not None:
            client.loop_write()

    def _generate(self, now: float) -> None:
        settings = self.fleet.settings
        while self.schedule and self.schedule[0][0] <= now and self.generating:
            _, order, conn = heapq.heappop(self.schedule)
            if conn.connected:
                conn.events += 1
                n = conn.events
                unit = conn.unit
                if settings.snapshot_every and n % settings.snapshot_every == 0:
                    envelope = unit.snapshot()
                elif settings.health_every and n % settings.health_every == 1:
                    envelope = unit.health()
                else:
                    envelope = unit.presence()
                self.publish(conn, envelope)
            heapq.heappush(self.schedule, (now + 1.0 / settings.rate, order, conn))

    def stop(self, publish_will: bool, drain_s: float = 5.0) -> None:
        """(this thread) stop making events, wait up to ``drain_s`` for outstanding PUBACKs,
        then disconnect every client."""
        self.publish_will = publish_will
        self.generating = False
        self.draining_until = time.monotonic() + drain_s

    def _disconnect_all(self) -> None:
        self.draining_until = 0.0
        self.stopping = True
        publish_will = self.publish_will
        for conn in self.conns:
            client = conn.client
            if client is None or not conn.connected:
                continue
            if publish_will:
                client.disconnect(
                    reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=_DISCONNECT_WITH_WILL)
                )
            else:
                client.disconnect()
            with contextlib.suppress(OSError):
                client.loop_write()


class Fleet:
    """Simulated units connected to ``broker``; a context manager (start ... stop)."""

    def __init__(
        self,
        units: Iterable[SimUnit],
        broker: BrokerAddress,
        settings: SimSettings | None = None,
        *,
        record_acked: bool = False,
    ) -> None:
        self.units = list(units)
        self.broker = broker
        self.settings = settings or SimSettings()
        self.record_acked = record_acked
        self.stats = FleetStats()
        self.lock = threading.Lock()
        self._loops: list[_Loop] = []
        self._conns: dict[str, _Conn] = {}

    def start(self) -> None:
        threads = max(1, min(self.settings.threads, len(self.units) or 1))
        self._loops = [_Loop(self) for _ in range(threads)]
        rng = random.Random()  # noqa: S311 - spreading start times, not secrets
        for i, unit in enumerate(self.units):
            unit.open()
            loop = self._loops[i % threads]
            conn = _Conn(unit, loop)
            loop.conns.append(conn)
            self._conns[unit.device] = conn
            if self.settings.rate > 0:
                first = time.monotonic() + rng.uniform(0.5, 0.5 + 1.0 / self.settings.rate)
                loop.schedule.append((first, i, conn))
        for loop in self._loops:
            heapq.heapify(loop.schedule)
            loop.start()

    def wait_connected(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.stats.connected < len(self.units):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def publish(self, device: str, envelopes: Iterable[SealedEnvelope]) -> None:
        """Publish pre-sealed envelopes of ``device`` (from any thread)."""
        conn = self._conns[device]
        items = list(envelopes)

        def send() -> None:
            for envelope in items:
                conn.loop.publish(conn, envelope)

        conn.loop.call(send)

    def wait_acked(self, count: int, timeout: float) -> bool:
        """Until ``count`` publishes in all (status included) are acknowledged."""
        deadline = time.monotonic() + timeout
        while self.stats.acked + sum(self.stats.refused.values()) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def unit(self, device: str) -> SimUnit:
        return self._conns[device].unit

    def stop(self, *, publish_will: bool = True) -> None:
        """Disconnect every unit; with ``publish_will`` the broker publishes each last will
        ("offline"), as for a lost connection."""
        for loop in self._loops:
            loop.call(lambda loop=loop: loop.stop(publish_will))  # type: ignore[misc]
        for loop in self._loops:
            loop.join(timeout=30)
        for unit in self.units:
            unit.close()

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_units(state_dirs: Iterable[Path]) -> list[SimUnit]:
    return [SimUnit(d) for d in state_dirs]
