"""Envelopes from devices the backend does not know yet, kept sealed until the inventory changes.

A unit provisioned while the dashboard runs publishes before the ingest has re-read the station's
device list; the broker has already acknowledged those messages to the unit, so dropping them would
lose them for good. Instead the raw ``(topic, payload)`` goes into the store's ``held`` table
(schema v2), unopened: nothing in it is trusted, decrypted or shown. When the device list changes,
:class:`~dashboard.ingest.Ingest` takes the rows whose signing key id is now known (or now revoked)
and runs them through the normal path: verified, decrypted, de-duplicated on (device, boot, seq)
and stored, or counted as a rejection (a forgery: ``bad_signature``; ``revoked``) and removed.

Bounds (:class:`HeldLimits`): per claimed device (the ``<device>`` of the topic, which the broker's
ACL ties to the publisher's certificate, so one unit cannot push out another's envelopes beyond
the total), in total (rows and bytes), and by age. The oldest go first; every eviction is counted
as the rejection ``held_evicted`` of its claimed device.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from dashboard.store import Store

EVICTED: Final = "held_evicted"


@dataclass(frozen=True)
class HeldLimits:
    per_device: int = 1000
    """Envelopes kept per claimed device."""
    total: int = 20000
    """Envelopes kept in all."""
    total_bytes: int = 64 * 1024 * 1024
    """Sum of payload sizes kept in all (a snapshot envelope is up to 4 MiB)."""
    max_age_s: float = 7 * 24 * 3600.0
    """Older envelopes are evicted (a unit that is never provisioned here)."""

    def __post_init__(self) -> None:
        if min(self.per_device, self.total, self.total_bytes) < 1 or self.max_age_s <= 0:
            raise ValueError("held limits must be positive")


@dataclass(frozen=True)
class HeldEnvelope:
    id: int
    device: str
    """The claimed device (from the topic)."""
    kid: str
    """The key id the envelope says it is signed with (not verified)."""
    topic: str
    payload: bytes


@dataclass(frozen=True)
class HeldInfo:
    count: int
    bytes: int
    oldest_at: float


def hold(
    conn: sqlite3.Connection,
    envelopes: Sequence[tuple[str, str, str, bytes]],
    now: float,
    limits: HeldLimits,
) -> Counter[str]:
    """Keep ``(device, kid, topic, payload)`` envelopes inside the caller's transaction, then
    evict down to ``limits``; returns the evicted count per claimed device."""
    for device, kid, topic, payload in envelopes:
        conn.execute(
            "INSERT INTO held (device, kid, topic, payload, size, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (device, kid, topic, payload, len(payload), now),
        )
    evicted: Counter[str] = Counter()
    _drop(conn, "received_at < ?", (now - limits.max_age_s,), evicted)
    for device in {e[0] for e in envelopes}:
        (count,) = conn.execute("SELECT count(*) FROM held WHERE device = ?", (device,)).fetchone()
        if count > limits.per_device:
            _drop(
                conn,
                "id IN (SELECT id FROM held WHERE device = ? ORDER BY id LIMIT ?)",
                (device, count - limits.per_device),
                evicted,
            )
    while True:
        count, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM held").fetchone()
        if count <= limits.total and size <= limits.total_bytes:
            return evicted
        excess = max(count - limits.total, 1)
        _drop(conn, "id IN (SELECT id FROM held ORDER BY id LIMIT ?)", (excess,), evicted)


def _drop(
    conn: sqlite3.Connection, where: str, args: tuple[object, ...], into: Counter[str]
) -> None:
    for (device,) in conn.execute(f"DELETE FROM held WHERE {where} RETURNING device", args):  # noqa: S608 - fixed fragments
        into[device] += 1


def retryable(
    store: Store, wanted: Callable[[str], bool], after_id: int = 0, limit: int = 500
) -> list[HeldEnvelope]:
    """Up to ``limit`` held envelopes with id > ``after_id`` (oldest first) whose key id passes
    ``wanted``; an empty list when none is left."""
    out: list[HeldEnvelope] = []
    while not out:
        rows = store.query(
            "SELECT id, device, kid, topic, payload FROM held WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        if not rows:
            return []
        out = [HeldEnvelope(*r) for r in rows if wanted(r[2])]
        after_id = rows[-1][0]
    return out


def release(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Remove held envelopes (opened and stored, or rejected) inside the caller's transaction."""
    conn.executemany("DELETE FROM held WHERE id = ?", [(i,) for i in ids])


def summary(store: Store) -> dict[str, HeldInfo]:
    """Claimed device -> what is held for it (for the dashboard's quarantine view)."""
    rows = store.query(
        "SELECT device, count(*), sum(size), min(received_at) FROM held GROUP BY device"
    )
    return {d: HeldInfo(int(n), int(b), float(t)) for d, n, b, t in rows}
