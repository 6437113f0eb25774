"""The MQTT session of a unit: paho-mqtt 2.x, MQTT v5, QoS 1, mutual TLS with the pinned CA.

The package, by job:

- :mod:`agent.transport.session`: :class:`Transport`, one session for one device (connect,
  reconnect with backoff, publish with backpressure, acks, the last will, command and receipt
  subscriptions); its module docstring is the contract with the outbox and the callbacks;
- :mod:`agent.transport.interface`: :class:`TransportConfig`, the connection events and the
  callback signatures;
- :mod:`agent.transport.dispatch`: the thread that runs the callbacks one at a time;
- :mod:`agent.transport.client`: paho's client, repaired to remember why a connection attempt
  failed and to close the socket of a failed TLS handshake.
"""

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
from agent.transport.session import NO_MATCHING_SUBSCRIBERS, Transport

__all__ = [
    "NO_MATCHING_SUBSCRIBERS",
    "AckCallback",
    "CommandCallback",
    "ConnectionEvent",
    "ConnectionState",
    "RejectCallback",
    "StateCallback",
    "Transport",
    "TransportConfig",
    "WillSource",
]
