"""What a user of the unit's MQTT transport sees: :class:`TransportConfig`, the connection
events (:class:`ConnectionState`, :class:`ConnectionEvent`) and the callback signatures. The
behaviour behind them is documented in :mod:`agent.transport.session`."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract.envelope import SealedEnvelope


@dataclass(frozen=True)
class TransportConfig:
    """How the unit reaches the broker. Filled from the provisioning bundle and agent config."""

    #: this unit's id: MQTT client id, certificate CN and topic level
    device_id: str
    #: broker host name or IP; must be in the broker certificate's subjectAltName
    host: str
    #: CA certificate pinned at provisioning; the only trust anchor (system CAs are not used)
    ca_file: Path
    #: this unit's client certificate (CN = device_id) and its private key
    cert_file: Path
    key_file: Path
    #: broker port (MQTT over TLS)
    port: int = 8883
    #: MQTT keepalive in seconds; a dead link is noticed after about 1.5 times this
    keepalive_s: int = 30
    #: first reconnect delay and cap, in seconds (each attempt doubles, with jitter)
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    #: how long the broker keeps this unit's session (subscription, queued commands) offline
    session_expiry_s: int = 24 * 3600
    #: publishes waiting for PUBACK before publish() returns None (backpressure)
    max_outstanding: int = 100
    #: a publish acknowledged with 0x10 "no matching subscribers" reached nobody: report it
    #: through on_rejected so the outbox keeps it and retries (mosquitto forgets shared
    #: subscriptions when it restarts, so without this events published meanwhile are lost)
    require_subscriber: bool = False


class ConnectionState(enum.Enum):
    CONNECTED = "connected"
    #: an established session ended (broker gone, network lost, keepalive timeout)
    DISCONNECTED = "disconnected"
    #: an attempt failed: TCP refused, TLS verification failed, CONNACK refused
    CONNECT_FAILED = "connect_failed"
    #: stop() finished; no further events
    STOPPED = "stopped"


@dataclass(frozen=True)
class ConnectionEvent:
    state: ConnectionState
    #: human-readable cause, e.g. "TLS: certificate verify failed: unable to get local issuer"
    reason: str = ""
    #: seconds until the next attempt, for DISCONNECTED / CONNECT_FAILED
    retry_in_s: float | None = None


AckCallback = Callable[[int], None]
RejectCallback = Callable[[int, int], None]
StateCallback = Callable[[ConnectionEvent], None]
CommandCallback = Callable[[str, bytes], object]
#: a sealed "offline" status, or a function that seals one (called before each connection)
WillSource = SealedEnvelope | Callable[[], SealedEnvelope]
