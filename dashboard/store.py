"""The dashboard's SQLite store (WAL): events, per-unit latest status, rejections, operators.

One file, one connection guarded by a lock (paho's network thread writes, the web threads read).
The schema is versioned: ``schema_version`` holds one row and :func:`migrate` brings an older
file up step by step (:data:`MIGRATIONS`; v1 is the first). Events are unique on
(device, boot, seq): a re-delivered message is counted as a duplicate, never stored twice.
Rejected messages are never stored, only counted per claimed device and reason.

The snapshot audit log lives in :mod:`dashboard.audit` on the same connection; envelopes from
devices the backend does not know yet wait, sealed, in ``held`` (:mod:`dashboard.held`, v2).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cbor2

from contract.errors import ConfigError
from contract.sqlitewal import connect_wal
from dashboard import history

SCHEMA_VERSION: Final = 4

_V1: Final = """
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    device      TEXT NOT NULL,
    boot        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    ts          INTEGER,
    type        TEXT NOT NULL,
    topic       TEXT NOT NULL,
    body        BLOB NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (device, boot, seq)
);
CREATE INDEX events_by_device ON events (device, id);
CREATE TABLE units (
    device       TEXT PRIMARY KEY,
    site         TEXT NOT NULL DEFAULT '',
    state        TEXT NOT NULL DEFAULT 'unknown',
    state_at     REAL,
    last_seen    REAL,
    health       TEXT,
    health_at    REAL
);
CREATE TABLE rejections (
    device  TEXT NOT NULL,
    reason  TEXT NOT NULL,
    count   INTEGER NOT NULL,
    last_at REAL NOT NULL,
    PRIMARY KEY (device, reason)
);
CREATE TABLE operators (
    name       TEXT PRIMARY KEY,
    hash       TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE audit (
    id        INTEGER PRIMARY KEY,
    at        REAL NOT NULL,
    operator  TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
"""

# v2: the web page's own state (dashboard.web): alerts and what raised them, operator commands
# and their acks; an index for the unit page (latest snapshot, presence series per device).
_V2: Final = """
CREATE TABLE alerts (
    id       INTEGER PRIMARY KEY,
    key      TEXT NOT NULL UNIQUE,
    device   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL,
    at       REAL NOT NULL,
    acked_by TEXT,
    acked_at REAL
);
CREATE INDEX alerts_by_ack ON alerts (acked_at, id);
CREATE TABLE alert_watch (
    device  TEXT PRIMARY KEY,
    boot    TEXT,
    models  TEXT,
    evicted INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE alert_cursor (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE commands (
    id       TEXT PRIMARY KEY,
    device   TEXT NOT NULL,
    name     TEXT NOT NULL,
    args     TEXT NOT NULL,
    operator TEXT NOT NULL,
    sent_at  REAL NOT NULL,
    status   TEXT NOT NULL,
    reason   TEXT NOT NULL DEFAULT '',
    done_at  REAL
);
CREATE INDEX commands_by_device ON commands (device, sent_at);
CREATE INDEX events_by_device_type ON events (device, type, id)
"""

# v3: envelopes signed by a key the backend does not trust yet, kept sealed (never opened, never
# shown) until the inventory changes; bounded per claimed device and in total (dashboard.held).
_V3_HELD: Final = """
CREATE TABLE held (
    id          INTEGER PRIMARY KEY,
    device      TEXT NOT NULL,
    kid         TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    size        INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX held_by_device ON held (device, id);
CREATE INDEX held_by_kid ON held (kid, id)
"""

# v4: config drift and sparklines. Where each unit's latest health sits in its own sequence
# (boot, seq, ts: was it sent after the ack of a config change?); per unit, the config keys set
# from this dashboard as hashes (dashboard.drift); downsampled health (dashboard.history).
_V4_DRIFT_HISTORY: Final = """
ALTER TABLE units ADD COLUMN health_boot TEXT;
ALTER TABLE units ADD COLUMN health_seq INTEGER;
ALTER TABLE units ADD COLUMN health_ts INTEGER;
CREATE TABLE config_set (
    device     TEXT PRIMARY KEY,
    keys       TEXT NOT NULL,
    hash       TEXT NOT NULL,
    command_id TEXT NOT NULL,
    operator   TEXT NOT NULL,
    set_at     REAL NOT NULL,
    ack_boot   TEXT,
    ack_seq    INTEGER,
    ack_ts     INTEGER
);
CREATE TABLE health_history (
    bucket  INTEGER NOT NULL,
    device  TEXT NOT NULL,
    n       INTEGER NOT NULL,
    fps_sum REAL,
    outbox  INTEGER,
    temp    REAL,
    PRIMARY KEY (bucket, device)
) WITHOUT ROWID
"""

MIGRATIONS: Final[Mapping[int, str]] = {1: _V1, 2: _V2, 3: _V3_HELD, 4: _V4_DRIFT_HISTORY}
"""Version N -> the SQL that brings version N-1 to N (0 = an empty file)."""


@dataclass(frozen=True)
class NewEvent:
    """A verified, decrypted message to store (``message`` is the whole plaintext map)."""

    device: str
    seq: int
    topic: str
    message: Mapping[str, Any]


@dataclass(frozen=True)
class StoredEvent:
    id: int
    device: str
    boot: str
    seq: int
    ts: int | None
    type: str
    received_at: float
    body: Any


@dataclass(frozen=True)
class UnitView:
    """One unit's latest known state. ``health`` is the body of its last health event."""

    device: str
    site: str
    state: str
    state_at: float | None
    last_seen: float | None
    health: Mapping[str, Any] | None
    health_at: float | None

    @property
    def fps(self) -> float | None:
        return _num(self.health, "fps")

    @property
    def drops(self) -> int | None:
        dropped = (self.health or {}).get("dropped")
        if not isinstance(dropped, Mapping):
            return None
        return sum(int(v) for v in dropped.values() if isinstance(v, int | float))

    @property
    def outbox_depth(self) -> int | None:
        outbox = (self.health or {}).get("outbox")
        depth = outbox.get("depth") if isinstance(outbox, Mapping) else None
        return depth if isinstance(depth, int) else None

    @property
    def temperature(self) -> float | None:
        # "temp_c" on the wire (docs/events.cddl); "cpu_temp_c" is the agent's field name
        found = _num(self.health, "temp_c")
        return found if found is not None else _num(self.health, "cpu_temp_c")

    @property
    def cert_not_after(self) -> float | None:
        """notAfter (Unix seconds) of the TLS certificate the unit last reported using."""
        cert = (self.health or {}).get("cert")
        return _num(cert, "not_after") if isinstance(cert, Mapping) else None

    @property
    def cert_serial(self) -> str | None:
        cert = (self.health or {}).get("cert")
        serial = cert.get("serial") if isinstance(cert, Mapping) else None
        return serial if isinstance(serial, str) else None

    def cert_days_left(self, now: float) -> float | None:
        """Days until that certificate expires (negative: expired); None when not reported."""
        not_after = self.cert_not_after
        return None if not_after is None else (not_after - now) / 86400.0

    @property
    def versions(self) -> Mapping[str, str]:
        value = (self.health or {}).get("versions")
        return value if isinstance(value, Mapping) else {}

    @property
    def models(self) -> Mapping[str, str]:
        value = (self.health or {}).get("models")
        return value if isinstance(value, Mapping) else {}


def _num(m: Mapping[str, Any] | None, key: str) -> float | None:
    value = (m or {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION`; returns the version found before."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    found = int(row[0]) if row else 0
    if found > SCHEMA_VERSION:
        raise ConfigError(
            f"dashboard database has schema v{found}, this camveil knows up to "
            f"v{SCHEMA_VERSION}: upgrade camveil or point --db at another file"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


class Store:
    """The dashboard database. ``open()`` (or ``with``) connects and migrates."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], None]] = []

    # --- lifetime ---

    def open(self) -> Store:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect_wal(self._path, check_same_thread=False)
        migrate(conn)
        self._conn = conn
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection under the lock, in one IMMEDIATE transaction."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")  # a failed COMMIT (disk full) must not leave it open
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection().execute(sql, args).fetchall()

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only query (the web page's views, under the store's lock)."""
        return self._rows(sql, args)

    def now(self) -> float:
        return self._clock()

    def on_change(self, callback: Callable[[], None]) -> None:
        """Called (on the writer's thread) after every stored event or rejection."""
        self._listeners.append(callback)

    def notify(self) -> None:
        """Tell the listeners something changed (the web page's own writes: commands, alerts)."""
        self._changed()

    def _changed(self) -> None:
        for callback in self._listeners:
            callback()

    def notify_changed(self) -> None:
        """Run the :meth:`on_change` callbacks (after a batch written with :meth:`transaction`)."""
        self._changed()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read statement, under the lock (for readers built on the schema)."""
        return self._rows(sql, args)

    # --- ingest side ---

    def add_event(self, device: str, seq: int, topic: str, message: Mapping[str, Any]) -> bool:
        """Store one verified message; False if (device, boot, seq) is already stored."""
        with self.transaction() as conn:
            (stored,) = insert_events(conn, [NewEvent(device, seq, topic, message)], self._clock())
        if stored:
            self._changed()
        return stored

    def add_rejection(self, device: str, reason: str) -> None:
        """Count one rejected message for its claimed device (from the topic)."""
        with self.transaction() as conn:
            count_rejections(conn, {(device, reason): 1}, self._clock())
        self._changed()

    def set_site(self, device: str, site: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO units (device, site) VALUES (?, ?) "
                "ON CONFLICT (device) DO UPDATE SET site = excluded.site",
                (device, site),
            )

    # --- read side ---

    def units(self) -> list[UnitView]:
        rows = self._rows(
            "SELECT device, site, state, state_at, last_seen, health, health_at FROM units "
            "ORDER BY device"
        )
        return [_unit(r) for r in rows]

    def unit(self, device: str) -> UnitView | None:
        rows = self._rows(
            "SELECT device, site, state, state_at, last_seen, health, health_at FROM units "
            "WHERE device = ?",
            (device,),
        )
        return _unit(rows[0]) if rows else None

    def events(self, device: str, limit: int = 100) -> list[StoredEvent]:
        rows = self._rows(
            "SELECT id, device, boot, seq, ts, type, received_at, body FROM events "
            "WHERE device = ? ORDER BY id DESC LIMIT ?",
            (device, limit),
        )
        return [_event(r) for r in rows]

    def event_count(self) -> int:
        return int(self._rows("SELECT count(*) FROM events")[0][0])

    def latest_snapshot(self, device: str) -> StoredEvent | None:
        rows = self._rows(
            "SELECT id, device, boot, seq, ts, type, received_at, body FROM events "
            "WHERE device = ? AND type = 'snapshot' ORDER BY id DESC LIMIT 1",
            (device,),
        )
        return _event(rows[0]) if rows else None

    def event(self, event_id: int) -> StoredEvent | None:
        rows = self._rows(
            "SELECT id, device, boot, seq, ts, type, received_at, body FROM events WHERE id = ?",
            (event_id,),
        )
        return _event(rows[0]) if rows else None

    def rejections(self, device: str | None = None) -> dict[str, dict[str, int]]:
        """device -> reason -> count (one device, or all)."""
        sql = "SELECT device, reason, count FROM rejections"
        rows = self._rows(sql + " WHERE device = ?", (device,)) if device else self._rows(sql)
        out: dict[str, dict[str, int]] = {}
        for dev, reason, count in rows:
            out.setdefault(dev, {})[reason] = int(count)
        return out

    # --- operators ---

    def set_operator(self, name: str, password_hash: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO operators (name, hash, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET hash = excluded.hash",
                (name, password_hash, self._clock()),
            )

    def operator_hash(self, name: str) -> str | None:
        rows = self._rows("SELECT hash FROM operators WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def operator_count(self) -> int:
        return int(self._rows("SELECT count(*) FROM operators")[0][0])


def insert_events(conn: sqlite3.Connection, events: Sequence[NewEvent], now: float) -> list[bool]:
    """Insert ``events`` inside the caller's transaction; per event, False if its
    (device, boot, seq) was stored already. Updates each unit's last seen, state and health."""
    out: list[bool] = []
    seen: set[str] = set()
    healths = 0
    for event in events:
        message = event.message
        kind = str(message.get("type", "?"))
        ts = message.get("ts")
        body = message.get("body")
        cur = conn.execute(
            "INSERT OR IGNORE INTO events (device, boot, seq, ts, type, topic, body, "
            "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event.device,
                str(message.get("boot", "")),
                event.seq,
                ts if isinstance(ts, int) else None,
                kind,
                event.topic,
                cbor2.dumps(body),
                now,
            ),
        )
        stored = cur.rowcount == 1
        out.append(stored)
        if not stored:
            continue
        seen.add(event.device)
        if kind == "status" and isinstance(body, Mapping):
            _touch(conn, event.device, now)
            conn.execute(
                "UPDATE units SET state = ?, state_at = ? WHERE device = ?",
                (str(body.get("state", "unknown")), now, event.device),
            )
        elif kind == "health" and isinstance(body, Mapping):
            _touch(conn, event.device, now)
            conn.execute(
                "UPDATE units SET health = ?, health_at = ?, health_boot = ?, health_seq = ?, "
                "health_ts = ? WHERE device = ?",
                (
                    json.dumps(_jsonable(body), sort_keys=True),
                    now,
                    str(message.get("boot", "")),
                    event.seq,
                    ts if isinstance(ts, int) else None,
                    event.device,
                ),
            )
            history.record(conn, event.device, ts if isinstance(ts, int) else None, now, body)
            healths += 1
    for device in seen:
        _touch(conn, device, now)
    if healths:
        history.prune(conn, now)
    return out


def _touch(conn: sqlite3.Connection, device: str, now: float) -> None:
    conn.execute(
        "INSERT INTO units (device, last_seen) VALUES (?, ?) "
        "ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen",
        (device, now),
    )


def count_rejections(
    conn: sqlite3.Connection, counts: Mapping[tuple[str, str], int], now: float
) -> None:
    """Add ``counts`` ((claimed device, reason) -> n) inside the caller's transaction."""
    for (device, reason), n in counts.items():
        if n > 0:
            conn.execute(
                "INSERT INTO rejections (device, reason, count, last_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device, reason) DO UPDATE SET count = count + excluded.count, "
                "last_at = excluded.last_at",
                (device, reason, n, now),
            )


def _unit(row: tuple[Any, ...]) -> UnitView:
    device, site, state, state_at, last_seen, health, health_at = row
    return UnitView(
        device=device,
        site=site,
        state=state,
        state_at=state_at,
        last_seen=last_seen,
        health=json.loads(health) if health else None,
        health_at=health_at,
    )


def _event(row: tuple[Any, ...]) -> StoredEvent:
    event_id, device, boot, seq, ts, kind, received_at, body = row
    return StoredEvent(event_id, device, boot, seq, ts, kind, received_at, cbor2.loads(body))


_JSON_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def _jsonable(value: Any) -> Any:
    """Health bodies as JSON: bytes (none expected) as their length."""
    if type(value) in _JSON_SCALARS:  # most of a body: no ABC checks for them
        return value
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
