"""The Home Assistant bridge's payload shaping, over a real SQLite store filled through the
Store API (as the ingest fills it) and read back through the bridge's read-only connection."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from dashboard.homeassistant import (
    ENTITIES,
    ReadOnlyStore,
    Topics,
    UnitReport,
    discovery,
    node_id,
    read_reports,
    removal_topics,
    state_payload,
)
from dashboard.revocations import RevocationFile
from dashboard.store import Store
from dashboard.web.views import Thresholds
from provisioning.inventory import Revocation
from provisioning.station import write_revocations_file

NOW = 1_800_000_000.0
LIMITS = Thresholds(stale_after_s=180, offline_after_s=300)


class Clock:
    now = NOW

    def __call__(self) -> float:
        return self.now


def add(store: Store, device: str, seq: int, kind: str, body: Any) -> None:
    message = {"v": 1, "type": kind, "boot": "b1", "ts": int(store.now() * 1000), "body": body}
    assert store.add_event(device, seq, f"camveil/v1/{device}/event/{kind}", message)


def presence(people: int | None, faces: int | None, eps: float | None, end_ms: int) -> Any:
    body: dict[str, Any] = {
        "start": end_ms - 60_000,
        "end": end_ms,
        "zones": [
            {"zone": "door", "people": 9, "faces": 9},
            {"zone": "all", "people": people, "faces": faces},
        ],
        "visitors": {"start": 0, "end": end_ms, "unique": 42, "dwell": []},
    }
    if eps is not None:
        body["dp"] = {"eps": eps, "min": 2}
    return body


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    clock = Clock()
    with Store(tmp_path / "dash.sqlite", clock) as s:
        s.set_site("cv-1", "lobby")
        add(s, "cv-1", 1, "status", {"state": "online"})
        add(s, "cv-1", 2, "health", {"fps": 9.46, "outbox": {"depth": 1}})
        add(s, "cv-1", 3, "presence", presence(4, 2, 0.5, int(NOW * 1000) - 5_000))
        add(s, "cv-1", 4, "snapshot", {"jpeg": b"\xff\xd8" + b"x" * 100, "w": 8, "h": 8})
        add(s, "cv-2", 1, "status", {"state": "offline"})
        add(s, "cv-2", 2, "presence", presence(7, 7, None, int(NOW * 1000)))
        add(s, "cv_3", 1, "status", {"state": "online"})
        add(s, "cv_3", 2, "health", {"fps": 5.0})
        add(s, "cv_3", 3, "presence", presence(3, 1, None, int(NOW * 1000)))
        yield s


def reports(path: Path, revocations: RevocationFile | None = None) -> dict[str, UnitReport]:
    with ReadOnlyStore(path) as ro:
        return {r.device: r for r in read_reports(ro, NOW + 1, LIMITS, revocations)}


def test_online_unit_reports_its_noised_whole_view_counts(store: Store, tmp_path: Path) -> None:
    got = reports(tmp_path / "dash.sqlite")
    one = got["cv-1"]
    assert (one.status, one.online, one.fps, one.site) == ("online", True, 9.46, "lobby")
    assert (one.people, one.faces, one.noised, one.epsilon) == (4, 2, True, 0.5)
    state = state_payload(one)
    assert state == {
        "status": "online",
        "online": True,
        "fps": 9.46,
        "people": 4,
        "faces": 2,
        "noised": True,
        "epsilon": 0.5,
        "window_end": datetime.fromtimestamp(NOW - 5, tz=timezone.utc).isoformat(),
    }
    # only these keys: nothing of the snapshot, zones, or visitor counts
    text = json.dumps(state)
    assert "door" not in text and "42" not in text and "jpeg" not in text
    exact = got["cv_3"]
    assert (exact.people, exact.noised, exact.epsilon) == (3, False, None)


def test_offline_unit_has_no_current_values(store: Store, tmp_path: Path) -> None:
    two = reports(tmp_path / "dash.sqlite")["cv-2"]
    assert two.status == "offline" and not two.online
    assert (two.fps, two.people, two.faces, two.epsilon) == (None, None, None, None)


def test_stale_presence_window_is_withheld(store: Store, tmp_path: Path) -> None:
    with ReadOnlyStore(tmp_path / "dash.sqlite") as ro:
        later = NOW + LIMITS.stale_after_s + 10  # still online (heard within offline_after)
        one = {r.device: r for r in read_reports(ro, later, LIMITS)}["cv-1"]
    assert one.status == "online"
    assert (one.people, one.faces, one.fps) == (None, None, None)


def test_revoked_unit_is_its_status_only(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "revocations.json"
    write_revocations_file(path, [Revocation("0a", "cv-1", b"k" * 32, NOW - 60, "stolen")])
    one = reports(tmp_path / "dash.sqlite", RevocationFile(path))["cv-1"]
    assert one == UnitReport("cv-1", "lobby", "revoked")
    state = state_payload(one)
    assert state["status"] == "revoked" and state["online"] is False
    assert [k for k, v in state.items() if v is not None] == ["status", "online"]


def test_discovery_configs_carry_home_assistants_keys(store: Store, tmp_path: Path) -> None:
    topics = Topics("homeassistant", "camveil")
    one = reports(tmp_path / "dash.sqlite")["cv-1"]
    configs = discovery(one, topics)
    assert sorted(configs) == sorted(
        f"homeassistant/{c}/camveil_cv-1/{k}/config" for c, k, _, _ in ENTITIES
    )
    for topic, config in configs.items():
        json.dumps(config)  # JSON-serialisable
        assert config["state_topic"] == "camveil/cv-1/state"
        assert config["availability_topic"] == "camveil/bridge/availability"
        assert config["unique_id"] == f"camveil_cv-1_{topic.split('/')[3]}"
        assert config["device"] == {
            "identifiers": ["camveil_cv-1"],
            "name": "cv-1",
            "model": "camveil unit",
            "manufacturer": "camveil",
            "suggested_area": "lobby",
        }
    conn = configs["homeassistant/binary_sensor/camveil_cv-1/connectivity/config"]
    assert conn["default_entity_id"] == "binary_sensor.camveil_cv_1_connectivity"
    assert conn["device_class"] == "connectivity"
    people = configs["homeassistant/sensor/camveil_cv-1/people/config"]
    assert people["json_attributes_topic"] == "camveil/cv-1/state"
    assert "epsilon" in people["json_attributes_template"]
    assert "noised" in people["json_attributes_template"]
    status = configs["homeassistant/sensor/camveil_cv-1/status/config"]
    assert status["options"] == ["online", "silent", "offline", "unknown", "revoked"]


def test_node_ids_are_safe_and_one_to_one() -> None:
    assert node_id("cv-1") == "cv-1"
    assert node_id("cv_1") == "cv_5f_1"
    assert node_id("cv.1") == "cv_2e_1"
    assert node_id("cv_2e_1") != node_id("cv.1")
    topics = Topics("ha", "site/camveil")
    assert removal_topics("cv-1", topics)[-1] == "site/camveil/cv-1/state"
    assert len(removal_topics("cv-1", topics)) == len(ENTITIES) + 1


def test_read_only_store_never_writes(store: Store, tmp_path: Path) -> None:
    with ReadOnlyStore(tmp_path / "dash.sqlite") as ro, pytest.raises(sqlite3.OperationalError):
        ro.read("DELETE FROM units")
    assert len(store.units()) == 3


def test_store_without_tables_raises_a_sqlite_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    sqlite3.connect(path).close()
    with ReadOnlyStore(path) as ro, pytest.raises(sqlite3.OperationalError, match="no such table"):
        read_reports(ro, NOW, LIMITS)
