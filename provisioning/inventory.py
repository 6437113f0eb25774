"""The station's inventory of units (SQLite): who was provisioned when, with which keys.

One row per unit, keyed by device id, unique by Ed25519 public key. A row is ``pending`` from
the moment the station has built a bundle for the unit (the exact bundle bytes are kept, so a
retry after a station restart resends the same bundle and the unit's answer stays idempotent)
and ``provisioned`` once the unit proved possession of its key by signing that bundle.

Certificates issued after provisioning (renewals over MQTT, :mod:`provisioning.renewal`) are
kept in ``certificates``: ``issued`` when sent to the unit, ``current`` once the unit said it
connected with it, ``superseded`` (the unit replaced it: it goes into the CRL until it expires)
or ``revoked`` (the unit was revoked). A unit without such rows still uses the certificate of
its bundle.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

from contract.sqlitewal import connect_wal

ProvisioningStatus = Literal["pending", "provisioned"]
CertificateState = Literal["issued", "current", "superseded", "revoked"]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS units (
    device          TEXT PRIMARY KEY,
    ed25519         BLOB NOT NULL UNIQUE,
    x25519          BLOB NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'provisioned')),
    site            TEXT NOT NULL,
    bundle          BLOB NOT NULL,
    created_at      REAL NOT NULL,
    provisioned_at  REAL
);
-- units taken out of the fleet (`camveil station revoke`): their certificate serial goes into
-- the CRL, their row leaves `units`, and their key may never be provisioned again
CREATE TABLE IF NOT EXISTS revocations (
    serial          TEXT PRIMARY KEY,  -- certificate serial number, hex (SQLite has no 160-bit int)
    device          TEXT NOT NULL,
    ed25519         BLOB NOT NULL,
    revoked_at      REAL NOT NULL,
    reason          TEXT NOT NULL
);
-- device certificates issued by renewal (and the bundle's, recorded at a unit's first renewal)
CREATE TABLE IF NOT EXISTS certificates (
    serial          TEXT PRIMARY KEY,  -- hex
    device          TEXT NOT NULL,
    state           TEXT NOT NULL
                    CHECK (state IN ('issued', 'current', 'superseded', 'revoked')),
    not_after       REAL NOT NULL,
    issued_at       REAL NOT NULL,
    changed_at      REAL NOT NULL,     -- when it got its state (the CRL's revocation date)
    cert            BLOB NOT NULL      -- PEM
);
CREATE INDEX IF NOT EXISTS certificates_device ON certificates (device);
"""


@dataclass(frozen=True)
class UnitRecord:
    device: str
    ed25519: bytes
    x25519: bytes
    state: ProvisioningStatus
    site: str
    bundle: bytes
    created_at: float
    provisioned_at: float | None = None


@dataclass(frozen=True)
class Revocation:
    """A unit's certificate revoked by the station."""

    serial: str  # hex
    device: str
    ed25519: bytes
    revoked_at: float
    reason: str


@dataclass(frozen=True)
class CertificateRecord:
    """A device certificate the station issued (see the module docstring)."""

    serial: str  # hex
    device: str
    state: CertificateState
    not_after: float
    issued_at: float
    changed_at: float
    cert: bytes  # PEM


class Inventory:
    """``with Inventory(path) as inv:`` opens (and creates, 0600) the database."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def __enter__(self) -> Inventory:
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._db = connect_wal(self.path, synchronous="FULL")
        self._db.executescript(SCHEMA)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("Inventory used outside its `with` block")
        return self._db

    def by_ed25519(self, ed25519: bytes) -> UnitRecord | None:
        row = self.db.execute(_SELECT + " WHERE ed25519 = ?", (ed25519,)).fetchone()
        return _record(row) if row else None

    def by_device(self, device: str) -> UnitRecord | None:
        row = self.db.execute(_SELECT + " WHERE device = ?", (device,)).fetchone()
        return _record(row) if row else None

    def add_pending(self, record: UnitRecord) -> None:
        """Record a bundle built for a unit (replaces an earlier pending row of the same unit)."""
        with self._transaction():
            self.db.execute(
                "DELETE FROM units WHERE (device = ? OR ed25519 = ?) AND state = 'pending'",
                (record.device, record.ed25519),
            )
            self.db.execute(
                "INSERT INTO units (device, ed25519, x25519, state, site, bundle, created_at) "
                "VALUES (?, ?, ?, 'pending', ?, ?, ?)",
                (
                    record.device,
                    record.ed25519,
                    record.x25519,
                    record.site,
                    record.bundle,
                    record.created_at,
                ),
            )

    def mark_provisioned(
        self,
        device: str,
        publish: Callable[[list[UnitRecord]], None] = lambda units: None,
        at: float | None = None,
    ) -> None:
        """Mark ``device`` provisioned and call ``publish`` with every provisioned unit, inside
        one write transaction: stations sharing this inventory publish one after the other, so
        the last file written always lists every unit."""
        with self._transaction():
            self.db.execute(
                "UPDATE units SET state = 'provisioned', provisioned_at = ? WHERE device = ?",
                (time.time() if at is None else at, device),
            )
            publish(self.units("provisioned"))

    def revoke(
        self,
        device: str,
        serial: int,
        reason: str,
        publish: Callable[[list[UnitRecord], list[Revocation]], None],
        at: float | None = None,
    ) -> Revocation:
        """Take ``device`` out of the inventory and record the revocation of its certificate
        ``serial`` (and of every other certificate it was issued: ``certificates`` rows become
        ``revoked``); ``publish`` gets the remaining provisioned units and every revocation,
        inside the same write transaction (as :meth:`mark_provisioned`)."""
        with self._transaction():
            record = self.by_device(device)
            if record is None:
                raise KeyError(device)
            revocation = Revocation(
                f"{serial:x}", device, record.ed25519, time.time() if at is None else at, reason
            )
            self.db.execute(
                "INSERT OR IGNORE INTO revocations (serial, device, ed25519, revoked_at, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    revocation.serial,
                    revocation.device,
                    revocation.ed25519,
                    revocation.revoked_at,
                    revocation.reason,
                ),
            )
            self.db.execute("DELETE FROM units WHERE device = ?", (device,))
            self.db.execute(
                "UPDATE certificates SET state = 'revoked', changed_at = ? WHERE device = ?",
                (revocation.revoked_at, device),
            )
            publish(self.units("provisioned"), self.revocations())
        return revocation

    def add_certificate(self, record: CertificateRecord) -> None:
        """Record a certificate issued to ``record.device`` (INSERT OR IGNORE: a repeat of the
        same serial changes nothing)."""
        with self._transaction():
            self._insert_certificate(record)

    def _insert_certificate(self, record: CertificateRecord) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO certificates (serial, device, state, not_after, issued_at, "
            "changed_at, cert) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                record.serial,
                record.device,
                record.state,
                record.not_after,
                record.issued_at,
                record.changed_at,
                record.cert,
            ),
        )

    def certificates(self, device: str | None = None) -> list[CertificateRecord]:
        """Recorded certificates (of ``device``, or all), oldest first."""
        sql = (
            "SELECT serial, device, state, not_after, issued_at, changed_at, cert FROM certificates"
        )
        if device is None:
            rows = self.db.execute(sql + " ORDER BY issued_at, serial").fetchall()
        else:
            rows = self.db.execute(
                sql + " WHERE device = ? ORDER BY issued_at, serial", (device,)
            ).fetchall()
        return [CertificateRecord(*row) for row in rows]

    def make_current(
        self,
        device: str,
        serial: str,
        publish: Callable[[list[CertificateRecord]], None],
        first: CertificateRecord | None = None,
        at: float | None = None,
    ) -> list[CertificateRecord]:
        """The unit ``device`` now uses certificate ``serial``: every other one of its
        ``issued``/``current`` certificates becomes ``superseded``. ``first`` (the bundle's
        certificate, if not recorded yet) is recorded as superseded too. ``publish`` gets every
        superseded or revoked certificate inside the transaction (to rewrite the CRL); returns
        the certificates superseded now."""
        with self._transaction():
            if first is not None:
                self._insert_certificate(first)
            found = self.db.execute(
                "SELECT 1 FROM certificates WHERE device = ? AND serial = ? AND state != 'revoked'",
                (device, serial),
            ).fetchone()
            if found is None:
                raise KeyError(serial)
            before = {c.serial for c in self.certificates(device) if c.state == "superseded"}
            when = time.time() if at is None else at
            self.db.execute(
                "UPDATE certificates SET state = 'superseded', changed_at = ? WHERE device = ? "
                "AND serial != ? AND state IN ('issued', 'current')",
                (when, device, serial),
            )
            self.db.execute(
                "UPDATE certificates SET state = 'current', changed_at = ? WHERE serial = ?",
                (when, serial),
            )
            now = self.certificates(device)
            publish(self.certificates_in_crl())
        return [c for c in now if c.state == "superseded" and c.serial not in before]

    def certificates_in_crl(self) -> list[CertificateRecord]:
        """Every superseded or revoked certificate (whether expired or not)."""
        return [c for c in self.certificates() if c.state in ("superseded", "revoked")]

    def revocations(self) -> list[Revocation]:
        rows = self.db.execute(
            "SELECT serial, device, ed25519, revoked_at, reason FROM revocations "
            "ORDER BY revoked_at, serial"
        ).fetchall()
        return [Revocation(*row) for row in rows]

    def revoked_key(self, ed25519: bytes) -> Revocation | None:
        """The revocation of a unit with this Ed25519 key, if any."""
        row = self.db.execute(
            "SELECT serial, device, ed25519, revoked_at, reason FROM revocations "
            "WHERE ed25519 = ? LIMIT 1",
            (ed25519,),
        ).fetchone()
        return Revocation(*row) if row else None

    def units(self, state: ProvisioningStatus | None = None) -> list[UnitRecord]:
        if state is None:
            rows = self.db.execute(_SELECT + " ORDER BY device").fetchall()
        else:
            rows = self.db.execute(
                _SELECT + " WHERE state = ? ORDER BY device", (state,)
            ).fetchall()
        return [_record(r) for r in rows]

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


_SELECT: Final = (
    "SELECT device, ed25519, x25519, state, site, bundle, created_at, provisioned_at FROM units"
)


def _record(row: tuple[object, ...]) -> UnitRecord:
    return UnitRecord(*row)  # type: ignore[arg-type]
