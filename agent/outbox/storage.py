"""Where the outbox's rows live and how they leave without being delivered: the connection under
one lock, the in-memory depth and size, the persisted counters, and eviction by age, by the byte
bound, on a full disk and for invalid rows. :class:`~agent.outbox.Outbox` builds on it.

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

Transactions: every write of several statements (an enqueue with its evictions, an eviction, a
receipt, a republish round, pending counts) is one :meth:`OutboxStorage._transaction`
(``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception); single statements (ack, mark,
release, requeue) autocommit.

Counts: every eviction is counted (:mod:`agent.outbox.counters`) in the transaction that makes
it. A count whose own transaction fails (a full disk) stays pending in memory and is written
with the next successful commit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal

from agent.outbox.counters import EVICTED_AGE, EVICTED_DISK_FULL
from agent.outbox.database import checkpoint, is_full, rollback
from contract.errors import OutboxError

logger = logging.getLogger(__name__)

DEFAULT_RESERVE_BYTES: Final = 1024 * 1024
RESERVE_SUFFIX: Final = ".reserve"
_MAX_WAL_BYTES: Final = 1024 * 1024

Synchronous = Literal["FULL", "NORMAL"]


class OutboxStorage:
    """The outbox's database under one lock, with its bookkeeping and evictions (see the module
    docstring). Constructor only stores; :class:`~agent.outbox.Outbox` opens the connection.

    ``max_age_s`` bounds the age of the oldest row; ``ack_synchronous`` is the ``synchronous``
    mode of writes whose loss to a power cut only delays them (pruning by age); ``reserve_bytes``
    is the size of the reserve file (0: none); ``clock`` gives Unix seconds.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_age_s: float,
        ack_synchronous: Synchronous,
        reserve_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self._path = Path(path)
        self._max_age_s = max_age_s
        self._sync_ack: Synchronous = ack_synchronous
        self._reserve_wanted = reserve_bytes
        self._reserve_bytes = reserve_bytes  # capped to the filesystem at open
        self._wal_bytes = _MAX_WAL_BYTES
        self._skip: set[int] = set()  # invalid rows whose eviction could not be written yet
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._sync_now: str | None = None
        self._depth = 0
        self._bytes = 0
        self._pending: dict[str, int] = {}  # counts not yet persisted (their commit failed)

    # --- the connection ------------------------------------------------------------------------

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

    @contextlib.contextmanager
    def _transaction(
        self, conn: sqlite3.Connection
    ) -> Iterator[Callable[[Mapping[str, int]], None]]:
        """One write transaction (every multi-statement write of rows and counts goes through
        here; the schema migration is :mod:`agent.outbox.database`'s): ``BEGIN IMMEDIATE`` (the
        write lock at once), ``COMMIT`` when the block ends; any exception rolls it back
        (:func:`~agent.outbox.database.rollback`, SQLite may already have on a full disk) and is
        raised again unchanged, so the caller decides what a full disk means
        (:func:`~agent.outbox.database.is_full`). A failing ``BEGIN`` is raised as it is.

        Yields ``count``: counts given to it are written in this transaction together with the
        pending ones (:meth:`_write_counts`); once it committed, the pending counts are
        forgotten. A transaction that counts nothing leaves them pending."""
        conn.execute("BEGIN IMMEDIATE")
        counted = False

        def count(counts: Mapping[str, int]) -> None:
            nonlocal counted
            self._write_counts(conn, counts)
            counted = True

        try:
            yield count
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        if counted:
            self._pending.clear()

    def _set_sync(self, mode: str) -> None:
        if self._sync_now != mode:
            self._require().execute(f"PRAGMA synchronous={mode}")
            self._sync_now = mode

    # --- eviction for space (a full disk) -------------------------------------------------

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
        checkpoint(conn)
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
            checkpoint(conn)
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
                if not is_full(exc):
                    raise
                break
            n, freed = n + k, freed + k_bytes
            checkpoint(conn)
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
        with self._transaction(conn) as count:
            n, freed = delete()
            count({reason: n})
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
                checkpoint(conn)
                if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
                    return  # an older file without auto_vacuum: its free pages are reused
        except sqlite3.OperationalError as exc:
            if not is_full(exc):
                raise
            logger.debug("incremental vacuum stopped, the disk is full")

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
                if attempt == 2 or not is_full(exc):
                    raise
                self._on_full(conn)
        raise AssertionError("unreachable")

    def _on_full(self, conn: sqlite3.Connection) -> None:
        """A small write (ack, mark, evict) hit a full disk: release the reserve, free the WAL."""
        self._release_reserve()
        checkpoint(conn)

    # --- the reserve file ------------------------------------------------------------------

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

    # --- eviction by age, of invalid rows, and the deletes behind every eviction -----------

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
                    if not is_full(exc):
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
        with self._transaction(conn) as count:
            sizes = [
                int(row[0])
                for item_id in ids
                for row in conn.execute(
                    # CAST: a damaged size column must not stop the eviction of its row
                    "DELETE FROM outbox WHERE id = ? RETURNING CAST(size AS INTEGER)",
                    (item_id,),
                ).fetchall()
            ]
            count({reason: len(sizes)})
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
            with self._transaction(conn) as count:
                count({})
        except sqlite3.OperationalError as exc:
            if not is_full(exc):
                raise
            # stays pending; flushed with the next successful commit
