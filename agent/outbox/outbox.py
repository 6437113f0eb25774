"""The outbox's queue: sealed envelopes in, oldest first out to the transport, deleted when the
broker (or the backend's receipt) has them. Each row is *queued*, *in flight* (published as an
MQTT message id), *published* (PUBACK seen, awaiting a receipt) until deleted. Storage, eviction
and the disk-full path are :mod:`agent.outbox.storage`; the file itself is
:mod:`agent.outbox.database`.

Only :class:`~contract.envelope.SealedEnvelope` instances may enter (anything else raises
:class:`~contract.errors.UnredactedDataError`). A row leaves only when the broker acknowledged it
(:meth:`Outbox.ack`, called from the transport's PUBACK callback) or when a bound evicts it; every
eviction and every refused envelope is counted in a table of the same database, in the same
transaction as the change it counts, so the totals survive restarts.

Rows come back out as :class:`OutboxItem` holding a :class:`~contract.envelope.SealedEnvelope`
rebuilt with :func:`~contract.envelope.restore_sealed`, which checks the device's signature: a row
damaged on disk, or signed by keys the device no longer has, is evicted (counted ``invalid``)
instead of being published.

Delivery is at least once. :meth:`Outbox.requeue_in_flight` makes everything that was published
but not acknowledged eligible again: it runs at open (a restart) and must be called whenever the
transport session is restarted (its outstanding message ids are void then); after paho's own
reconnect it is not needed, paho retransmits unacknowledged messages itself. A PUBACK with a
failure reason calls :meth:`Outbox.release` for that row. The receiver de-duplicates on
(device, seq).

Durability. The database is in WAL mode. ``enqueue`` commits with ``synchronous=FULL``: the WAL is
fsynced before ``enqueue`` returns, so an acknowledged enqueue survives power loss, not only a
process crash. (With ``NORMAL``, WAL commits are fsynced only at checkpoints: a kill -9 loses
nothing, but a power cut can roll back the last transactions, i.e. lose events the caller was told
were stored.) ``ack``, ``mark_in_flight`` and ``requeue_in_flight`` commit with ``NORMAL``: if a
power cut undoes one of them, the envelope is simply sent again and de-duplicated downstream, so
paying an fsync for them buys nothing. The WAL is append-only with checksummed frames, so an
un-synced commit can be lost but never corrupt an earlier synced one, and the next ``FULL``
commit's fsync covers the earlier ``NORMAL`` frames too. So the default costs one fdatasync per
event (FULL for everything: three). Measured numbers: docs/PROTOCOL.md, "Events" / "Outbox";
``tests/integration/test_outbox.py::test_throughput_with_durability_on`` prints the local rate.

Bad rows: a row whose topic is not UTF-8, whose payload is not a sealed envelope, or whose
signature does not verify under ``signer`` is evicted (counted ``invalid``) when it comes out,
and never blocks the rows after it.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from agent.outbox.counters import (
    CORRUPT_RECOVERED,
    EVICTED_AGE,
    EVICTED_BYTES,
    EVICTED_INVALID,
    RECEIPTED,
    REJECTED_FULL,
    REJECTED_TOO_LARGE,
    REPUBLISHED,
    DeleteOn,
    OutboxStats,
    with_prefix,
)
from agent.outbox.database import checkpoint, connect, is_full, make_private, move_aside
from agent.outbox.storage import DEFAULT_RESERVE_BYTES, OutboxStorage, Synchronous
from contract.envelope.keys import PublicIdentity
from contract.envelope.seal import SealedEnvelope, restore_sealed
from contract.errors import OutboxCorruptError, OutboxFullError, UnredactedDataError
from contract.topics import KIND_CMD_ACK

logger = logging.getLogger(__name__)

DEFAULT_RECEIPT_TIMEOUT_S: Final = 60.0
MAX_RECEIPT_TIMEOUT_S: Final = 900.0
"""While no receipt comes, each republish round doubles the wait before the next, up to this;
the first receipt brings it back to ``receipt_timeout_s``."""
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_AGE_S: Final = 7 * 24 * 3600.0


@dataclass(frozen=True)
class OutboxItem:
    """One stored envelope, as handed to the transport (``envelope`` is what it publishes)."""

    id: int
    envelope: SealedEnvelope
    size: int
    created: float
    """Unix seconds at enqueue."""
    attempts: int
    """How many times it was marked in flight before."""

    @property
    def topic(self) -> str:
        return self.envelope.topic

    @property
    def seq(self) -> int:
        return self.envelope.seq

    @property
    def payload(self) -> bytes:
        return self.envelope.data


class Outbox(OutboxStorage):
    """Durable, bounded, thread-safe queue of sealed envelopes. A context manager.

    ``signer`` is the device's public identity: stored rows are checked against it when they
    come out. ``max_bytes`` bounds the sum of stored payload sizes, ``max_age_s`` the age of the
    oldest row; both evict oldest first. ``max_db_bytes`` caps the database file itself (SQLite
    ``max_page_count``; the disk-full path handles it). ``reserve_bytes`` is the size of the
    reserve file released on a full disk (see :mod:`agent.outbox.storage`; 0: none). ``synchronous``
    applies to enqueue, ``ack_synchronous`` to ack / mark_in_flight / release / requeue (see the
    module docstring).
    ``busy_timeout_s``: how long to wait for another process holding the database (e.g. an
    operator's sqlite3 shell) before an OutboxError. ``clock`` gives Unix seconds.

    With :class:`agent.transport.Transport`, the sending side is (``mids`` maps MQTT message
    ids to row ids, guarded by one lock taken in the callbacks too)::

        for item in outbox.next_batch(16):
            with lock:
                mid = transport.publish(item.topic, item.envelope)
                if mid is None:          # not taken: offered again later
                    break
                outbox.mark_in_flight(item.id, mid)
                mids[mid] = item.id
        # on_acked(mid):       with lock: outbox.ack(mids.pop(mid))
        # on_rejected(mid, _): with lock: outbox.release(mids.pop(mid))
        # after Transport.stop() / a new session: outbox.requeue_in_flight(); mids.clear()
    """

    def __init__(
        self,
        path: Path,
        *,
        signer: PublicIdentity,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_db_bytes: int | None = None,
        synchronous: Synchronous = "FULL",
        ack_synchronous: Synchronous = "NORMAL",
        recover_corrupt: bool = False,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        busy_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        delete_on: DeleteOn = "receipt",
        receipt_timeout_s: float = DEFAULT_RECEIPT_TIMEOUT_S,
    ) -> None:
        if delete_on not in ("receipt", "puback"):
            raise ValueError(f"delete_on must be receipt or puback, got {delete_on!r}")
        if not receipt_timeout_s > 0:
            raise ValueError("outbox receipt_timeout_s must be positive")
        if max_bytes <= 0 or max_age_s <= 0:
            raise ValueError("outbox max_bytes and max_age_s must be positive")
        if reserve_bytes < 0:
            raise ValueError("outbox reserve_bytes must be >= 0")
        for value in (synchronous, ack_synchronous):
            if value not in ("FULL", "NORMAL"):
                raise ValueError(f"synchronous must be FULL or NORMAL, got {value!r}")
        super().__init__(
            path,
            max_age_s=max_age_s,
            ack_synchronous=ack_synchronous,
            reserve_bytes=reserve_bytes,
            clock=clock,
        )
        self._signer = signer
        self._max_bytes = max_bytes
        self._max_db_bytes = max_db_bytes
        self._sync_enqueue: Synchronous = synchronous
        self._recover_corrupt = recover_corrupt
        self._busy_timeout_s = busy_timeout_s
        self._delete_on: DeleteOn = delete_on
        self._receipt_timeout_s = receipt_timeout_s
        self._republish_after_s = receipt_timeout_s  # doubles per fruitless round (backoff)
        self._next_republish_check = 0.0

    @property
    def path(self) -> Path:
        return self._path

    # --- lifetime ------------------------------------------------------------------------------

    def __enter__(self) -> Outbox:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Open (creating if needed), check integrity, requeue what was in flight."""
        with self._lock:
            if self._conn is not None:
                return
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._size_to_filesystem()
            self._release_reserve()  # room to open, recover and evict on a full disk
            make_private(self._path)
            try:
                conn = self._connect()
            except OutboxCorruptError:
                if not self._recover_corrupt:
                    raise
                aside = move_aside(self._path)
                logger.warning(
                    "outbox %s was corrupt: moved aside to %s, starting a new one",
                    self._path,
                    aside,
                    extra={"outbox": str(self._path), "moved_to": str(aside)},
                )
                conn = self._connect()
                self._pending[CORRUPT_RECOVERED] = self._pending.get(CORRUPT_RECOVERED, 0) + 1
            self._conn = conn
        with self._locked() as conn:
            depth, total = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
            ).fetchone()
            self._depth, self._bytes = int(depth), int(total)
            self._flush_pending()
        self.requeue_in_flight()
        with self._locked() as conn:
            checkpoint(conn)
            if not self._ensure_reserve():  # a full disk: make room by policy, oldest first
                self._evict_until_reserved(conn, self._reserve_bytes)

    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                with self._locked():
                    self._flush_pending()
            finally:
                self._conn.close()
                self._conn = None
                self._sync_now = None

    # --- API -----------------------------------------------------------------------------------

    def enqueue(self, envelope: SealedEnvelope, topic: str | None = None) -> int:
        """Store ``envelope`` durably (fsynced when this returns); return its row id.

        ``topic`` defaults to the envelope's own (which its signature binds); a different one
        is a ValueError. Raises UnredactedDataError for anything but a SealedEnvelope, and
        OutboxFullError when it cannot be stored even after evicting the oldest rows.
        """
        if not isinstance(envelope, SealedEnvelope):
            raise UnredactedDataError(
                f"refusing to queue a {type(envelope).__name__}: only SealedEnvelope (made by "
                "contract.envelope.seal) may enter the outbox"
            )
        if envelope.sender_kid != self._signer.kid:
            raise ValueError(
                f"envelope signed by {envelope.sender_kid!r}, this outbox is {self._signer.kid!r}'s"
            )
        if topic is not None and topic != envelope.topic:
            raise ValueError(f"topic {topic!r} differs from the envelope's {envelope.topic!r}")
        payload = bytes(envelope.data)
        size = len(payload)
        with self._locked() as conn:
            if size > self._max_bytes:
                self._count_now(REJECTED_TOO_LARGE)
                raise OutboxFullError(
                    f"envelope of {size} bytes exceeds the whole outbox bound of "
                    f"{self._max_bytes} bytes; not stored"
                )
            self._set_sync(self._sync_enqueue)
            now = self._clock()
            while True:
                try:
                    return self._insert(conn, envelope, payload, now)
                except sqlite3.OperationalError as exc:
                    if not is_full(exc):
                        raise
                if not self._evict_for_space(conn, size):
                    self._count_now(REJECTED_FULL)
                    raise OutboxFullError(
                        f"outbox {self._path}: database or disk is full and nothing is left to "
                        "evict; envelope not stored. Free disk space or lower outbox.max_bytes."
                    )

    def next_batch(self, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` queued (not in-flight) envelopes, oldest first. Prunes by age first.

        A row that does not decode (topic not UTF-8, payload not a sealed envelope) or no longer
        verifies under ``signer`` is evicted (``invalid``) and skipped, so the batch can be
        shorter than ``limit`` while more rows are queued; it never blocks the rows after it.
        """
        limit = max(0, limit)
        with self._locked() as conn:
            try:
                self._prune_age(conn)
            except sqlite3.OperationalError as exc:
                if not is_full(exc):
                    raise
                logger.warning("outbox: age pruning postponed, the disk is full")
            self._republish_overdue(conn)
            rows = conn.execute(
                "SELECT id, CAST(topic AS BLOB), CAST(payload AS BLOB), size, created, attempts "
                "FROM outbox WHERE mid IS NULL AND published IS NULL ORDER BY id LIMIT ?",
                (limit + len(self._skip),),
            ).fetchall()
            skip = set(self._skip)
        items: list[OutboxItem] = []
        invalid: list[int] = []
        for item_id, topic, payload, size, created, attempts in rows:
            if item_id in skip:
                continue
            if len(items) >= limit:
                break
            try:  # outside the lock: verifying signatures must not stall enqueue
                envelope = restore_sealed(
                    bytes(payload), topic=bytes(topic).decode("utf-8"), signer=self._signer
                )
                item = OutboxItem(item_id, envelope, int(size), float(created), int(attempts))
            except Exception as exc:  # a row from disk is untrusted input: any failure is invalid
                logger.warning(
                    "outbox row %d does not decode or verify (%s): evicted",
                    item_id,
                    type(exc).__name__,
                    extra={"reason": "invalid"},
                )
                invalid.append(item_id)
                continue
            items.append(item)
        if invalid:
            self._evict_ids(invalid, EVICTED_INVALID)
        return items

    def mark_in_flight(self, item_id: int, mid: int) -> bool:
        """Record that row ``item_id`` was published as MQTT message ``mid``. False if gone."""
        with self._locked() as conn:
            self._set_sync(self._sync_ack)
            _, count = self._small_write(
                conn,
                "UPDATE outbox SET mid = ?, attempts = attempts + 1, sent_at = ? WHERE id = ?",
                (mid, self._clock(), item_id),
            )
            return count == 1

    def release(self, item_id: int) -> bool:
        """Make one in-flight row eligible again (the broker refused it, or publish failed)."""
        with self._locked() as conn:
            self._set_sync(self._sync_ack)
            _, count = self._small_write(
                conn, "UPDATE outbox SET mid = NULL WHERE id = ?", (item_id,)
            )
            return count == 1

    def ack(self, item_id: int) -> bool:
        """The broker acknowledged row ``item_id`` (PUBACK): with ``delete_on="receipt"`` it is
        kept as *published* until a receipt names it (or published again after the receipt
        timeout); with ``delete_on="puback"`` it is deleted now.

        Returns False when the row is already gone (receipted or evicted meanwhile).
        """
        with self._locked() as conn:
            self._set_sync(self._sync_ack)
            if self._delete_on == "receipt" and not self._puback_only(conn, item_id):
                _, count = self._small_write(
                    conn,
                    "UPDATE outbox SET mid = NULL, published = ? "
                    "WHERE id = ? AND published IS NULL",
                    (self._clock(), item_id),
                )
                return count == 1
            deleted, _ = self._small_write(
                conn, "DELETE FROM outbox WHERE id = ? RETURNING size", (item_id,)
            )
            if not deleted:
                return False
            self._depth -= 1
            self._bytes -= int(deleted[0][0])
            return True

    @staticmethod
    def _puback_only(conn: sqlite3.Connection, item_id: int) -> bool:
        """Command acks are sealed to the operator: the backend cannot open them, so no receipt
        will ever name them; the operator's own timeout covers a lost one. They go on the
        PUBACK in either mode."""
        row = conn.execute("SELECT topic FROM outbox WHERE id = ?", (item_id,)).fetchone()
        return row is not None and str(row[0]).endswith("/" + KIND_CMD_ACK)

    def receipt(self, ranges: Sequence[tuple[int, int]]) -> int:
        """The backend stored the envelopes with these (inclusive) seq ranges: delete them, in
        whatever state they are. Returns how many rows were deleted (0 for a repeated receipt).
        """
        deleted_rows = 0
        with self._locked() as conn:
            self._republish_after_s = self._receipt_timeout_s  # the backend is back: no backoff
            self._set_sync(self._sync_ack)
            try:
                with self._transaction(conn) as count:
                    freed = 0
                    for lo, hi in ranges:
                        rows = conn.execute(
                            "DELETE FROM outbox WHERE seq BETWEEN ? AND ? RETURNING size", (lo, hi)
                        ).fetchall()
                        deleted_rows += len(rows)
                        freed += sum(int(r[0]) for r in rows)
                    if deleted_rows:
                        count({RECEIPTED: deleted_rows})
            except sqlite3.OperationalError as exc:
                if not is_full(exc):
                    raise
                self._on_full(conn)  # the next receipt (or the republish) tries again
                return 0
            self._depth -= deleted_rows
            self._bytes -= freed
        return deleted_rows

    def _republish_overdue(self, conn: sqlite3.Connection) -> None:
        """Published rows with no receipt within the timeout go back to the queue (checked at
        most once a second; the backend de-duplicates what it had stored after all). While no
        receipt comes (a backend down for hours), each round doubles the timeout, up to
        :data:`MAX_RECEIPT_TIMEOUT_S`, so the broker is not flooded with the same envelopes;
        any receipt resets it. A write that cannot be made now (a full disk, a locked file)
        waits for the next check."""
        now = self._clock()
        if self._delete_on != "receipt" or now < self._next_republish_check:
            return
        self._next_republish_check = now + 1.0
        after = self._republish_after_s
        window = (now - after, now + after)
        (due,) = conn.execute(
            "SELECT COUNT(*) FROM outbox "
            "WHERE published IS NOT NULL AND (published < ? OR published > ?)",  # > : clock stepped
            window,
        ).fetchone()
        if not due:
            return
        try:
            with self._transaction(conn) as count:
                n = conn.execute(
                    "UPDATE outbox SET published = NULL "
                    "WHERE published IS NOT NULL AND (published < ? OR published > ?)",
                    window,
                ).rowcount
                count({REPUBLISHED: n})
        except sqlite3.OperationalError as exc:
            logger.warning("outbox: republishing postponed (%s)", exc)
            return
        self._republish_after_s = min(2 * after, max(MAX_RECEIPT_TIMEOUT_S, after))
        logger.info(
            "outbox: %d envelope(s) published again, no receipt within %.0f s (next round "
            "after %.0f s unless a receipt comes)",
            n,
            after,
            self._republish_after_s,
            extra={"reason": "receipt_timeout"},
        )

    def requeue_in_flight(self) -> int:
        """Make every in-flight row eligible again (after reconnect or restart); how many."""
        with self._locked() as conn:
            self._set_sync(self._sync_ack)
            _, count = self._small_write(
                conn, "UPDATE outbox SET mid = NULL WHERE mid IS NOT NULL", ()
            )
            return count

    def prune(self) -> int:
        """Evict rows older than ``max_age_s`` now (also done by enqueue and next_batch)."""
        with self._locked() as conn:
            return self._prune_age(conn)

    def stats(self) -> OutboxStats:
        with self._locked() as conn:
            in_flight, oldest, awaiting = conn.execute(
                "SELECT (SELECT COUNT(*) FROM outbox WHERE mid IS NOT NULL), "
                "(SELECT MIN(created) FROM outbox), "
                "(SELECT COUNT(*) FROM outbox WHERE published IS NOT NULL)"
            ).fetchone()
            counts = dict(conn.execute("SELECT name, value FROM counters").fetchall())
            for name, n in self._pending.items():
                counts[name] = counts.get(name, 0) + n
            depth, total = self._depth, self._bytes
            now = self._clock()
        return OutboxStats(
            depth=depth,
            bytes=total,
            in_flight=int(in_flight),
            oldest_age_s=None if oldest is None else max(0.0, now - float(oldest)),
            evicted_total=MappingProxyType(with_prefix(counts, "evicted.")),
            rejected_total=MappingProxyType(with_prefix(counts, "rejected.")),
            corrupt_recovered=int(counts.get(CORRUPT_RECOVERED, 0)),
            awaiting_receipt=int(awaiting),
            receipted=int(counts.get(RECEIPTED, 0)),
            republished=int(counts.get(REPUBLISHED, 0)),
            delete_on=self._delete_on,
        )

    # --- internals -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return connect(
            self._path,
            busy_timeout_s=self._busy_timeout_s,
            wal_bytes=self._wal_bytes,
            max_db_bytes=self._max_db_bytes,
        )

    def _insert(
        self, conn: sqlite3.Connection, envelope: SealedEnvelope, payload: bytes, now: float
    ) -> int:
        size = len(payload)
        with self._transaction(conn) as count:
            counts: dict[str, int] = {}
            aged = self._delete_older_than(conn, now - self._max_age_s)
            if aged[0]:
                counts[EVICTED_AGE] = aged[0]
            excess = self._bytes - aged[1] + size - self._max_bytes
            by_bytes = self._delete_oldest(conn, excess) if excess > 0 else (0, 0)
            if by_bytes[0]:
                counts[EVICTED_BYTES] = by_bytes[0]
            cur = conn.execute(
                "INSERT INTO outbox (topic, seq, size, created, payload) VALUES (?, ?, ?, ?, ?)",
                (envelope.topic, envelope.seq, size, now, payload),
            )
            count(counts)
        self._depth += 1 - aged[0] - by_bytes[0]
        self._bytes += size - aged[1] - by_bytes[1]
        for reason, n in counts.items():
            logger.warning("outbox evicted %d envelope(s): %s", n, reason, extra={"reason": reason})
        assert cur.lastrowid is not None
        return cur.lastrowid
