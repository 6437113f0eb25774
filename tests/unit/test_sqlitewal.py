"""contract.sqlitewal: processes opening one database at the same moment all get in."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from contract.errors import ConfigError
from contract.sqlitewal import connect_wal


def _open_and_write(path: str, n: int, start: Any) -> None:
    start.wait()
    conn = connect_wal(Path(path))
    conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (?)", (n,))
    conn.close()


def test_processes_that_open_one_fresh_database_together_all_succeed(tmp_path: Path) -> None:
    # A bare `PRAGMA journal_mode=WAL` failed ~1 start in 40 with "database is locked" here.
    ctx = multiprocessing.get_context("fork")
    for round_ in range(30):
        path = tmp_path / f"db-{round_}.sqlite"
        start = ctx.Barrier(6)
        procs = [ctx.Process(target=_open_and_write, args=(str(path), n, start)) for n in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(30)
        assert [p.exitcode for p in procs] == [0] * 6, f"round {round_}"
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert sorted(r[0] for r in conn.execute("SELECT n FROM t")) == list(range(6))
        conn.close()


def test_a_database_locked_for_longer_than_the_timeout_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "held.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (n INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    began = time.monotonic()
    with pytest.raises(ConfigError, match="locked"):
        connect_wal(path, busy_timeout_s=0.3)
    assert time.monotonic() - began >= 0.3
    holder.execute("ROLLBACK")
    conn = connect_wal(path)  # released: now it opens
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    holder.close()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a database file, it is text" * 100)
    with pytest.raises(ConfigError, match="cannot open the database"):
        connect_wal(path)


def test_synchronous_level_is_checked_before_it_reaches_sql(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        connect_wal(tmp_path / "x.sqlite", synchronous="FULL; DROP TABLE t")
