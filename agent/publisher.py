"""Moves sealed envelopes from the durable outbox to the MQTT transport, oldest first.

One thread (:meth:`Publisher.run`) publishes; the transport's callbacks (its dispatcher
thread) acknowledge. The contract is the one sketched in :class:`agent.outbox.Outbox`:

- a row is marked in flight with its MQTT message id under ``_lock``, which the PUBACK
  callback takes too, so an early PUBACK cannot miss its row;
- a row is deleted only in :meth:`on_acked` (PUBACK with a success code);
- a PUBACK with a failure code (:meth:`on_rejected`) releases the row, counts the code, and
  pauses publishing for ``reject_pause_s`` (a row the broker keeps refusing must not spin);
- when the transport does not take a message (disconnected, ``max_outstanding`` reached) the
  publisher waits for the next ack or connection event: that is the backpressure;
- after paho's own reconnect paho retransmits what is outstanding (same mids); only when a
  session ends for good (``STOPPED``) are the in-flight rows requeued (:meth:`on_state`).

Everything the publisher hands on is a :class:`~agent.envelope.SealedEnvelope` restored from
the outbox (signature checked); the transport refuses anything else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from agent.envelope.seal import SealedEnvelope
from agent.outbox import Outbox
from agent.stats import PipelineStats
from agent.transport import ConnectionEvent, ConnectionState

logger = logging.getLogger(__name__)


class Sender(Protocol):
    """The part of :class:`agent.transport.Transport` the publisher uses."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: SealedEnvelope, *, retain: bool = False
    ) -> int | None: ...


def is_retained(topic: str) -> bool:
    """Status messages are retained (docs/_protocol_mqtt.md); everything else is not."""
    return topic.endswith("/status")


class Publisher:
    """Outbox -> transport. Call :meth:`bind` with the transport before :meth:`run`."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        stats: PipelineStats | None = None,
        batch: int = 16,
        idle_wait_s: float = 1.0,
        reject_pause_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_delivered: Callable[[int, float], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._on_delivered = on_delivered
        self._stats = stats
        self._batch = batch
        self._idle_wait_s = idle_wait_s
        self._reject_pause_s = reject_pause_s
        self._clock = clock
        self._sender: Sender | None = None
        self._lock = threading.Lock()
        self._mids: dict[int, tuple[int, float, int]] = {}  # mid -> (row id, enqueued at, seq)
        self._wake = threading.Event()
        self._paused_until = 0.0
        self.published = 0
        self.acked = 0
        self.rejected: Counter[int] = Counter()

    def bind(self, sender: Sender) -> None:
        self._sender = sender

    def wake(self) -> None:
        """Something changed (new row, ack, connection): look at the outbox now."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._mids)

    # --- transport callbacks (dispatcher thread) ----------------------------------------------

    def on_acked(self, mid: int) -> None:
        with self._lock:
            entry = self._mids.pop(mid, None)
            if entry is None:
                logger.debug("PUBACK for unknown mid %d (after a requeue)", mid)
                return
            row, created, seq = entry
            self._outbox.ack(row)
            self.acked += 1
        now = self._clock()
        if self._stats is not None:
            self._stats.time("publish", max(0.0, now - created))
        if self._on_delivered is not None:
            self._on_delivered(seq, now)
        self._wake.set()

    def on_rejected(self, mid: int, reason_code: int) -> None:
        with self._lock:
            entry = self._mids.pop(mid, None)
            if entry is not None:
                self._outbox.release(entry[0])
            self.rejected[reason_code] += 1
        if self._stats is not None:
            self._stats.drop(f"publish_rejected.{reason_code:#04x}")
            self._paused_until = time.monotonic() + self._reject_pause_s
        logger.warning("broker refused a message (reason %#04x); kept for retry", reason_code)
        self._wake.set()

    def on_state(self, event: ConnectionEvent) -> None:
        if event.state is ConnectionState.STOPPED:
            self.requeue()
        self._wake.set()

    def requeue(self) -> None:
        """The session's message ids are void: everything in flight becomes eligible again."""
        with self._lock:
            self._mids.clear()
            n = self._outbox.requeue_in_flight()
        if n:
            logger.info("requeued %d envelope(s) that were in flight", n)

    # --- the publishing thread ------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set."""
        while not stop.is_set():
            self._wake.wait(self._idle_wait_s)
            self._wake.clear()
            if stop.is_set():
                break
            try:
                while self.pump() and not stop.is_set():
                    pass
            except Exception:  # an outbox error must not end delivery for good
                logger.exception("publisher: moving envelopes to the transport failed")
                stop.wait(1.0)

    def pump(self) -> bool:
        """Publish one batch; True if the whole batch was taken (there may be more)."""
        sender = self._sender
        if sender is None or not sender.connected or time.monotonic() < self._paused_until:
            return False
        items = self._outbox.next_batch(self._batch)
        if not items:
            return False
        for item in items:
            with self._lock:
                mid = sender.publish(item.topic, item.envelope, retain=is_retained(item.topic))
                if mid is None:
                    return False  # not taken now: an ack or a reconnect wakes us
                self._outbox.mark_in_flight(item.id, mid)
                self._mids[mid] = (item.id, item.created, item.seq)
                self.published += 1
        return len(items) == self._batch
