"""The outbox's SQLite file: schema and its migration, the connection's pragmas, the integrity
check, permissions, and the SQLite error codes the outbox acts on.

Permissions: the database file is created 0600 (and an existing one is made 0600); SQLite
creates the ``-wal`` and ``-shm`` files with the database file's mode, whatever the umask.

Corruption: at open the file gets ``PRAGMA quick_check``. A corrupt file raises
:class:`~contract.errors.OutboxCorruptError`; with ``recover_corrupt=True`` the outbox instead
moves the file (with its ``-wal``/``-shm``) aside with :func:`move_aside`, to
``<name>.corrupt-<UTC time>``, starts a new database and counts ``corrupt_recovered`` in it. The
envelopes in the old file are not re-sent (they can be inspected with the sqlite3 shell); the
seq counter lives elsewhere (:mod:`agent.sequence`), so new events never reuse a seq.

Schema versions: 0 (a new file) gets :data:`SCHEMA`; 1 is migrated in one transaction (its rows
are queued or in flight, none is published yet); a newer one is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

from contract.errors import OutboxCorruptError, OutboxError

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2

_SQLITE_CORRUPT: Final = 11
_SQLITE_FULL: Final = 13
_SQLITE_NOTADB: Final = 26

SCHEMA: Final = """
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

MIGRATE_1_TO_2: Final = """
ALTER TABLE outbox ADD COLUMN published REAL;
DROP INDEX IF EXISTS outbox_queued;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(id) WHERE mid IS NULL AND published IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published ON outbox(published) WHERE published IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_seq ON outbox(seq);
"""


def connect(
    path: Path, *, busy_timeout_s: float, wal_bytes: int, max_db_bytes: int | None
) -> sqlite3.Connection:
    """Open ``path`` in WAL mode (autocommit), check its integrity, create or migrate the schema
    and set the pragmas: the WAL bounded by ``wal_bytes``, the file by ``max_db_bytes``.
    Raises OutboxCorruptError for a damaged file, OutboxError for anything else."""
    try:
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_s,
        )
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot open outbox database {path}: {exc}") from None
    try:
        if int(conn.execute("PRAGMA page_count").fetchone()[0]) == 0:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only before the first table
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(
                f"{path}: SQLite refused WAL mode (got {mode!r}); the outbox needs a "
                "local filesystem with shared-memory support"
            )
        check = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if check != ["ok"]:
            raise OutboxCorruptError(corrupt_message(path, "; ".join(map(str, check[:3]))))
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, SCHEMA_VERSION):
            raise OutboxError(
                f"{path} has outbox schema {version}, this camveil knows "
                f"{SCHEMA_VERSION}: it was written by another version"
            )
        if version == 0:  # no write at all when reopening (the disk may be full)
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version == 1:  # rows of a v1 outbox are queued or in flight: none is published
            conn.executescript(
                f"BEGIN IMMEDIATE;{MIGRATE_1_TO_2}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
            )
        elif int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
            _enable_incremental_vacuum(conn, path)
        # deleted rows are sealed ciphertext: zero them only where it costs no extra write
        # (ON rewrites every freed page, which on a full disk can exceed the WAL's room)
        conn.execute("PRAGMA secure_delete=FAST")
        page = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA wal_autocheckpoint={max(8, wal_bytes * 3 // 4 // page)}")
        conn.execute(f"PRAGMA journal_size_limit={wal_bytes}")
        if max_db_bytes is not None:
            conn.execute(f"PRAGMA max_page_count={max(1, max_db_bytes // page)}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        if errcode(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or not isinstance(
            exc, sqlite3.OperationalError
        ):
            raise OutboxCorruptError(corrupt_message(path, str(exc))) from None
        raise OutboxError(f"cannot open outbox database {path}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def corrupt_message(path: Path, detail: str) -> str:
    return (
        f"outbox database {path} is corrupt ({detail}). Recovery: stop camveil, move "
        f"{path.name} and its -wal/-shm files aside, start again (a new outbox is "
        "created), or set outbox.recover_corrupt = true to do this automatically"
    )


def move_aside(path: Path) -> Path:
    """Rename the database and its -wal/-shm to ``<name>.corrupt-<UTC time>``; the new name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(path.name + suffix)
        if src.exists():
            src.replace(aside.with_name(aside.name + suffix))
    return aside


def make_private(path: Path) -> None:
    """Create the database file 0600 (SQLite gives -wal/-shm its mode); tighten old files."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise OutboxError(f"cannot create outbox database {path}: {exc}") from None
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).chmod(0o600)


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database and truncate it (best effort: a failure is harmless)."""
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.OperationalError as exc:
        logger.debug("wal checkpoint failed: %s", exc)


def _enable_incremental_vacuum(conn: sqlite3.Connection, path: Path) -> None:
    """A database made before auto_vacuum was set: convert it once (VACUUM needs about twice
    its size free; without it the file keeps its size and reuses its free pages)."""
    try:
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        logger.warning("outbox %s: cannot enable incremental vacuum yet (%s)", path, exc)


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite may already have on SQLITE_FULL)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def errcode(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_full(exc: sqlite3.Error) -> bool:
    """``database or disk is full``: the filesystem, or ``max_page_count`` reached."""
    return errcode(exc) == _SQLITE_FULL or "database or disk is full" in str(exc)
