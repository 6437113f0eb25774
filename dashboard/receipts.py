"""The backend side of receipts (docs/PROTOCOL.md, "Receipts"): tell each unit which of its
envelopes are verified and durably stored, so that it may forget them.

Whoever stores messages calls :meth:`Receipter.stored` only after the store is durable (the
listener after its de-duplication record is committed, the dashboard's ingest after its batch
commit), and also for authentic duplicates: a unit republishes an envelope whose receipt it
never got, and the backend must answer that it has it. A background thread wakes every
``interval_s`` and seals one receipt per unit with pending seqs (the ranges since the last one, at
most ``MAX_RANGES`` per receipt), but a unit gets at most one receipt per ``min_gap_s``: its seqs
wait for the next round then. It publishes them at QoS 1 on the unit's receipt topic. A lost
receipt costs a republish and a de-duplicated redelivery, never an event.

Sealing a receipt costs about what opening an event does (a signature, an X25519 agreement), so
while a backlog drains (hundreds of units each publishing many envelopes within a second) the
gap keeps receipts to one per unit every 2 s instead of one per unit per round (in the ingest
benchmark, 500 units x 21 messages: about 1,950 receipts instead of 3,450); a unit that publishes
now and then still has its receipt within ``interval_s``. Both are below the units' receipt
timeout (5 s at the least, 60 s by default).
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
DEFAULT_MIN_GAP_S: Final = 2.0
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
        min_gap_s: float = DEFAULT_MIN_GAP_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._devices = devices
        self._publish = publish
        self._interval_s = interval_s
        self._min_gap_s = min_gap_s
        self._monotonic = monotonic
        self._last_sent: dict[str, float] = {}  # monotonic() of each unit's last receipt
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
                self.round()
            except Exception:  # never let one bad round end receipts for good
                logger.exception("receipts: a round failed")

    def round(self) -> int:
        """What the thread does every ``interval_s``: seal and publish the pending receipts of
        the units whose last one is at least ``min_gap_s`` old; how many were published."""
        return self._send(self._take(due_only=True))

    def flush(self) -> int:
        """Seal and publish every pending receipt now (whatever the gap); how many receipts
        were published."""
        return self._send(self._take(due_only=False))

    def _take(self, *, due_only: bool) -> dict[str, set[int]]:
        """The pending seqs of the units whose receipt is due (all units: ``due_only=False``)."""
        with self._lock:
            if not due_only:
                pending, self._pending = self._pending, {}
                return pending
            since = self._monotonic() - self._min_gap_s
            last = self._last_sent
            due = [d for d in self._pending if last.get(d, since) <= since]
            return {d: self._pending.pop(d) for d in due}

    def _send(self, pending: dict[str, set[int]]) -> int:
        if not pending:
            return 0
        devices = self._devices()
        sent = 0
        expires = int(self._clock()) + RECEIPT_LIFETIME_S
        now = self._monotonic()
        for device, seqs in pending.items():
            try:
                public = devices.require(device)
            except EnvelopeError:
                self.stats.unknown_device += 1  # revoked meanwhile: nothing to tell it
                continue
            self._last_sent[device] = now
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
