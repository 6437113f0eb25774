"""Ingest: what units publish, verified, decrypted and stored; acknowledged only once stored.

One MQTT v5 :class:`~dashboard.listener.Subscriber` with manual acknowledgement hands every
delivery to one worker thread. The worker takes a batch (up to ``batch_size`` messages, or what
came within ``batch_wait_s`` of the first), opens each envelope
(:func:`~contract.envelope.seal.open_envelope`: the station's device keys as trusted senders, the
backend's X25519 identity as recipient), and writes the whole batch in **one** SQLite transaction:
the events (de-duplicated on (device, boot, seq)), the rejection counts, envelopes held for
unknown devices. Only after the COMMIT does it send the PUBACKs. A failed write (disk full, a
locked database) is retried with backoff and nothing is acknowledged meanwhile; the broker sends no
more than ``receive_maximum`` unacknowledged messages, so memory stays bounded, and if the process
stops first the broker redelivers them to the next session (persistent session, ``client_id``).

The in-process replay window (:class:`~contract.envelope.replay.ReplayGuard`) records a seq only
after its event is committed, so a message that failed to store is not refused as a replay when
it comes back.

Messages that do not open are never stored as events; they are counted per claimed device (the
``<device>`` of the topic) in the store's ``rejections``:

=================  ==============================================================
``malformed``       not a COSE envelope we can parse, bad topic
``unknown_device``  (not counted on arrival: such envelopes are *held*, see below)
``bad_signature``   signature does not verify with that device's key (forged)
``binding``         topic / device / seq binding does not match (cross-device)
``decrypt``         not encrypted to this backend, or tampered ciphertext
``expired``         past its expiry
``replayed``        seq already accepted by this process (a replay, or a QoS 1 redelivery)
``duplicate``       (device, boot, seq) already stored (redelivery across restarts)
``revoked``         signed by a device removed from the inventory
``held_evicted``    held for an unknown device, pushed out by the limits (dashboard.held)
=================  ==============================================================

**Held envelopes.** An envelope signed by a key id the backend does not know is kept sealed in the
``held`` table (:mod:`dashboard.held`). The device list is re-read live
(:class:`~dashboard.devices.DevicesFile` on the station's ``devices.cbor``, or
:meth:`Ingest.set_devices`); after each change the worker retries the held envelopes whose key
is now known (stored, or counted e.g. ``bad_signature`` if forged) or revoked (``revoked``), and
removes them from ``held``. Callbacks registered with :meth:`Ingest.on_inventory_change` run after
each change.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from contract.envelope.keys import Identity, PeerKeys
from contract.envelope.replay import ReplayCheck, StoreDecides, StreamKey
from contract.envelope.seal import open_envelope
from contract.envelope.wire import parse_sign1
from contract.errors import (
    BadSignatureError,
    BindingMismatchError,
    DecryptError,
    EnvelopeError,
    ExpiredError,
    MalformedEnvelopeError,
    ReplayError,
    UnknownKeyError,
)
from contract.topics import topic_device
from dashboard import held
from dashboard.devices import DevicesFile, InventoryChange, diff
from dashboard.listener import Delivery, ListenerConfig, Subscriber
from dashboard.receipts import Receipter
from dashboard.store import NewEvent, Store, count_rejections, insert_events

logger = logging.getLogger(__name__)

REASONS: Final[dict[type[EnvelopeError], str]] = {
    MalformedEnvelopeError: "malformed",
    UnknownKeyError: "unknown_device",
    BadSignatureError: "bad_signature",
    BindingMismatchError: "binding",
    DecryptError: "decrypt",
    ExpiredError: "expired",
    ReplayError: "replayed",
}
UNPARSEABLE: Final = "(bad topic)"


def claimed_device(topic: str) -> str:
    """The device a topic names, or :data:`UNPARSEABLE` (bounded: never an unbounded key)."""
    try:
        return topic_device(topic)
    except ValueError:
        return UNPARSEABLE


def reason_for(exc: EnvelopeError) -> str:
    for kind, reason in REASONS.items():
        if isinstance(exc, kind):
            return reason
    return "malformed"


@dataclass(frozen=True)
class IngestSettings:
    batch_size: int = 500
    """Most messages written (and then acknowledged) per SQLite transaction."""
    batch_wait_s: float = 0.05
    """How long a batch waits for more messages after its first one."""
    open_threads: int = 2
    """Threads that verify and decrypt a batch (libsodium releases the GIL: about twice the
    throughput of one thread on two cores)."""
    receive_maximum: int = 2000
    """Unacknowledged messages the broker may have in flight to us (covers a few batches)."""
    held: held.HeldLimits = field(default_factory=held.HeldLimits)
    devices_poll_s: float = 1.0
    """How often the device list file is checked for changes."""
    retry_min_s: float = 0.1
    retry_max_s: float = 5.0
    """Backoff between attempts of a failed store write."""
    receipts: bool = True
    """Send each unit signed receipts for what is stored (docs/PROTOCOL.md, "Receipts"); off
    only for a read-only observer beside the real backend."""


@dataclass
class IngestStats:
    stored: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    held: int = 0
    held_opened: int = 0
    held_evicted: int = 0
    acked: int = 0
    batches: int = 0
    store_failures: int = 0
    inventory_changes: int = 0
    open_s: float = 0.0
    """Time the worker spent verifying and decrypting (wall clock, all opener threads)."""
    write_s: float = 0.0
    """Time the worker spent in store transactions, failed attempts included."""
    first_at: float | None = None
    last_stored_at: float | None = None


class _DeferredReplay:
    """A ReplayCheck that refuses what the guard refuses but records a seq only on
    :meth:`commit` (after the event is stored)."""

    def __init__(self, guard: ReplayCheck) -> None:
        self._guard = guard
        self._pending: dict[tuple[StreamKey, int], int | None] = {}
        self._lock = threading.Lock()  # the opener threads of one batch

    def check(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None:
        if (stream, seq) in self._pending:
            raise ReplayError(f"seq {seq} already in this batch")
        self._guard.check(stream, seq, expires_at)

    def accept(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None:
        with self._lock:
            if (stream, seq) in self._pending:
                raise ReplayError(f"seq {seq} already in this batch")
            self._pending[(stream, seq)] = expires_at

    def commit(self) -> None:
        for (stream, seq), exp in self._pending.items():
            # (a seq may fall out of the window behind a newer seq of the same batch)
            with contextlib.suppress(ReplayError):
                self._guard.accept(stream, seq, exp)
        self._pending.clear()

    def discard(self) -> None:
        self._pending.clear()


class _NoReplay:
    """Held envelopes are older than what the window may have moved past: the store's
    (device, boot, seq) uniqueness is their only de-duplication."""

    def check(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None:
        pass

    def accept(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None:
        pass


@dataclass
class _Batch:
    deliveries: list[Delivery] = field(default_factory=list)
    events: list[NewEvent] = field(default_factory=list)
    rejections: Counter[tuple[str, str]] = field(default_factory=Counter)
    hold: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    released: list[int] = field(default_factory=list)


_RETRY_HELD: Final = object()
_STOP: Final = object()


class Ingest:
    """Subscriber + worker + store. ``start()`` subscribes; ``stop()`` finishes the batch in
    hand and disconnects (what is not acknowledged by then is redelivered next time)."""

    def __init__(
        self,
        config: ListenerConfig,
        identity: Identity,
        devices: PeerKeys,
        store: Store,
        *,
        devices_file: Path | None = None,
        settings: IngestSettings | None = None,
    ) -> None:
        self.settings = settings or IngestSettings()
        if config.receive_maximum is None:
            config = replace(config, receive_maximum=self.settings.receive_maximum)
        self._identity = identity
        self._devices = devices
        self._revoked: set[str] = set()
        self._store = store
        # the store's (device, boot, seq) uniqueness de-duplicates exactly; a window would drop
        # a late republish that was never stored (docs/PROTOCOL.md, "Receipts")
        self._guard = _DeferredReplay(StoreDecides())
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()
        self._callbacks: list[Callable[[InventoryChange], None]] = []
        self._devices_lock = threading.Lock()
        self._watch = (
            DevicesFile(devices_file, self.set_devices, self.settings.devices_poll_s)
            if devices_file is not None
            else None
        )
        self.listener = Subscriber(config, self._queue.put, manual_ack=True)
        self.receipter = (
            Receipter(identity, lambda: self._devices, self.listener.publish_receipt)
            if self.settings.receipts
            else None
        )
        self.stats = IngestStats()

    # --- lifetime ---

    def start(self) -> None:
        self._stopping.clear()
        if self.settings.open_threads > 1:
            self._pool = ThreadPoolExecutor(self.settings.open_threads, "ingest-open")
        self._worker = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._worker.start()
        if self._watch is not None:
            self._watch.start()
        self._queue.put(_RETRY_HELD)  # what earlier runs held, if the list changed meanwhile
        self.listener.start()
        if self.receipter is not None:
            self.receipter.start()

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
        self._stopping.set()
        self._queue.put(_STOP)
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.join(timeout=30)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()
        if self.receipter is not None:
            self.receipter.stop()  # the last receipts go out while the client is connected
        self.listener.stop()

    def __enter__(self) -> Ingest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the device list ---

    @property
    def devices(self) -> PeerKeys:
        return self._devices

    def on_inventory_change(self, callback: Callable[[InventoryChange], None]) -> None:
        """``callback(change)`` after every change of the trusted devices (the caller's or the
        poller's thread)."""
        self._callbacks.append(callback)

    def set_devices(self, devices: PeerKeys) -> InventoryChange:
        """Trust ``devices`` from now on (devices no longer in it count as ``revoked``) and
        retry the held envelopes."""
        with self._devices_lock:
            change = diff(self._devices, devices)
            self._revoked = (self._revoked | change.removed) - set(devices)
            self._devices = devices
        self.stats.inventory_changes += 1
        logger.info(
            "devices: %d trusted (%d added, %d removed, %d re-keyed)",
            len(devices),
            len(change.added),
            len(change.removed),
            len(change.rekeyed),
        )
        self._queue.put(_RETRY_HELD)
        for callback in self._callbacks:
            callback(change)
        return change

    def reload_devices(self) -> bool:
        """Check the device list file now (as the poller does every ``devices_poll_s``); True
        if it changed and was applied."""
        return self._watch.poll() if self._watch is not None else False

    def retry_held(self) -> None:
        """Ask the worker to retry the held envelopes (as after an inventory change)."""
        self._queue.put(_RETRY_HELD)

    # --- the worker ---

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if item is _RETRY_HELD:
                self._retry_held()
                continue
            assert isinstance(item, Delivery)
            deliveries = [item]
            deadline = time.monotonic() + self.settings.batch_wait_s
            stop_after = False
            while len(deliveries) < self.settings.batch_size:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if isinstance(more, Delivery):
                    deliveries.append(more)
                elif more is _STOP:
                    stop_after = True
                    break
                else:
                    self._queue.put(more)  # a held retry after this batch
                    break
            try:
                self._live_batch(deliveries)
            except Exception:  # a bug: leave these unacknowledged (redelivered next session)
                logger.exception("ingest: a batch of %d messages failed", len(deliveries))
            if stop_after:
                return

    def _live_batch(self, deliveries: list[Delivery]) -> None:
        if self.stats.first_at is None:
            self.stats.first_at = time.monotonic()
        started = time.monotonic()
        pool, threads = self._pool, self.settings.open_threads
        if pool is not None and len(deliveries) >= 8 * threads:
            parts = list(pool.map(self._open_all, [deliveries[i::threads] for i in range(threads)]))
            batch = _Batch(deliveries=deliveries)
            for part in parts:
                batch.events += part.events
                batch.rejections.update(part.rejections)
                batch.hold += part.hold
        else:
            batch = self._open_all(deliveries)
        self.stats.open_s += time.monotonic() - started
        if not self._commit(batch):
            self._guard.discard()
            return
        self._guard.commit()
        for d in deliveries:
            self.listener.ack(d)
        self.stats.acked += len(deliveries)

    def _open_all(self, deliveries: list[Delivery]) -> _Batch:
        batch = _Batch(deliveries=deliveries)
        devices, revoked = self._devices, self._revoked
        for d in deliveries:
            self._open(d.topic, d.payload, devices, revoked, self._guard, batch, held_id=None)
        return batch

    def _open(
        self,
        topic: str,
        payload: bytes,
        devices: PeerKeys,
        revoked: set[str],
        guard: _DeferredReplay | _NoReplay,
        batch: _Batch,
        held_id: int | None,
    ) -> None:
        try:
            opened = open_envelope(
                payload,
                topic=topic,
                trusted_senders=devices,
                recipient=self._identity,
                replay_guard=guard,
            )
        except UnknownKeyError as exc:
            claimed = claimed_device(topic)
            kid = _signer(payload)
            if kid is None or kid in devices:  # encrypted to a key id we do not hold
                batch.rejections[(claimed, "decrypt" if kid else reason_for(exc))] += 1
            elif kid in revoked or claimed in revoked:
                batch.rejections[(claimed, "revoked")] += 1
            elif held_id is None:
                batch.hold.append((claimed, kid, topic, payload))
                return
            else:
                return  # still unknown: stays held
        except EnvelopeError as exc:
            batch.rejections[(claimed_device(topic), reason_for(exc))] += 1
        else:
            batch.events.append(NewEvent(opened.device, opened.seq, topic, opened.message))
        if held_id is not None:
            batch.released.append(held_id)

    def _commit(self, batch: _Batch) -> bool:
        """Write ``batch`` in one transaction, retrying until it succeeds; False if stopped."""
        delay = self.settings.retry_min_s
        while True:
            started = time.monotonic()
            try:
                self._write(batch)
                return True
            except Exception as exc:  # sqlite3.Error, OSError: disk full, locked, I/O
                self.stats.store_failures += 1
                logger.error(
                    "ingest: storing %d messages failed (%s); not acknowledged, retrying in %.1f s",
                    len(batch.deliveries) or len(batch.released),
                    exc,
                    delay,
                )
            finally:
                self.stats.write_s += time.monotonic() - started
            if self._stopping.wait(delay):
                return False
            delay = min(delay * 2, self.settings.retry_max_s)

    def _write(self, batch: _Batch) -> None:
        now = self._store.now()
        rejections = Counter(batch.rejections)
        with self._store.transaction() as conn:
            stored = insert_events(conn, batch.events, now)
            for event, ok in zip(batch.events, stored, strict=True):
                if not ok:
                    rejections[(event.device, "duplicate")] += 1
            evicted = held.hold(conn, batch.hold, now, self.settings.held) if batch.hold else {}
            for device, n in evicted.items():
                rejections[(device, held.EVICTED)] += n
            held.release(conn, batch.released)
            count_rejections(conn, rejections, now)
        self._account(batch, stored, rejections)
        self._store.notify_changed()
        receipter = self.receipter
        if receipter is not None:  # committed: stored now, or stored before (a duplicate)
            for event in batch.events:
                receipter.stored(event.device, event.seq)

    def _account(
        self, batch: _Batch, stored: Sequence[bool], rejections: Counter[tuple[str, str]]
    ) -> None:
        s = self.stats
        s.batches += 1
        for event, ok in zip(batch.events, stored, strict=True):
            if ok:
                s.stored[str(event.message.get("type", "?"))] += 1
        for (_, reason), n in rejections.items():
            s.rejected[reason] += n
        s.duplicates = s.rejected["duplicate"]
        s.held_evicted = s.rejected[held.EVICTED]
        s.held += len(batch.hold)
        if batch.deliveries == [] and batch.released:
            s.held_opened += sum(stored)
        if any(stored):
            s.last_stored_at = time.monotonic()

    def _retry_held(self) -> None:
        devices, revoked = self._devices, self._revoked
        after = 0
        while not self._stopping.is_set():
            try:
                rows = held.retryable(
                    self._store, lambda kid: kid in devices or kid in revoked, after
                )
            except Exception:
                logger.exception("ingest: reading the held envelopes failed")
                return
            if not rows:
                return
            batch = _Batch()
            for row in rows:
                self._open(row.topic, row.payload, devices, revoked, _NoReplay(), batch, row.id)
            if not self._commit(batch):
                return
            after = rows[-1].id


def _signer(payload: bytes) -> str | None:
    """The key id an envelope claims (unverified), or None if it does not parse."""
    try:
        return parse_sign1(payload).kid
    except EnvelopeError:
        return None
