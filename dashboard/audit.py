"""The append-only, hash-chained audit log ("who saw which snapshot").

Each row stores ``hash = sha256(prev_hash || canonical(row))`` where ``canonical`` is the JSON
of (id, at, operator, action, target) with sorted keys, and ``prev_hash`` is the previous row's
hash (64 zeros for the first). Editing a row breaks its own hash; deleting or reordering rows
breaks the next row's ``prev_hash``. :func:`verify` walks the chain and names the first row that
does not match. The chain proves integrity against edits of the database file, not against
someone who can rewrite every later row too; anchoring the head hash elsewhere (an export, a
signed receipt) is future work.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Final

from dashboard.store import Store

GENESIS: Final = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    operator: str
    action: str
    target: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    rows: int
    first_bad: int | None = None
    """Id of the first row whose hash or link does not match."""


def row_hash(
    prev_hash: str, entry_id: int, at: float, operator: str, action: str, target: str
) -> str:
    canonical = json.dumps(
        {"id": entry_id, "at": at, "operator": operator, "action": action, "target": target},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def append(store: Store, operator: str, action: str, target: str) -> AuditEntry:
    """Add one entry at the head of the chain (one transaction: ids and links stay dense)."""
    at = store.now()
    with store.transaction() as conn:
        row = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        entry_id = (int(row[0]) + 1) if row else 1
        prev = str(row[1]) if row else GENESIS
        digest = row_hash(prev, entry_id, at, operator, action, target)
        conn.execute(
            "INSERT INTO audit (id, at, operator, action, target, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (entry_id, at, operator, action, target, prev, digest),
        )
    return AuditEntry(entry_id, at, operator, action, target, prev, digest)


def entries(store: Store, limit: int | None = None) -> list[AuditEntry]:
    with store.transaction() as conn:
        sql = "SELECT id, at, operator, action, target, prev_hash, hash FROM audit ORDER BY id"
        rows = conn.execute(sql).fetchall()
    found = [AuditEntry(*r) for r in rows]
    return found[-limit:] if limit else found


def verify(store: Store) -> ChainCheck:
    """Walk the chain from the first row; the first mismatch (edit, deletion, insertion)."""
    prev = GENESIS
    expected_id = 1
    rows = entries(store)
    for e in rows:
        if e.id != expected_id or e.prev_hash != prev:
            return ChainCheck(False, len(rows), e.id)
        if row_hash(prev, e.id, e.at, e.operator, e.action, e.target) != e.hash:
            return ChainCheck(False, len(rows), e.id)
        prev = e.hash
        expected_id += 1
    return ChainCheck(True, len(rows))
