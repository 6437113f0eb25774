"""The backend side of receipts (docs/PROTOCOL.md, "Receipts"): tell each unit which of its
envelopes are verified and durably stored, so that it may forget them.

Whoever stores messages calls :meth:`Receipter.stored` only after the store is durable (the
listener after its de-duplication record is committed, the dashboard's ingest after its batch
commit), and also for authentic duplicates: a unit republishes an envelope whose receipt it
never got, and the backend must answer that it has it. A background thread seals one receipt per
unit every ``interval_s`` (the ranges since the last one, at most ``MAX_RANGES`` per receipt)
and publishes it at QoS 1 on the unit's receipt topic. A lost receipt costs a republish and a
de-duplicated redelivery, never an event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from contract.envelope.keys import Identity, PeerKeys
from contract.envelope.seal import SealedEnvelope
from contract.errors import EnvelopeError
from contract.receipts import (
    MAX_RANGES,
    RECEIPT_LIFETIME_S,
    ReceiptCounter,
    receipt_ranges,
    seal_receipt,
)

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S: Final = 0.2
MAX_PENDING_PER_DEVICE: Final = 200_000
"""Seqs waiting for the next receipt per unit; beyond it the oldest wait for a republish."""

Publish = Callable[[SealedEnvelope], bool]
"""Hands a sealed receipt to MQTT (QoS 1); False when it could not be queued."""


@dataclass
class ReceiptStats:
    sent: int = 0
    seqs: int = 0
    failed: int = 0
    unknown_device: int = 0


class Receipter:
    """Collects stored (device, seq) pairs and sends each unit its receipts."""

    def __init__(
        self,
        backend: Identity,
        devices: Callable[[], PeerKeys],
        publish: Publish,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._devices = devices
        self._publish = publish
        self._interval_s = interval_s
        self._clock = clock
        self._counter = ReceiptCounter(clock)
        self._pending: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = ReceiptStats()

    def stored(self, device: str, seq: int) -> None:
        """``device``'s envelope ``seq`` is durably stored (or was already): receipt it."""
        with self._lock:
            seqs = self._pending.setdefault(device, set())
            if len(seqs) < MAX_PENDING_PER_DEVICE:
                seqs.add(seq)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="receipts", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Send what is pending, then stop the thread."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)
        self.flush()

    def __enter__(self) -> Receipter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # never let one bad round end receipts for good
                logger.exception("receipts: a round failed")

    def flush(self) -> int:
        """Seal and publish the pending receipts now; how many receipts were published."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        devices = self._devices()
        sent = 0
        expires = int(self._clock()) + RECEIPT_LIFETIME_S
        for device, seqs in pending.items():
            try:
                public = devices.require(device)
            except EnvelopeError:
                self.stats.unknown_device += 1  # revoked meanwhile: nothing to tell it
                continue
            ranges = receipt_ranges(seqs)
            for start in range(0, len(ranges), MAX_RANGES):
                chunk = ranges[start : start + MAX_RANGES]
                envelope = seal_receipt(
                    chunk,
                    backend=self._backend,
                    device=public,
                    seq=self._counter.next(),
                    expires_at=expires,
                )
                if self._publish(envelope):
                    sent += 1
                    self.stats.sent += 1
                    self.stats.seqs += sum(hi - lo + 1 for lo, hi in chunk)
                else:  # the unit republishes after its timeout; we receipt again then
                    self.stats.failed += 1
        return sent
