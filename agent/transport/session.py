"""The MQTT session of a unit: paho-mqtt 2.x, MQTT v5, QoS 1, mutual TLS with the pinned CA.

Contract with the outbox (the only user that publishes):

- :meth:`Transport.publish` takes a :class:`~contract.envelope.SealedEnvelope` and nothing else
  (:class:`~contract.errors.UnredactedDataError` otherwise). It returns the MQTT message id, or
  ``None`` when the message was *not* taken: disconnected, stopping, or ``max_outstanding``
  messages are already waiting for their PUBACK. On ``None`` keep the row and offer it again
  after the next ``CONNECTED`` event or the next ack. Nothing is queued behind your back.
- ``on_acked(mid)`` fires once per mid when the broker's PUBACK reports success (reason code
  < 0x80; 0x10 "no matching subscribers" too, unless ``require_subscriber``). It is the only
  signal to delete a row.
- ``on_rejected(mid, reason_code)`` fires when the PUBACK carries a failure (e.g. 0x87 not
  authorized, 0x97 quota exceeded): the broker did not take the message; keep the row, count it.
- A returned mid stays owned by the transport until it is acked or rejected, or :meth:`stop`
  is called: after a reconnect paho retransmits it by itself (DUP flag) and the ack still comes
  with the same mid, so do not publish that row again meanwhile. After :meth:`stop` every
  outstanding mid is void: publish the rows again on the next start (the dashboard dedupes on
  device + seq).

Callbacks (``on_acked``, ``on_rejected``, ``on_state``, ``on_command``) run one at a time on the
transport's dispatcher thread, never on paho's network thread and never while the transport or
paho hold a lock. So a caller may hold its own lock around ``publish()`` (to record the mid) and
take the same lock in ``on_acked`` without deadlock; an ack can be dispatched before ``publish()``
returns to its caller, so do record the mid under that lock. Callbacks must not block for long
(they hold up every later callback); they may call :meth:`publish` and :meth:`stop`. An exception
in a callback is logged and the transport goes on.

Reconnection is automatic, with exponential backoff and jitter: the n-th consecutive failure
waits a uniformly random time in [d/2, d], d = min(reconnect_max_s, reconnect_min_s * 2**n).

The last will is a pre-sealed "offline" status (retained, QoS 1) that the broker publishes when
the connection dies without a DISCONNECT, and also on :meth:`stop` (MQTT v5 reason code 0x04
"disconnect with will message"), so the retained status is "offline" whenever the unit is not
connected. Pass ``will`` as a function to have it sealed afresh before every connection attempt
(docs/PROTOCOL.md, "Last will and status"; each call may take a new seq), or as a fixed
envelope.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.transport.client import Client, describe, describe_refusal
from agent.transport.dispatch import Dispatcher
from agent.transport.interface import (
    AckCallback,
    CommandCallback,
    ConnectionEvent,
    ConnectionState,
    RejectCallback,
    StateCallback,
    TransportConfig,
    WillSource,
)
from contract.envelope import SealedEnvelope
from contract.errors import UnredactedDataError
from contract.mqtt import QOS, tls_context
from contract.topics import KIND_RECEIPT, command_topic, receipt_topic, status_topic

logger = logging.getLogger(__name__)

_DISCONNECT_WITH_WILL: Final = 0x04
REFUSALS_TO_GIVE_UP: Final = 2
"""reconnect_with(): refusals of the new certificate (not network failures) that end the wait."""
NO_MATCHING_SUBSCRIBERS: Final = 0x10


class Transport:
    """One MQTT v5 session for one device. Constructor only stores; I/O starts in
    :meth:`start` (or ``with Transport(...) as t:``) and ends in :meth:`stop`."""

    def __init__(
        self,
        config: TransportConfig,
        *,
        on_acked: AckCallback,
        on_rejected: RejectCallback | None = None,
        on_state: StateCallback | None = None,
        on_command: CommandCallback | None = None,
        on_receipt: CommandCallback | None = None,
        will: WillSource | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._on_acked = on_acked
        self._on_rejected = on_rejected
        self._on_state = on_state
        self._on_command = on_command
        self._on_receipt = on_receipt
        self._will = will
        self._rng = rng or random.SystemRandom()
        self._client: Client | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # guards _outstanding/_early; never held over paho calls
        self._publish_lock = threading.Lock()  # serialises publish(); never taken by paho
        self._restart_lock = threading.Lock()  # stop() vs reconnect_with()
        self._closed = False  # stop() was called: reconnect_with() starts nothing
        self._refusals = 0  # attempts the broker refused (TLS or CONNACK), not network failures
        self._outstanding: set[int] = set()
        self._early: set[int] = set()
        self._failures = 0
        self._dispatcher = Dispatcher()
        if isinstance(will, SealedEnvelope):
            self._check_will(will)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the TLS files and connect in the background (returns at once; watch
        ``on_state`` or :meth:`wait_connected`). Raises :class:`~contract.errors.ConfigError`
        naming the file if the CA, certificate or key cannot be loaded."""
        if self._client is not None:
            raise RuntimeError("Transport already started")
        self._closed = False
        cfg = self._config
        context = tls_context(cfg.ca_file, cfg.cert_file, cfg.key_file)

        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.device_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        client.tls_set_context(context)
        client.max_inflight_messages_set(min(cfg.max_outstanding, 65535))
        client.max_queued_messages_set(0)
        first_delay = self._next_delay_int()
        client.reconnect_delay_set(first_delay, first_delay)
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        self._refresh_will(client)

        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = cfg.session_expiry_s
        self._failures = 0
        self._dispatcher.start(f"mqtt-dispatch-{cfg.device_id}")
        with self._publish_lock:
            self._client = client
            self._stopping = False
        client.connect_async(
            cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=False, properties=properties
        )
        client.loop_start()
        logger.info("mqtt: connecting to %s:%s as %s", cfg.host, cfg.port, cfg.device_id)

    def stop(self, *, publish_will: bool = True, timeout: float = 10.0) -> None:
        """Disconnect and stop the threads. With ``publish_will`` the broker publishes the last
        will ("offline") as for a lost connection. Outstanding mids are void afterwards."""
        with self._restart_lock:
            self._closed = True
            self._stop(publish_will, timeout)

    def _stop(self, publish_will: bool, timeout: float) -> None:
        with self._publish_lock:  # no publish() is half-way through on the client we stop
            client, self._client = self._client, None
            self._stopping = True
        if client is None:
            return
        if publish_will and self._connected.is_set():
            client.disconnect(
                reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=_DISCONNECT_WITH_WILL)
            )
        else:
            client.disconnect()
        client.loop_stop()
        self._connected.clear()
        self._subscribed.clear()
        with self._lock:
            self._outstanding.clear()
            self._early.clear()
        self._emit(ConnectionEvent(ConnectionState.STOPPED, "stopped"))
        self._dispatcher.stop(timeout)
        logger.info("mqtt: stopped")

    def reconnect_with(self, cert_file: Path, key_file: Path, *, wait_s: float) -> bool:
        """End the session with a plain DISCONNECT (no last will; the broker keeps the session
        and what it queued for it), start again with this client certificate and key, and wait
        up to ``wait_s`` seconds for the broker to accept it: True once connected; False after
        ``wait_s``, or sooner once the broker refused it ``REFUSALS_TO_GIVE_UP`` times (a TLS
        or CONNACK refusal; a broker that cannot be reached is waited for). The
        publisher sees ``STOPPED`` and offers what was in flight again (no message is lost).
        ConfigError, before anything is disconnected, when the files cannot be loaded. False at
        once after :meth:`stop`. Not from a transport callback (it waits for the dispatcher)."""
        config = dataclasses.replace(self._config, cert_file=cert_file, key_file=key_file)
        tls_context(config.ca_file, config.cert_file, config.key_file)  # loads, or raises
        with self._restart_lock:
            if self._closed or self._client is None:
                return False  # stopped (the daemon is shutting down): start nothing
            self._stop(publish_will=False, timeout=10.0)
            self._config = config
            refused = self._refusals
            self.start()
        deadline = time.monotonic() + wait_s
        while not self._closed:
            if self.wait_connected(min(0.2, max(0.0, deadline - time.monotonic()))):
                return True
            if time.monotonic() >= deadline or self._refusals - refused >= REFUSALS_TO_GIVE_UP:
                return False
        return False

    def use_files(self, cert_file: Path, key_file: Path) -> None:
        """The paths of the same certificate and key after they were renamed (the next start
        loads them from there); the current session is left alone."""
        self._config = dataclasses.replace(self._config, cert_file=cert_file, key_file=key_file)

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- state ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until connected (True) or ``timeout`` seconds passed (False)."""
        return self._connected.wait(timeout)

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """Block until the broker granted the command subscription of the current connection
        (True), or ``timeout`` seconds passed (False). Only meaningful with ``on_command``."""
        return self._subscribed.wait(timeout)

    @property
    def outstanding(self) -> int:
        """Published messages still waiting for their PUBACK."""
        with self._lock:
            return len(self._outstanding)

    # --- publish --------------------------------------------------------------------------------

    def publish(self, topic: str, payload: SealedEnvelope, *, retain: bool = False) -> int | None:
        """Publish a sealed envelope with QoS 1 on ``topic`` (which must be the topic it was
        sealed for). Returns the mid, or None if not taken now (disconnected, too many
        outstanding, or stopped): keep the message and offer it again later. See the module
        docstring."""
        if not isinstance(payload, SealedEnvelope):
            raise UnredactedDataError(
                f"the transport publishes only SealedEnvelope, not {type(payload).__name__}"
            )
        if topic != payload.topic:
            raise ValueError(f"envelope sealed for {payload.topic!r}, not {topic!r}")
        if payload.device != self._config.device_id:
            raise ValueError(f"envelope of device {payload.device!r} on {self._config.device_id}")
        with self._publish_lock:
            client = self._client
            if client is None:
                if self._stopping:
                    return None  # stopping or stopped: the caller keeps the message
                raise RuntimeError("Transport.publish() before start()")
            if not self._connected.is_set():
                return None
            with self._lock:
                if len(self._outstanding) >= self._config.max_outstanding:
                    return None
            info = client.publish(topic, payload.data, qos=QOS, retain=retain)
            # NO_CONN: the link dropped just now; paho holds the message and sends it after the
            # reconnect, so the mid is as good as any other.
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                logger.warning("mqtt: publish not taken: %s", mqtt.error_string(info.rc))
                return None
            with self._lock:
                if info.mid in self._early:
                    self._early.discard(info.mid)  # acked before we got here
                else:
                    self._outstanding.add(info.mid)
            return info.mid

    def set_will(self, will: WillSource) -> None:
        """Replace the last will (an envelope, or a function sealing one) from the next
        (re)connect on. The broker keeps the one sent with the current connection."""
        if isinstance(will, SealedEnvelope):
            self._check_will(will)
        self._will = will
        if self._client is not None:
            self._refresh_will(self._client)

    def _refresh_will(self, client: mqtt.Client) -> None:
        """Seal (if a function was given) and register the will for the next CONNECT. Runs in
        start() and on paho's thread right before each reconnection attempt."""
        source = self._will
        if source is None:
            return
        if isinstance(source, SealedEnvelope):
            will = source
        else:
            try:
                will = source()
                self._check_will(will)
            except Exception:
                logger.exception("mqtt: sealing the last will failed; keeping the previous one")
                return
        self._apply_will(client, will)

    def _check_will(self, will: SealedEnvelope) -> None:
        if not isinstance(will, SealedEnvelope):
            raise UnredactedDataError("the last will must be a SealedEnvelope")
        if will.topic != status_topic(self._config.device_id):
            raise ValueError(f"the last will goes to {status_topic(self._config.device_id)!r}")

    @staticmethod
    def _apply_will(client: mqtt.Client, will: SealedEnvelope) -> None:
        client.will_set(will.topic, will.data, qos=QOS, retain=True)

    # --- paho callbacks (network thread): record, then hand over to the dispatcher ---------------

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.warning(
                "mqtt: broker %s:%s refused the connection: %s",
                self._config.host,
                self._config.port,
                reason_code.getName(),
            )
            cast(Client, client).last_error = ConnectionRefusedError(
                f"CONNACK {reason_code.value:#04x} {reason_code.getName()}"
            )
            return
        self._failures = 0
        topics = []
        if self._on_command is not None:
            topics.append((command_topic(self._config.device_id), QOS))
        if self._on_receipt is not None:
            topics.append((receipt_topic(self._config.device_id), QOS))
        if topics:
            client.subscribe(topics)
        self._connected.set()
        logger.info(
            "mqtt: connected to %s:%s (session present: %s)",
            self._config.host,
            self._config.port,
            flags.session_present,
        )
        self._emit(ConnectionEvent(ConnectionState.CONNECTED, "connected"))

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if isinstance(cast(Client, client).last_error, ssl.SSLError):
            self._refusals += 1  # a TLS handshake failed: a certificate was refused
        reason = describe(cast(Client, client).last_error)
        delay = self._schedule_retry(client)
        logger.warning(
            "mqtt: connect to %s:%s failed (%s); retry in %.1fs",
            self._config.host,
            self._config.port,
            reason,
            delay,
        )
        self._emit(ConnectionEvent(ConnectionState.CONNECT_FAILED, reason, delay))

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        if self._stopping:
            return
        delay = self._schedule_retry(client)
        if was_connected:
            reason = f"connection lost: {reason_code.getName()}"
            logger.warning("mqtt: %s; reconnect in %.1fs", reason, delay)
            self._emit(ConnectionEvent(ConnectionState.DISCONNECTED, reason, delay))
        else:  # TLS/CONNACK refusal: the socket opened, then closed before a session existed
            self._refusals += 1
            reason = describe_refusal(cast(Client, client).last_error)
            cast(Client, client).last_error = None
            logger.warning(
                "mqtt: connect to %s:%s failed (%s); retry in %.1fs",
                self._config.host,
                self._config.port,
                reason,
                delay,
            )
            self._emit(ConnectionEvent(ConnectionState.CONNECT_FAILED, reason, delay))

    def _handle_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            if mid in self._outstanding:
                self._outstanding.discard(mid)
            else:
                self._early.add(mid)  # publish() has not recorded it yet
        code = reason_code.value
        unheard = code == NO_MATCHING_SUBSCRIBERS and self._config.require_subscriber
        if reason_code.is_failure or unheard:
            if unheard:
                logger.info("mqtt: mid %s reached no subscriber; kept for a retry", mid)
            else:
                name = reason_code.getName()
                logger.error("mqtt: broker rejected mid %s: %#04x %s", mid, code, name)
            on_rejected = self._on_rejected
            if on_rejected is not None:
                self._submit(lambda: on_rejected(mid, code))
        else:
            self._submit(lambda: self._on_acked(mid))

    def _handle_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            logger.error(
                "mqtt: command/receipt subscription refused: %s (the broker's ACL?)",
                refused[0].getName(),
            )
        else:
            self._subscribed.set()

    def _handle_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        topic, payload = message.topic, bytes(message.payload)
        handler = self._on_receipt if topic.endswith("/" + KIND_RECEIPT) else self._on_command
        if handler is None:
            return

        def deliver() -> None:
            handler(topic, payload)

        self._submit(deliver)

    # --- backoff and dispatch -------------------------------------------------------------------

    def _next_delay(self) -> float:
        cfg = self._config
        ceiling = min(cfg.reconnect_max_s, cfg.reconnect_min_s * 2.0 ** min(self._failures, 30))
        return self._rng.uniform(ceiling / 2, ceiling)

    def _next_delay_int(self) -> int:
        # paho annotates the delay as int but computes and sleeps in float seconds
        return cast(int, self._next_delay())

    def _schedule_retry(self, client: mqtt.Client) -> float:
        """Called by paho right before it waits and reconnects: set the jittered delay and
        the will for the next CONNECT."""
        delay = self._next_delay()
        self._failures += 1
        client.reconnect_delay_set(cast(int, delay), cast(int, delay))
        self._refresh_will(client)
        return delay

    def _emit(self, event: ConnectionEvent) -> None:
        on_state = self._on_state
        if on_state is not None:
            self._submit(lambda: on_state(event))

    def _submit(self, call: Callable[[], None]) -> None:
        self._dispatcher.submit(call)
