"""Open a SQLite database in WAL mode when other processes may be opening it at the same moment.

Switching a database to WAL takes an exclusive lock for an instant, and SQLite answers a second
connection that tries at that instant with ``database is locked`` at once, without waiting in
its busy handler (seen with two ``camveil listen`` processes sharing one de-duplication file:
about 1 start in 40 crashed). :func:`connect_wal` retries that switch for a bounded time and
then raises a clear error; every later statement waits up to ``busy_timeout_s`` for a lock.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from contract.errors import ConfigError


def connect_wal(
    path: Path,
    *,
    synchronous: str = "NORMAL",
    busy_timeout_s: float = 10.0,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A connection to ``path`` (autocommit, WAL, the given ``synchronous`` level). ConfigError
    when the database stays locked for ``busy_timeout_s`` or is not a database."""
    if synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        timeout=busy_timeout_s,
        check_same_thread=check_same_thread,
    )
    deadline = time.monotonic() + busy_timeout_s
    delay = 0.005
    try:
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.DatabaseError as exc:
                if not isinstance(exc, sqlite3.OperationalError) or (
                    "locked" not in str(exc) and "busy" not in str(exc)
                ):
                    raise ConfigError(f"cannot open the database {path}: {exc}") from None
                if time.monotonic() >= deadline:
                    raise ConfigError(
                        f"the database {path} stayed locked by another process for "
                        f"{busy_timeout_s:g} s"
                    ) from None
                time.sleep(delay * (1 + random.random()))  # noqa: S311 (jitter, not a secret)
                delay = min(delay * 2, 0.2)
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn
