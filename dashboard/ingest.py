"""Ingest: what units publish, verified and decrypted by the listener, into the store.

It reuses :mod:`dashboard.listener` (one MQTT v5 client, one verify/decrypt path):
:class:`CountingOpener` is the listener's :class:`~dashboard.listener.Opener` that also tells the
store *why* a message was refused, per claimed device (the ``<device>`` of its topic). What opens
goes to :meth:`Store.add_event`, which de-duplicates on (device, boot, seq) in the same
transaction that stores it; a message already stored (a redelivery after a restart) is counted as
``duplicate``. Nothing that failed to open is ever stored as an event.

Reasons counted in the store's ``rejections`` table:

=================  ==============================================================
``malformed``       not a COSE envelope we can parse, bad topic
``unknown_device``  signed with a key id the backend does not trust (yet)
``bad_signature``   signature does not verify with that device's key (forged)
``binding``         topic / device / seq binding does not match (cross-device)
``decrypt``         not encrypted to this backend, or tampered ciphertext
``expired``         past its expiry
``replayed``        seq already seen by this process (a replay, or a QoS 1 redelivery)
``duplicate``       (device, boot, seq) already stored (redelivery across restarts)
``internal``        a bug in the dashboard (logged with its traceback)
=================  ==============================================================
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from contract.envelope.keys import Identity, PeerKeys
from contract.errors import (
    BadSignatureError,
    BindingMismatchError,
    DecryptError,
    ExpiredError,
    MalformedEnvelopeError,
    ReplayError,
    UnknownKeyError,
)
from contract.topics import topic_device
from dashboard.listener import Listener, ListenerConfig, Opener, Received
from dashboard.store import Store

logger = logging.getLogger(__name__)

REASONS: Final[dict[str, str]] = {
    MalformedEnvelopeError.__name__: "malformed",
    UnknownKeyError.__name__: "unknown_device",
    BadSignatureError.__name__: "bad_signature",
    BindingMismatchError.__name__: "binding",
    DecryptError.__name__: "decrypt",
    ExpiredError.__name__: "expired",
    ReplayError.__name__: "replayed",
}
UNPARSEABLE: Final = "(bad topic)"


def claimed_device(topic: str) -> str:
    """The device a topic names, or :data:`UNPARSEABLE` (bounded: never an unbounded key)."""
    try:
        return topic_device(topic)
    except ValueError:
        return UNPARSEABLE


class StoreDedupe:
    """The listener's de-duplication seam, left open: the store de-duplicates on
    (device, boot, seq) atomically with the insert (:meth:`Store.add_event`), which the
    listener's (device, seq) key cannot express."""

    def first_time(self, device: str, seq: int) -> bool:
        return True

    def close(self) -> None:
        pass


class CountingOpener(Opener):
    """An :class:`Opener` that reports each refusal, with its reason, to the store."""

    def __init__(self, identity: Identity, devices: PeerKeys, store: Store) -> None:
        super().__init__(identity, devices, StoreDedupe())
        self._store = store
        self._count_lock = threading.Lock()

    def open(self, topic: str, payload: bytes) -> Received | None:
        with self._count_lock:
            duplicates = self.stats.duplicates
            bad = Counter(self.stats.bad)
            received = super().open(topic, payload)
            if received is not None:
                return received
            if self.stats.duplicates > duplicates:
                reason = "replayed"
            else:
                grown = [k for k, v in self.stats.bad.items() if v > bad.get(k, 0)]
                reason = REASONS.get(grown[0], "malformed") if grown else "malformed"
        self._store.add_rejection(claimed_device(topic), reason)
        return None


@dataclass
class IngestStats:
    stored: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0


class Ingest:
    """Listener + store: ``start()`` subscribes, every verified first-time message is stored."""

    def __init__(
        self, config: ListenerConfig, identity: Identity, devices: PeerKeys, store: Store
    ) -> None:
        self._store = store
        self.opener = CountingOpener(identity, devices, store)
        self.listener = Listener(config, self.opener, self._on_received)
        self.stats = IngestStats()

    def _on_received(self, received: Received) -> None:
        if self._store.add_event(received.device, received.seq, received.topic, received.message):
            self.stats.stored[received.type] += 1
        else:
            self.stats.duplicates += 1
            self._store.add_rejection(received.device, "duplicate")

    def start(self) -> None:
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()

    def __enter__(self) -> Ingest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
