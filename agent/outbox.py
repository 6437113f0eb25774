"""Durable outbox of sealed envelopes: stdlib sqlite3 in WAL mode, one row per envelope.

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

Disk full: SQLite reports ``database or disk is full`` (also when ``max_db_bytes`` is reached).
Three things keep a full disk from stopping the unit:

- a **reserve file** (``<name>.reserve``, ``reserve_bytes``: 1 MiB, at most 1/8 of the
  filesystem) is kept beside the database. On ``database or disk is full`` it is deleted first,
  so there is always room to open the database, write the eviction and checkpoint; it is
  re-created as soon as there is room again. It is also deleted at open, so a restart on a full
  disk works;
- the **WAL is bounded** by the reserve: ``wal_autocheckpoint`` and ``journal_size_limit`` are
  sized to 3/4 of the reserve and the whole reserve (at most 1 MiB), so the WAL can neither fill
  a small disk nor outgrow the room its checkpoint needs;
- new databases use ``auto_vacuum=INCREMENTAL``, so evicted rows give their pages back to the
  filesystem (``PRAGMA incremental_vacuum`` after each eviction for space).

The outbox then evicts the oldest envelopes (counted as ``disk_full``), enough for the new one
and the reserve, and retries; if nothing is left to evict it raises
:class:`~contract.errors.OutboxFullError` (counted as rejected ``full``).

Bad rows: a row whose topic is not UTF-8, whose payload is not a sealed envelope, or whose
signature does not verify under ``signer`` is evicted (counted ``invalid``) when it comes out,
and never blocks the rows after it.

Permissions: the database file is created 0600 (and an existing one is made 0600); SQLite
creates the ``-wal`` and ``-shm`` files with the database file's mode, whatever the umask.

Corruption: at open the file gets ``PRAGMA quick_check``. A corrupt file raises
:class:`~contract.errors.OutboxCorruptError`; with ``recover_corrupt=True`` the file (with its
``-wal``/``-shm``) is instead moved aside to ``<name>.corrupt-<UTC time>``, a new database is
started and ``corrupt_recovered`` is counted in it. The envelopes in the old file are not re-sent
(they can be inspected with the sqlite3 shell); the seq counter lives elsewhere
(:mod:`agent.sequence`), so new events never reuse a seq.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from contract.envelope.keys import PublicIdentity
from contract.envelope.seal import SealedEnvelope, restore_sealed
from contract.errors import (
    OutboxCorruptError,
    OutboxError,
    OutboxFullError,
    UnredactedDataError,
)
from contract.topics import KIND_CMD_ACK

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
DEFAULT_RECEIPT_TIMEOUT_S: Final = 60.0
MAX_RECEIPT_TIMEOUT_S: Final = 900.0
"""While no receipt comes, each republish round doubles the wait before the next, up to this;
the first receipt brings it back to ``receipt_timeout_s``."""
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_AGE_S: Final = 7 * 24 * 3600.0
DEFAULT_RESERVE_BYTES: Final = 1024 * 1024
RESERVE_SUFFIX: Final = ".reserve"
_MAX_WAL_BYTES: Final = 1024 * 1024

# Counter names (the ``counters`` table). Evictions by reason, refusals by reason.
EVICTED_BYTES: Final = "evicted.bytes"
EVICTED_AGE: Final = "evicted.age"
EVICTED_DISK_FULL: Final = "evicted.disk_full"
EVICTED_INVALID: Final = "evicted.invalid"
REPUBLISHED: Final = "republished"
"""Envelopes published again because no receipt came within the receipt timeout."""
RECEIPTED: Final = "receipted"
REJECTED_FULL: Final = "rejected.full"
REJECTED_TOO_LARGE: Final = "rejected.too_large"
CORRUPT_RECOVERED: Final = "corrupt_recovered"

Synchronous = Literal["FULL", "NORMAL"]
DeleteOn = Literal["receipt", "puback"]

_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_NOTADB: Final = 26

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a late ack cannot hit a new row
    topic     TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    created   REAL    NOT NULL,                   -- Unix seconds at enqueue
    attempts  INTEGER NOT NULL DEFAULT 0,
    mid       INTEGER,                            -- MQTT message id while in flight, else NULL
    sent_at   REAL,
    payload   BLOB    NOT NULL,                   -- sealed envelope bytes (COSE_Sign1)
    published REAL                                -- PUBACK time while awaiting a receipt
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox(created);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(id) WHERE mid IS NULL AND published IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published ON outbox(published) WHERE published IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_seq ON outbox(seq);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

_MIGRATE_1_TO_2: Final = """
ALTER TABLE outbox ADD COLUMN published REAL;
DROP INDEX IF EXISTS outbox_queued;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(id) WHERE mid IS NULL AND published IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published ON outbox(published) WHERE published IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_seq ON outbox(seq);
"""


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


@dataclass(frozen=True)
class OutboxStats:
    """What ``health`` events report about the outbox."""

    depth: int
    bytes: int
    in_flight: int
    oldest_age_s: float | None
    evicted_total: Mapping[str, int]
    """Evicted envelopes by reason: ``bytes``, ``age``, ``disk_full``, ``invalid``."""
    rejected_total: Mapping[str, int]
    """Envelopes refused at enqueue by reason: ``full``, ``too_large``."""
    corrupt_recovered: int
    """How many times a corrupt database file was moved aside and replaced."""
    awaiting_receipt: int = 0
    """Published (PUBACK seen), kept until the backend's receipt names them."""
    receipted: int = 0
    """Envelopes deleted because a receipt named them."""
    republished: int = 0
    """Envelopes published again: no receipt within the receipt timeout."""
    delete_on: DeleteOn = "receipt"


class Outbox:
    """Durable, bounded, thread-safe queue of sealed envelopes. A context manager.

    ``signer`` is the device's public identity: stored rows are checked against it when they
    come out. ``max_bytes`` bounds the sum of stored payload sizes, ``max_age_s`` the age of the
    oldest row; both evict oldest first. ``max_db_bytes`` caps the database file itself (SQLite
    ``max_page_count``; the disk-full path handles it). ``reserve_bytes`` is the size of the
    reserve file released on a full disk (see the module docstring; 0: none). ``synchronous``
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
        self._path = Path(path)
        self._signer = signer
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._max_db_bytes = max_db_bytes
        self._sync_enqueue: Synchronous = synchronous
        self._sync_ack: Synchronous = ack_synchronous
        self._recover_corrupt = recover_corrupt
        self._reserve_wanted = reserve_bytes
        self._reserve_bytes = reserve_bytes  # capped to the filesystem at open
        self._wal_bytes = _MAX_WAL_BYTES
        self._skip: set[int] = set()  # invalid rows whose eviction could not be written yet
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._delete_on: DeleteOn = delete_on
        self._receipt_timeout_s = receipt_timeout_s
        self._republish_after_s = receipt_timeout_s  # doubles per fruitless round (backoff)
        self._next_republish_check = 0.0
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._sync_now: str | None = None
        self._depth = 0
        self._bytes = 0
        self._pending: dict[str, int] = {}  # counts not yet persisted (their commit failed)

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
            self._make_private()
            try:
                conn = self._connect()
            except OutboxCorruptError:
                if not self._recover_corrupt:
                    raise
                aside = self._move_aside()
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
            self._checkpoint(conn)
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
                    if not _is_full(exc):
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
                if not _is_full(exc):
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
            conn.execute("BEGIN IMMEDIATE")
            try:
                freed = 0
                for lo, hi in ranges:
                    rows = conn.execute(
                        "DELETE FROM outbox WHERE seq BETWEEN ? AND ? RETURNING size", (lo, hi)
                    ).fetchall()
                    deleted_rows += len(rows)
                    freed += sum(int(r[0]) for r in rows)
                if deleted_rows:
                    self._write_counts(conn, {RECEIPTED: deleted_rows})
                conn.execute("COMMIT")
                if deleted_rows:
                    self._pending.clear()
            except sqlite3.OperationalError as exc:
                _rollback(conn)
                if not _is_full(exc):
                    raise
                self._on_full(conn)  # the next receipt (or the republish) tries again
                return 0
            except BaseException:
                _rollback(conn)
                raise
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
            conn.execute("BEGIN IMMEDIATE")
            n = conn.execute(
                "UPDATE outbox SET published = NULL "
                "WHERE published IS NOT NULL AND (published < ? OR published > ?)",
                window,
            ).rowcount
            self._write_counts(conn, {REPUBLISHED: n})
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            _rollback(conn)
            logger.warning("outbox: republishing postponed (%s)", exc)
            return
        self._pending.clear()
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
            evicted_total=MappingProxyType(_with_prefix(counts, "evicted.")),
            rejected_total=MappingProxyType(_with_prefix(counts, "rejected.")),
            corrupt_recovered=int(counts.get(CORRUPT_RECOVERED, 0)),
            awaiting_receipt=int(awaiting),
            receipted=int(counts.get(RECEIPTED, 0)),
            republished=int(counts.get(REPUBLISHED, 0)),
            delete_on=self._delete_on,
        )

    # --- internals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock on an open connection; unexpected SQLite errors become OutboxError."""
        with self._lock:
            conn = self._require()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self._path}: {exc}") from None

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError("outbox is not open (use it as a context manager)")
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busy_timeout_s,
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox database {self._path}: {exc}") from None
        try:
            if int(conn.execute("PRAGMA page_count").fetchone()[0]) == 0:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only before the first table
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(
                    f"{self._path}: SQLite refused WAL mode (got {mode!r}); the outbox needs a "
                    "local filesystem with shared-memory support"
                )
            check = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            if check != ["ok"]:
                raise OutboxCorruptError(self._corrupt_message("; ".join(map(str, check[:3]))))
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise OutboxError(
                    f"{self._path} has outbox schema {version}, this camveil knows "
                    f"{SCHEMA_VERSION}: it was written by another version"
                )
            if version == 0:  # no write at all when reopening (the disk may be full)
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version == 1:  # rows of a v1 outbox are queued or in flight: none is published
                conn.executescript(
                    f"BEGIN IMMEDIATE;{_MIGRATE_1_TO_2}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
                )
            elif int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
                _enable_incremental_vacuum(conn, self._path)
            # deleted rows are sealed ciphertext: zero them only where it costs no extra write
            # (ON rewrites every freed page, which on a full disk can exceed the WAL's room)
            conn.execute("PRAGMA secure_delete=FAST")
            page = int(conn.execute("PRAGMA page_size").fetchone()[0])
            conn.execute(f"PRAGMA wal_autocheckpoint={max(8, self._wal_bytes * 3 // 4 // page)}")
            conn.execute(f"PRAGMA journal_size_limit={self._wal_bytes}")
            if self._max_db_bytes is not None:
                conn.execute(f"PRAGMA max_page_count={max(1, self._max_db_bytes // page)}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _errcode(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or not isinstance(
                exc, sqlite3.OperationalError
            ):
                raise OutboxCorruptError(self._corrupt_message(str(exc))) from None
            raise OutboxError(f"cannot open outbox database {self._path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _corrupt_message(self, detail: str) -> str:
        return (
            f"outbox database {self._path} is corrupt ({detail}). Recovery: stop camveil, move "
            f"{self._path.name} and its -wal/-shm files aside, start again (a new outbox is "
            "created), or set outbox.recover_corrupt = true to do this automatically"
        )

    def _move_aside(self) -> Path:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = self._path.with_name(self._path.name + suffix)
            if src.exists():
                src.replace(aside.with_name(aside.name + suffix))
        return aside

    def _set_sync(self, mode: str) -> None:
        if self._sync_now != mode:
            self._require().execute(f"PRAGMA synchronous={mode}")
            self._sync_now = mode

    def _insert(
        self, conn: sqlite3.Connection, envelope: SealedEnvelope, payload: bytes, now: float
    ) -> int:
        size = len(payload)
        conn.execute("BEGIN IMMEDIATE")
        try:
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
            self._write_counts(conn, counts)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self._pending.clear()
        self._depth += 1 - aged[0] - by_bytes[0]
        self._bytes += size - aged[1] - by_bytes[1]
        for reason, n in counts.items():
            logger.warning("outbox evicted %d envelope(s): %s", n, reason, extra={"reason": reason})
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _evict_for_space(self, conn: sqlite3.Connection, size: int) -> bool:
        """After SQLITE_FULL: release the reserve, free the WAL, evict the oldest rows (enough
        for ``size`` bytes, and for the reserve when the filesystem is what is full), give their
        pages back to the filesystem, re-create the reserve (evicting more while it does not
        fit). False when nothing could be freed."""
        need = max(size, 1)
        released = False
        if self._fs_free() < need + self._wal_bytes:  # the filesystem, not max_db_bytes
            released = self._release_reserve()
            if released:
                logger.warning("outbox: the disk is full, released the reserve to make room")
            need += self._reserve_bytes
        self._checkpoint(conn)
        n = self._evict_until_reserved(conn, need)
        return released or n > 0

    def _fs_free(self) -> int:
        """Bytes free for us on the database's filesystem (0 when it cannot be asked)."""
        try:
            st = os.statvfs(self._path.parent)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def _evict_until_reserved(self, conn: sqlite3.Connection, need: int) -> int:
        """Evict the oldest ``need`` bytes, then more until the reserve file fits again (or no
        row is left); how many rows. Counted ``disk_full``."""
        total = 0
        while self._depth > 0:
            n = self._evict_oldest(conn, need)
            total += n
            self._vacuum(conn)
            self._checkpoint(conn)
            if self._ensure_reserve() or n == 0:
                break
            need = self._reserve_bytes
        return total

    def _evict_oldest(self, conn: sqlite3.Connection, need: int) -> int:
        """Evict the oldest rows holding ``need`` bytes, in transactions of a quarter WAL each
        with checkpoints in between (one big DELETE could need more WAL than the disk has)."""
        chunk = max(need // 8, self._wal_bytes // 4, 1)
        n = freed = 0
        while freed < need and self._depth > 0:
            try:
                k, k_bytes = self._evict_oldest_txn(conn, min(chunk, need - freed))
            except sqlite3.OperationalError as exc:
                if not _is_full(exc):
                    raise
                break
            n, freed = n + k, freed + k_bytes
            self._checkpoint(conn)
        if n:
            logger.warning(
                "outbox full: evicted %d oldest envelope(s) (%d bytes)",
                n,
                freed,
                extra={"reason": "disk_full"},
            )
        return n

    def _evict_oldest_txn(self, conn: sqlite3.Connection, need: int) -> tuple[int, int]:
        """One transaction evicting the oldest rows (``need`` bytes), counted ``disk_full``."""
        return self._evict_txn(conn, lambda: self._delete_oldest(conn, need), EVICTED_DISK_FULL)

    def _evict_txn(
        self, conn: sqlite3.Connection, delete: Callable[[], tuple[int, int]], reason: str
    ) -> tuple[int, int]:
        """Run ``delete`` (rows, bytes freed) in one transaction that also counts ``reason``,
        then bring the in-memory depth and size along."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            n, freed = delete()
            self._write_counts(conn, {reason: n})
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self._pending.clear()
        self._depth -= n
        self._bytes -= freed
        return n, freed

    def _vacuum(self, conn: sqlite3.Connection) -> None:
        """Give free pages back to the filesystem (databases made with auto_vacuum=INCREMENTAL),
        a quarter WAL at a time with checkpoints in between, so it fits on a full disk."""
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        step = max(1, self._wal_bytes // page // 4)
        try:
            while int(conn.execute("PRAGMA freelist_count").fetchone()[0]) > 0:
                conn.execute(f"PRAGMA incremental_vacuum({step})").fetchall()
                self._checkpoint(conn)
                if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
                    return  # an older file without auto_vacuum: its free pages are reused
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            logger.debug("incremental vacuum stopped, the disk is full")

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database and truncate it (best effort: a failure is harmless)."""
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError as exc:
            logger.debug("wal checkpoint failed: %s", exc)

    def _small_write(
        self, conn: sqlite3.Connection, sql: str, params: tuple[object, ...]
    ) -> tuple[list[Any], int]:
        """One autocommit statement (ack, mark, release, requeue): its rows and rowcount. On a
        full disk, release the reserve and free the WAL, then try once more (the next enqueue
        that needs room restores the reserve)."""
        for attempt in (1, 2):
            try:
                cur = conn.execute(sql, params)
                rows = cur.fetchall()
                return rows, cur.rowcount
            except sqlite3.OperationalError as exc:
                if attempt == 2 or not _is_full(exc):
                    raise
                self._on_full(conn)
        raise AssertionError("unreachable")

    def _on_full(self, conn: sqlite3.Connection) -> None:
        """A small write (ack, mark, evict) hit a full disk: release the reserve, free the WAL."""
        self._release_reserve()
        self._checkpoint(conn)

    @property
    def _reserve_path(self) -> Path:
        return self._path.with_name(self._path.name + RESERVE_SUFFIX)

    def _size_to_filesystem(self) -> None:
        """Cap the reserve at 1/8 of the filesystem, and the WAL at the reserve (>= 64 KiB)."""
        try:
            st = os.statvfs(self._path.parent)
            fs_bytes = st.f_blocks * st.f_frsize
        except OSError:
            fs_bytes = 0
        reserve = self._reserve_wanted
        if fs_bytes > 0:
            reserve = min(reserve, fs_bytes // 8)
        self._reserve_bytes = reserve
        self._wal_bytes = min(_MAX_WAL_BYTES, max(64 * 1024, reserve))

    def _release_reserve(self) -> bool:
        """Delete the reserve file; True if there was one."""
        try:
            self._reserve_path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.warning("cannot delete the outbox reserve %s: %s", self._reserve_path, exc)
            return False
        logger.debug("outbox: released the %d-byte disk reserve", self._reserve_bytes)
        return True

    def _ensure_reserve(self) -> bool:
        """Create the reserve file if it is missing and there is room; True if it exists."""
        path = self._reserve_path
        if self._reserve_bytes == 0:
            return True
        try:
            if path.stat().st_size >= self._reserve_bytes:
                return True
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            logger.warning("cannot create the outbox reserve %s: %s", path, exc)
            return False
        try:
            chunk = bytes(min(self._reserve_bytes, 64 * 1024))
            left = self._reserve_bytes
            while left > 0:
                left -= os.write(fd, chunk[:left])
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                logger.warning("cannot create the outbox reserve %s: %s", path, exc)
            return False
        os.close(fd)
        return True

    def _make_private(self) -> None:
        """Create the database file 0600 (SQLite gives -wal/-shm its mode); tighten old files."""
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise OutboxError(f"cannot create outbox database {self._path}: {exc}") from None
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                self._path.with_name(self._path.name + suffix).chmod(0o600)

    def _prune_age(self, conn: sqlite3.Connection) -> int:
        cutoff = self._clock() - self._max_age_s
        row = conn.execute("SELECT MIN(created) FROM outbox").fetchone()
        if row[0] is None or row[0] >= cutoff:
            return 0
        self._set_sync(self._sync_ack)  # losing a prune to a power cut only delays it
        n, _ = self._evict_txn(conn, lambda: self._delete_older_than(conn, cutoff), EVICTED_AGE)
        logger.warning("outbox evicted %d envelope(s): age", n, extra={"reason": "age"})
        return n

    def _evict_ids(self, ids: list[int], reason: str) -> None:
        with self._locked() as conn:
            for attempt in (1, 2):
                try:
                    self._delete_ids(conn, ids, reason)
                except sqlite3.OperationalError as exc:
                    if not _is_full(exc):
                        raise
                    if attempt == 1:
                        self._on_full(conn)
                        continue
                    logger.warning("outbox: %d invalid row(s) skipped, not yet evicted", len(ids))
                    self._skip.update(ids)
                    return
                self._skip.difference_update(ids)
                return

    def _delete_ids(self, conn: sqlite3.Connection, ids: list[int], reason: str) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            sizes = [
                int(row[0])
                for item_id in ids
                for row in conn.execute(
                    # CAST: a damaged size column must not stop the eviction of its row
                    "DELETE FROM outbox WHERE id = ? RETURNING CAST(size AS INTEGER)",
                    (item_id,),
                ).fetchall()
            ]
            self._write_counts(conn, {reason: len(sizes)})
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self._pending.clear()
        self._depth -= len(sizes)
        self._bytes -= sum(sizes)

    def _delete_older_than(self, conn: sqlite3.Connection, cutoff: float) -> tuple[int, int]:
        rows = conn.execute(
            "DELETE FROM outbox WHERE created < ? RETURNING size", (cutoff,)
        ).fetchall()
        return len(rows), sum(int(r[0]) for r in rows)

    def _delete_oldest(self, conn: sqlite3.Connection, need: int) -> tuple[int, int]:
        """Delete the oldest rows until at least ``need`` bytes are freed (or none are left)."""
        n = freed = 0
        last_id: int | None = None
        for row_id, size in conn.execute("SELECT id, size FROM outbox ORDER BY id"):
            last_id = row_id
            n += 1
            freed += int(size)
            if freed >= need:
                break
        if last_id is not None:
            conn.execute("DELETE FROM outbox WHERE id <= ?", (last_id,))
        return n, freed

    def _write_counts(self, conn: sqlite3.Connection, counts: Mapping[str, int]) -> None:
        """Add ``counts`` and any pending (earlier unpersisted) counts, inside the open txn."""
        merged = dict(self._pending)
        for name, n in counts.items():
            merged[name] = merged.get(name, 0) + n
        conn.executemany(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            [(name, n) for name, n in merged.items() if n],
        )

    def _count_now(self, name: str) -> None:
        """Count a refusal in its own transaction; if even that fails, keep it pending."""
        self._pending[name] = self._pending.get(name, 0) + 1
        self._flush_pending()

    def _flush_pending(self) -> None:
        if not self._pending or self._conn is None:
            return
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._write_counts(conn, {})
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            return  # stays pending; flushed with the next successful commit
        self._pending.clear()


def _enable_incremental_vacuum(conn: sqlite3.Connection, path: Path) -> None:
    """A database made before auto_vacuum was set: convert it once (VACUUM needs about twice
    its size free; without it the file keeps its size and reuses its free pages)."""
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        logger.warning("outbox %s: cannot enable incremental vacuum yet (%s)", path, exc)


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite may already have on SQLITE_FULL)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _errcode(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _is_full(exc: sqlite3.Error) -> bool:
    return _errcode(exc) == _SQLITE_FULL or "database or disk is full" in str(exc)


def _with_prefix(counts: Mapping[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: int(v) for k, v in counts.items() if k.startswith(prefix)}
