"""The dashboard store on a real SQLite file: schema migrations (a new file, and a v3 file with
data), (device, boot, seq) de-duplication, rejections counted per device, and the hash-chained
audit log."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from contract.topics import status_topic
from dashboard import audit
from dashboard.store import MIGRATIONS, SCHEMA_VERSION, Store
from dashboard.web.views import Thresholds, fleet_row


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


def test_a_v3_store_is_migrated_with_its_units_kept(tmp_path: Path) -> None:
    """v4 adds where each unit's latest health sits (boot, seq, ts), the config set from the
    dashboard and the downsampled health history; a unit stored before keeps its health and is
    judged "unknown" (no config hashes), never drift."""
    conn = sqlite3.connect(tmp_path / "d.db")
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version in (1, 2, 3):
        conn.executescript(MIGRATIONS[version])
    conn.execute("INSERT INTO schema_version VALUES (3)")
    conn.execute(
        "INSERT INTO units (device, state, last_seen, health, health_at) "
        "VALUES ('cv-1', 'online', 5.0, '{\"fps\": 9.5}', 5.0)"
    )
    conn.commit()
    conn.close()
    with Store(tmp_path / "d.db", clock=lambda: 10.0) as store:
        row = fleet_row(store, "cv-1", 10.0, Thresholds())
        assert row is not None and row.unit.fps == 9.5 and row.config.state == "unknown"
        health = {"v": 1, "device": "cv-1", "boot": "b1", "seq": 7, "ts": 9000, "type": "health",
                  "body": {"fps": 8.0, "outbox": {"depth": 4}, "temp_c": None}}  # fmt: skip
        assert store.add_event("cv-1", 7, "camveil/v1/cv-1/event/health", health)
        assert store.read("SELECT health_boot, health_seq, health_ts FROM units") == [
            ("b1", 7, 9000)
        ]
        assert store.read(
            "SELECT bucket, device, n, fps_sum, outbox, temp FROM health_history"
        ) == [(0, "cv-1", 1, 8.0, 4, None)]
    conn = sqlite3.connect(tmp_path / "d.db")
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
