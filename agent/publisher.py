"""Sealed envelopes into the durable outbox (:class:`Emitter`) and from it to the MQTT transport,
oldest first (:class:`Publisher`).

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

Everything the publisher hands on is a :class:`~contract.envelope.SealedEnvelope` restored from
the outbox (signature checked); the transport refuses anything else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from agent.commands import ack_recipient, seal_ack
from agent.events import Event, EventBuilder, seal_event
from agent.outbox import Outbox
from agent.stats import PipelineStats
from agent.transport import ConnectionEvent, ConnectionState
from agent.unitstate import UnitState
from contract.commands import Ack
from contract.envelope.seal import SealedEnvelope
from contract.errors import EventError, OutboxError, OutboxFullError

logger = logging.getLogger(__name__)


class Sender(Protocol):
    """The part of :class:`agent.transport.Transport` the publisher uses."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self, topic: str, payload: SealedEnvelope, *, retain: bool = False
    ) -> int | None: ...


def is_retained(topic: str) -> bool:
    """Status messages are retained (docs/PROTOCOL.md, "MQTT"); everything else is not."""
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
        self._failing_since: float | None = None  # monotonic time of the first failure in a row
        self._last_failure_log = 0.0
        self.failures = 0
        """Publishing rounds that raised (a database error, say), in total."""
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

    def failing_for(self) -> float:
        """Seconds that every publishing round has failed (0.0 while the last one worked).

        The daemon's watchdog probe: a publisher that keeps raising withholds the systemd
        watchdog, so a wedged unit is restarted (or reports itself in ``STATUS=``).
        """
        since = self._failing_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set. A failing round is retried every second; the first
        failure is logged with its traceback, repeats at most once a minute."""
        while not stop.is_set():
            self._wake.wait(self._idle_wait_s)
            self._wake.clear()
            if stop.is_set():
                break
            try:
                while True:
                    more = self.pump()
                    # Recovered as soon as one batch goes through, not when the backlog is
                    # drained: a long drain after an outage must not read as failing (and
                    # withhold the watchdog, which would restart the unit mid-drain).
                    self._worked()
                    if not more or stop.is_set():
                        break
            except Exception as exc:  # an outbox error must not end delivery for good
                self._failed(exc)
                stop.wait(1.0)
                self._wake.set()  # retry soon, not only at the next enqueue

    def _worked(self) -> None:
        if self._failing_since is not None:
            logger.info(
                "publisher: publishing works again after %.0f s of failures", self.failing_for()
            )
        self._failing_since = None

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        self.failures += 1
        if self._failing_since is None:
            self._failing_since = now
            self._last_failure_log = now
            logger.exception("publisher: moving envelopes to the transport failed")
        elif now - self._last_failure_log >= 60.0:
            self._last_failure_log = now
            logger.error(
                "publisher: still failing for %.0f s (%d failures in total): %s",
                now - self._failing_since,
                self.failures,
                exc,
            )

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


class Emitter:
    """Builds, seals and enqueues; the one way an event leaves the daemon's threads."""

    def __init__(
        self,
        unit: UnitState,
        builder: EventBuilder,
        outbox: Outbox,
        wake: Callable[[], None],
        stats: PipelineStats,
        *,
        on_enqueued: Callable[[str, int], None] | None = None,
    ) -> None:
        """``on_enqueued(type, seq)`` is called after every durable enqueue, under the
        emitter's lock (so in seq order); it must not emit."""
        self.unit = unit
        self.builder = builder
        self._outbox = outbox
        self.wake = wake
        """Called after every enqueue (the publisher's wake-up)."""
        self._stats = stats
        self._on_enqueued = on_enqueued
        self._lock = threading.Lock()
        self.by_type: Counter[str] = Counter()
        self.enqueued: list[tuple[str, int]] = []
        """(topic, seq) of every enqueued envelope, in order (tests and the demo summary)."""
        self._captured: OrderedDict[int, float] = OrderedDict()
        self._unreceipted: OrderedDict[int, float] = OrderedDict()
        self.store_failing = False
        """The last enqueue failed with a database error: the watchdog withholds pings. Not set
        when the outbox refused for space (counted in health; a restart would not help)."""

    def seal(self, event: Event) -> SealedEnvelope:
        return seal_event(event, sender=self.unit.identity, recipient=self.unit.backend)

    def emit(self, make: Callable[[EventBuilder], Event], captured_at: float | None = None) -> None:
        """Build an event with the current builder, seal it, enqueue it durably."""
        with self._lock:
            try:
                event = make(self.builder)
            except EventError as exc:
                self._stats.drop(f"event_failed.{type(exc).__name__}")
                logger.warning("event not built: %s", exc)
                return
            self._enqueue(self.seal(event), event.TYPE, captured_at)

    def emit_ack(self, ack: Ack) -> None:
        with self._lock:
            header = self.builder.header()
            recipient = ack_recipient(ack, self.unit.operators)  # the operator, not the backend
            envelope = seal_ack(ack, header, sender=self.unit.identity, recipient=recipient)
            self._enqueue(envelope, "cmd_ack", None)

    def _enqueue(self, envelope: SealedEnvelope, kind: str, captured_at: float | None) -> None:
        try:
            self._outbox.enqueue(envelope)
        except OutboxError as exc:  # counted by the outbox (rejected.*) and in health
            # Refused for space (a full disk with nothing left to evict, or too large): counted,
            # and a restart frees no disk, so the watchdog keeps going. Any other database
            # error withholds it: a restart may cure that.
            self.store_failing = not isinstance(exc, OutboxFullError)
            logger.error("%s event not stored: %s", kind, exc)
            return
        self.store_failing = False
        self.by_type[kind] += 1
        self.enqueued.append((envelope.topic, envelope.seq))
        if self._on_enqueued is not None:
            self._on_enqueued(kind, envelope.seq)
        if captured_at is not None:
            self._captured[envelope.seq] = captured_at
            while len(self._captured) > 4096:
                self._captured.popitem(last=False)
            self._unreceipted[envelope.seq] = captured_at
            while len(self._unreceipted) > 4096:
                self._unreceipted.popitem(last=False)
        self.wake()

    def receipted(self, ranges: Sequence[tuple[int, int]], at: float) -> None:
        """A receipt named ``ranges``: record capture -> receipt latency of frame-derived events."""
        with self._lock:
            done = [
                (seq, t) for seq, t in self._unreceipted.items()
                if any(lo <= seq <= hi for lo, hi in ranges)
            ]  # fmt: skip
            for seq, _ in done:
                del self._unreceipted[seq]
        for _, captured in done:
            self._stats.time("capture_to_receipt", max(0.0, at - captured))

    def delivered(self, seq: int, acked_at: float) -> None:
        """PUBACK of ``seq``: record capture -> PUBACK latency for frame-derived events."""
        with self._lock:
            captured = self._captured.pop(seq, None)
        if captured is not None:
            self._stats.time("capture_to_puback", max(0.0, acked_at - captured))
