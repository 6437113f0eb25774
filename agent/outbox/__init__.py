"""Durable outbox of sealed envelopes: stdlib sqlite3 in WAL mode, one row per envelope.

A row leaves only when the broker acknowledged it (or the backend's receipt named it) or when a
bound evicts it; every eviction and refusal is counted in the same database. Delivery is at least
once; the receiver de-duplicates on (device, seq). The package, by job:

- :mod:`agent.outbox.outbox`: :class:`Outbox`, the queue and its states (queued, in flight,
  published, receipted), durability, bad rows;
- :mod:`agent.outbox.storage`: the connection under one lock, depth and size, persisted counts,
  eviction by age, size, full disk and invalid rows, the reserve file;
- :mod:`agent.outbox.database`: the SQLite file: schema, migration, pragmas, integrity check,
  permissions, moving a corrupt file aside;
- :mod:`agent.outbox.counters`: the counter names and :class:`OutboxStats`.
"""

from agent.outbox.counters import (
    CORRUPT_RECOVERED,
    EVICTED_AGE,
    EVICTED_BYTES,
    EVICTED_DISK_FULL,
    EVICTED_INVALID,
    RECEIPTED,
    REJECTED_FULL,
    REJECTED_TOO_LARGE,
    REPUBLISHED,
    DeleteOn,
    OutboxStats,
)
from agent.outbox.database import SCHEMA_VERSION
from agent.outbox.outbox import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_BYTES,
    DEFAULT_RECEIPT_TIMEOUT_S,
    MAX_RECEIPT_TIMEOUT_S,
    Outbox,
    OutboxItem,
)
from agent.outbox.storage import DEFAULT_RESERVE_BYTES, RESERVE_SUFFIX, Synchronous

__all__ = [
    "CORRUPT_RECOVERED",
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_RECEIPT_TIMEOUT_S",
    "DEFAULT_RESERVE_BYTES",
    "EVICTED_AGE",
    "EVICTED_BYTES",
    "EVICTED_DISK_FULL",
    "EVICTED_INVALID",
    "MAX_RECEIPT_TIMEOUT_S",
    "RECEIPTED",
    "REJECTED_FULL",
    "REJECTED_TOO_LARGE",
    "REPUBLISHED",
    "RESERVE_SUFFIX",
    "SCHEMA_VERSION",
    "DeleteOn",
    "Outbox",
    "OutboxItem",
    "OutboxStats",
    "Synchronous",
]
