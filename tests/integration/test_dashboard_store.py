"""The dashboard store on a real SQLite file: schema v1 migration, (device, boot, seq)
de-duplication, rejections counted per device, and the hash-chained audit log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from contract.topics import status_topic
from dashboard import audit
from dashboard.store import SCHEMA_VERSION, Store


def _msg(seq: int, boot: str = "b1") -> dict[str, object]:
    return {
        "v": 1,
        "device": "cv-1",
        "boot": boot,
        "seq": seq,
        "ts": 1,
        "type": "status",
        "body": {"state": "online"},
    }


def test_migrates_and_deduplicates_on_device_boot_seq(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        assert store.add_event("cv-1", 1, status_topic("cv-1"), _msg(1))
        assert not store.add_event("cv-1", 1, status_topic("cv-1"), _msg(1))
        assert store.add_event("cv-1", 1, status_topic("cv-1"), _msg(1, boot="b2"))
        store.add_rejection("cv-1", "bad_signature")
        store.add_rejection("cv-1", "bad_signature")
        assert store.event_count() == 2
        assert store.rejections("cv-1") == {"cv-1": {"bad_signature": 2}}
        unit = store.unit("cv-1")
        assert unit is not None and unit.state == "online"
    with Store(tmp_path / "d.db") as again:  # reopened: no second migration, data kept
        assert again.event_count() == 2
    conn = sqlite3.connect(tmp_path / "d.db")
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_audit_chain_detects_an_edited_row(tmp_path: Path) -> None:
    with Store(tmp_path / "d.db") as store:
        for i in range(3):
            audit.append(store, "alice", "view_snapshot", f"cv-1/{i}")
        assert audit.verify(store).ok
    conn = sqlite3.connect(tmp_path / "d.db")
    conn.execute("UPDATE audit SET operator = 'mallory' WHERE id = 2")
    conn.commit()
    conn.close()
    with Store(tmp_path / "d.db") as store:
        check = audit.verify(store)
        assert not check.ok and check.first_bad == 2
