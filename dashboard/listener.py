"""The backend's ingest side: verify, decrypt and de-duplicate what units publish.

A :class:`Listener` is one MQTT v5 client with a backend certificate, subscribed through a shared
subscription (``$share/<group>/camveil/v1/+/event/#``, ``.../status``), so
several listeners in one group split the load (see :attr:`ListenerConfig.shared` for a mosquitto
caveat across broker restarts). Every message is opened with
:func:`~contract.envelope.open_envelope` (the devices' public keys as trusted senders, the backend's
X25519 identity as recipient), then de-duplicated on (device, seq): a QoS 1 redelivery shows up
either as a :class:`~contract.errors.ReplayError` (same process) or as a known (device, seq) in the
:class:`DedupeStore` (persistent with SQLite, across restarts). Duplicates are counted and
dropped; anything that does not open is counted by error class and logged, never raised.

:class:`Subscriber` is the MQTT session alone (connect, subscribe, reconnect). :class:`Listener`
adds the opener and acknowledges each message when its callback returns; the dashboard's ingest
(:mod:`dashboard.ingest`) uses a :class:`Subscriber` with ``manual_ack`` and acknowledges a
message only once it is stored.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from contract.envelope.keys import Identity, PeerKeys
from contract.envelope.replay import ReplayCheck, StoreDecides
from contract.envelope.seal import SealedEnvelope, open_envelope
from contract.errors import EnvelopeError, ReplayError
from contract.mqtt import tls_context
from contract.ranges import seq_ranges
from contract.sqlitewal import connect_wal
from contract.topics import events_filter, shared, status_topic
from dashboard.receipts import Receipter

logger = logging.getLogger(__name__)

# no cmd/ack: acks are sealed to the operator who sent the command, the backend cannot open them
TOPICS: Final = (events_filter(), status_topic("+"))


def shared_topics(group: str) -> list[str]:
    return [shared(group, t) for t in TOPICS]


def subscribe_options(topic: str) -> SubscribeOptions:
    """QoS 1; retained messages at subscribe time only for ``status``. Units never retain events
    or acks, so a retained one was planted (the broker's ACL cannot forbid retain): MQTT v5
    retain handling 2 ("do not send") keeps it from being replayed to every new listener, also
    through ``$share`` (where mosquitto 2.0 sends retained messages)."""
    keep = topic.endswith("/status")
    return SubscribeOptions(qos=1, retainHandling=0 if keep else 2)


# --- de-duplication --------------------------------------------------------------------------


class DedupeStore(Protocol):
    def first_time(self, device: str, seq: int) -> bool:
        """Record (device, seq); True if it was not seen before."""
        ...

    def close(self) -> None: ...


class MemoryDedupe:
    def __init__(self) -> None:
        self._seen: set[tuple[str, int]] = set()

    def first_time(self, device: str, seq: int) -> bool:
        key = (device, seq)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def close(self) -> None:
        pass


class SqliteDedupe:
    """(device, seq) pairs in SQLite (WAL); committed before the message is acknowledged."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect_wal(path, check_same_thread=False)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS seen (device TEXT NOT NULL, seq INTEGER NOT NULL, "
            "PRIMARY KEY (device, seq)) WITHOUT ROWID"
        )
        self._lock = threading.Lock()

    def first_time(self, device: str, seq: int) -> bool:
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO seen (device, seq) VALUES (?, ?)", (device, seq)
            )
            return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# --- messages and counters -------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """A verified, decrypted, first-time message."""

    device: str
    seq: int
    topic: str
    type: str
    message: Mapping[str, Any] = field(repr=False)


@dataclass
class ListenerStats:
    received: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    seqs: dict[str, list[int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": sum(self.received.values()),
            "by_type": dict(self.received),
            "duplicates": self.duplicates,
            "bad": dict(self.bad),
            "seqs": {d: seq_ranges(s) for d, s in self.seqs.items()},
        }


class Opener:
    """Opens and de-duplicates one message at a time (no I/O besides the dedupe store)."""

    def __init__(
        self,
        identity: Identity,
        devices: PeerKeys,
        dedupe: DedupeStore,
        replay_guard: ReplayCheck | None = None,
    ) -> None:
        self._identity = identity
        self._devices = devices
        self._dedupe = dedupe
        # exact de-duplication is the dedupe store's: a window would drop late republishes
        self._guard: ReplayCheck = replay_guard or StoreDecides()
        self._lock = threading.Lock()
        self.stats = ListenerStats()
        self.on_duplicate: Callable[[str, int], None] | None = None
        """Told (device, seq) of every duplicate the dedupe store has seen: the unit published
        again an envelope the backend already has (its receipt was lost): receipt it again."""

    def open(self, topic: str, payload: bytes) -> Received | None:
        with self._lock:
            try:
                opened = open_envelope(
                    payload,
                    topic=topic,
                    trusted_senders=self._devices,
                    recipient=self._identity,
                    replay_guard=self._guard,
                )
            except ReplayError:  # only with an explicit window guard; not known to be stored
                self.stats.duplicates += 1
                return None
            except EnvelopeError as exc:
                self.stats.bad[type(exc).__name__] += 1
                logger.warning("dropped a message on %s: %s", topic, exc)
                return None
            if not self._dedupe.first_time(opened.device, opened.seq):
                self.stats.duplicates += 1
                if self.on_duplicate is not None:
                    self.on_duplicate(opened.device, opened.seq)
                return None
            kind = opened.message.get("type")
            kind = kind if isinstance(kind, str) else "?"
            self.stats.received[kind] += 1
            self.stats.seqs.setdefault(opened.device, []).append(opened.seq)
            return Received(opened.device, opened.seq, topic, kind, opened.message)


# --- the MQTT client -------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenerConfig:
    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    group: str = "camveil"
    client_id: str | None = None
    """A fixed id keeps a persistent session (messages queue while away); None: a fresh one."""
    keepalive_s: int = 30
    receive_maximum: int | None = None
    """MQTT v5 Receive Maximum: how many QoS 1 messages the broker may send before we
    acknowledge (None: the broker's default, 20 with mosquitto). With manual acknowledgement
    after a batched store write it must cover a batch."""
    shared: bool = True
    """Subscribe through ``$share/<group>/`` (load split between the group's members). False:
    a plain subscription. mosquitto 2.0.11 does not restore shared subscriptions from its
    persistence file after a restart (checked), so until the listener has reconnected and
    subscribed again, messages find no subscriber and are dropped by the broker (the unit got
    its PUBACK); a single ingest process with a persistent session (``client_id``) and
    ``shared=False`` loses nothing across broker restarts."""


@dataclass(frozen=True)
class Delivery:
    """One message as the broker delivered it (not yet opened)."""

    topic: str
    payload: bytes = field(repr=False)
    mid: int
    qos: int
    dup: bool


class Subscriber:
    """MQTT v5 session subscribed to the units' topics (shared or plain, see
    :class:`ListenerConfig`). ``on_delivery`` runs on paho's network thread for every message.
    Without ``manual_ack``, paho acknowledges a message when ``on_delivery`` returns; with it,
    nothing is acknowledged until :meth:`ack` (from any thread), so a message whose handling
    fails is redelivered by the broker on the next connection of a persistent session."""

    def __init__(
        self,
        config: ListenerConfig,
        on_delivery: Callable[[Delivery], None],
        *,
        manual_ack: bool = False,
    ) -> None:
        self._config = config
        self._on_delivery = on_delivery
        self._manual_ack = manual_ack
        self._client: mqtt.Client | None = None
        self.subscribed = threading.Event()
        self.connected = threading.Event()

    def ack(self, delivery: Delivery) -> None:
        """Acknowledge ``delivery`` (manual_ack only; a no-op once disconnected: the broker
        then redelivers it, and the store de-duplicates)."""
        client = self._client
        if client is not None and self._manual_ack:
            client.ack(delivery.mid, delivery.qos)

    def publish_receipt(self, envelope: SealedEnvelope) -> bool:
        """Publish a sealed receipt at QoS 1 on its topic (the :class:`Receipter`'s sender)."""
        client = self._client
        if client is None:
            return False
        info = client.publish(envelope.topic, bytes(envelope.data), qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def start(self) -> None:
        cfg = self._config
        persistent = cfg.client_id is not None
        client_id = cfg.client_id or f"camveil-listen-{cfg.group}-{os.getpid()}-{id(self):x}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=self._manual_ack,
        )
        client.tls_set_context(tls_context(cfg.ca_file, cfg.cert_file, cfg.key_file))
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 24 * 3600 if persistent else 0
        if cfg.receive_maximum is not None:
            properties.ReceiveMaximum = cfg.receive_maximum
        self._client = client
        client.connect_async(
            cfg.host,
            cfg.port,
            keepalive=cfg.keepalive_s,
            clean_start=not persistent,
            properties=properties,
        )
        client.loop_start()

    def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> Subscriber:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.error("listener: broker refused the connection: %s", reason_code.getName())
            return
        self.connected.set()
        cfg = self._config
        topics = shared_topics(cfg.group) if cfg.shared else list(TOPICS)
        client.subscribe([(t, subscribe_options(t)) for t in topics])

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self._client is None:  # stop() asked for it: not worth a warning in the journal
            logger.info("listener: disconnected (%s)", reason_code.getName())
        else:
            logger.warning("listener: disconnected (%s)", reason_code.getName())

    def _handle_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [c for c in reason_codes if c.is_failure]
        if refused:
            logger.error("listener: subscription refused: %s", refused[0].getName())
        else:
            self.subscribed.set()

    def _handle_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        self._on_delivery(
            Delivery(message.topic, bytes(message.payload), message.mid, message.qos, message.dup)
        )


class Listener(Subscriber):
    """MQTT v5 shared-subscription ingest. ``on_received`` runs on paho's network thread, before
    the PUBACK for that message is sent (so a crash in between means a redelivery, de-duplicated).
    """

    def __init__(
        self,
        config: ListenerConfig,
        opener: Opener,
        on_received: Callable[[Received], None],
        *,
        receipter: Receipter | None = None,
    ) -> None:
        super().__init__(config, lambda d: None)
        self._opener = opener
        self._on_received = on_received
        self._receipter = receipter
        if receipter is not None:
            opener.on_duplicate = receipter.stored

    @property
    def stats(self) -> ListenerStats:
        return self._opener.stats

    def __enter__(self) -> Listener:
        self.start()
        return self

    def _handle_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        try:
            received = self._opener.open(message.topic, bytes(message.payload))
            if received is not None:
                self._on_received(received)
                if self._receipter is not None:  # on_received returned: it is stored
                    self._receipter.stored(received.device, received.seq)
        except Exception:  # never let one message end ingest
            self._opener.stats.bad["internal"] += 1
            logger.exception("listener: handling a message on %s failed", message.topic)
