"""Config drift and the fleet's sparklines (real SQLite store, the real app through Starlette's
TestClient, the unit's own validator; fixtures from test_dashboard_web): a change set from the
page is pending until a health sent after its ack, in force when the unit reports the hashes of
what was set, drift (marked, filterable, alerted once) when it does not, and never drift for a
unit that reports no hashes."""

from __future__ import annotations

import re
from typing import Any

from starlette.testclient import TestClient

from contract.confighash import digest, key_hashes, keys_hash
from dashboard import drift, history
from dashboard.store import Store
from dashboard.web.alerts import AlertScanner
from dashboard.web.charts import SPARK_GAP, SPARK_W
from dashboard.web.views import Thresholds
from tests.unit.test_dashboard_web import (
    FakeSender,
    add,
    client,
    clock,
    csrf,
    health,
    login,
    sender,
    store,
)

__all__ = ["client", "clock", "sender", "store"]  # the fixtures used here


def reporting(overlay: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """A health body of a unit whose remote.toml holds ``overlay``."""
    d = digest({"detector": {"threads": 1}, **overlay}, overlay)
    config = {"effective": d.effective, "remote": d.remote, "remote_keys": dict(d.remote_keys)}
    return {**health(**kw), "config": config}


def states(c: TestClient, query: str = "") -> dict[str, str]:
    return dict(re.findall(r'data-device="([^"]+)" data-status="[^"]+" data-config="([^"]+)"',
                           c.get("/" + query).text))  # fmt: skip


def set_config(c: TestClient, device: str, text: str) -> None:
    r = c.post(
        f"/unit/{device}/command",
        data={"csrf": csrf(c, f"/unit/{device}"), "command": "set_config", "config": text},
    )
    assert r.status_code == 303  # fmt: skip


def drain(c: TestClient) -> None:
    web = c.app.state.web  # type: ignore[attr-defined]
    web.desk.stop()  # sends what is queued and records the acks
    web.desk.start()


def test_drift_pending_in_force_and_drift(
    client: TestClient, store: Store, sender: FakeSender
) -> None:
    for device in ("cv-1", "cv-2", "cv-old"):
        add(store, device, 1, "status", {"state": "online"})
    add(store, "cv-1", 2, "health", reporting({}))
    add(store, "cv-2", 2, "health", reporting({"events": {"tamper_every": 3}}))
    add(store, "cv-old", 2, "health", health())  # a unit from before config hashes
    login(client)
    assert states(client) == {"cv-1": "unset", "cv-2": "unset", "cv-old": "unknown"}
    page = client.get("/").text
    assert "unknown" in page and keys_hash({})[:10] not in page  # effective hashes, not overlay

    set_config(client, "cv-1", "detector.threads=2\nevents.health_interval_s=30")
    set_config(client, "cv-old", "detector.threads=2")
    assert states(client)["cv-1"] == "pending"  # sent, no ack yet
    drain(client)
    ack_seq = sender.ack_seq - 1  # cv-1's ack
    assert states(client) == {"cv-1": "pending", "cv-2": "unset", "cv-old": "unknown"}

    # a health the unit sent before the ack (lower seq, same boot) still says the old config
    add(store, "cv-1", ack_seq - 1, "health", reporting({}))
    assert states(client)["cv-1"] == "pending"
    overlay = {"detector": {"threads": 2}, "events": {"health_interval_s": 30.0}}  # 30.0 == 30
    add(store, "cv-1", ack_seq + 1, "health", reporting(overlay))
    assert states(client) == {"cv-1": "ok", "cv-2": "unset", "cv-old": "unknown"}
    unit = client.get("/unit/cv-1").text
    assert 'data-state="ok"' in unit and keys_hash(key_hashes(overlay)) in unit
    assert "detector.threads, events.health_interval_s" in unit

    scanner = AlertScanner(store, Thresholds(), offline_alert_after_s=120)
    scanner.scan()
    # the overlay was set aside on the unit (remote.toml.rejected after an update): drift
    add(store, "cv-1", ack_seq + 2, "health", reporting({"detector": {"threads": 2}}))
    assert states(client)["cv-1"] == "drift"
    assert states(client, "?config=drift") == {"cv-1": "drift"}
    assert set(states(client, "?config=unknown")) == {"cv-old"}
    assert re.findall(r'data-device="([^"]+)"', client.get("/?sort=drift").text)[0] == "cv-1"
    unit = client.get("/unit/cv-1").text
    assert 'data-state="drift"' in unit and "not set on the unit: events.health_interval_s" in unit
    assert scanner.scan() == 1 and scanner.scan() == 0  # raised once
    metrics = client.get("/metrics").text
    assert 'camveil_unit_config_drift{device="cv-1",site=""} 1.0' in metrics
    assert 'camveil_unit_config_drift{device="cv-2"' not in metrics  # nothing set
    assert 'camveil_unit_config_drift{device="cv-old"' not in metrics  # no hashes: unknown
    # another value on the unit: a new drift, a new alert
    changed = {"detector": {"threads": 4}, "events": {"health_interval_s": 30}}
    add(store, "cv-1", ack_seq + 3, "health", reporting(changed))
    assert scanner.scan() == 1
    alerts = client.get("/alerts").text
    assert alerts.count('data-kind="drift"') == 2
    assert "other value: detector.threads" in alerts
    # set again from the page: in force again, no alert for it
    sender.ack_seq = 200  # the unit's seqs went on meanwhile
    set_config(client, "cv-1", "detector.threads=2")
    drain(client)
    add(store, "cv-1", sender.ack_seq + 1, "health", reporting({**changed, **overlay}))
    assert states(client)["cv-1"] == "ok"
    assert scanner.scan() == 0
    assert 'camveil_unit_config_drift{device="cv-1",site=""} 0.0' in client.get("/metrics").text
    # the old unit, even with a change set for it, is never drift
    add(store, "cv-old", 50, "health", health())
    assert states(client)["cv-old"] == "unknown"
    assert scanner.scan() == 0
    assert store.read("SELECT device, COUNT(*) FROM alerts WHERE kind = 'drift'") == [("cv-1", 2)]


def test_a_restart_after_the_ack_is_judged_by_unit_time(
    client: TestClient, store: Store, sender: FakeSender, clock: Any
) -> None:
    add(store, "cv-1", 1, "status", {"state": "online"})
    login(client)
    set_config(client, "cv-1", "detector.threads=2")
    drain(client)  # acked in boot b1 at unit time 0 ms
    add(store, "cv-1", 1, "health", reporting({}), boot="b2")  # a new boot, later: overlay lost
    assert states(client)["cv-1"] == "drift"


def test_fleet_sparklines_from_one_query(client: TestClient, store: Store, clock: Any) -> None:
    now = clock.now
    add(store, "cv-1", 1, "status", {"state": "online"})
    add(store, "cv-2", 1, "status", {"state": "online"})
    for i, minutes in enumerate((70, 50, 40, 30, 20, 10, 1)):  # the first is older than 1 h
        ts = int((now - minutes * 60) * 1000)
        message = {"v": 1, "type": "health", "boot": "b1", "ts": ts,
                   "body": {**health(fps=5.0 + i), "temp_c": None}}  # fmt: skip
        assert store.add_event("cv-1", 10 + i, "camveil/v1/cv-1/event/health", message)
    add(store, "cv-2", 2, "health", health())
    rows = store.read(history.SERIES_SQL, (history.first_bucket(now),))
    series = history.series(rows, now)
    assert [v for v in series["cv-1"].fps if v is not None] == [6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    assert set(series["cv-1"].temp) == {None}  # the unit reports no temperature
    login(client)
    page = client.get("/").text
    row1 = re.search(r'<tr data-device="cv-1".*?</tr>', page, re.S)
    row2 = re.search(r'<tr data-device="cv-2".*?</tr>', page, re.S)
    assert row1 and row2
    # one small chart per unit: fps and outbox side by side, no temperature (none reported)
    assert row1.group(0).count('<svg class="trend"') == 1
    assert 'title="last hour: fps 6 to 11; outbox 3 to 3"' in row1.group(0)
    path = re.search(r'<path d="([^"]+)"', row1.group(0))
    assert path
    fps, outbox = re.findall(r"M\d+ \d+[^M]*", path.group(1))
    assert fps.startswith("M") and fps.count("l") == 5  # six points, one line
    assert outbox.startswith(
        f"M{SPARK_W + SPARK_GAP + round(2 * SPARK_W / 19)} "
    )  # from 2nd bucket
    assert row2.group(0).count('<svg class="trend"') == 1  # one health: three short dashes
    assert len(re.findall(r"M\d+ \d+h-?2", row2.group(0))) == 3


def test_history_is_pruned_after_a_day(store: Store, clock: Any) -> None:
    old = {"v": 1, "type": "health", "boot": "b1", "ts": int((clock.now - 2 * 86400) * 1000),
           "body": health()}  # fmt: skip
    assert store.add_event("cv-1", 1, "camveil/v1/cv-1/event/health", old)
    assert store.read("SELECT COUNT(*) FROM health_history")[0][0] == 0  # pruned at once
    add(store, "cv-1", 2, "health", health())
    add(store, "cv-1", 3, "health", health(fps=1.5))
    assert store.read("SELECT n, fps_sum, outbox, temp FROM health_history") == [(2, 11.0, 3, 51.5)]


def test_insane_health_values_are_not_drawn(client: TestClient, store: Store) -> None:
    add(store, "cv-1", 1, "status", {"state": "online"})
    body = {**health(), "fps": float("inf"), "temp_c": float("nan"), "outbox": {"depth": -1}}
    add(store, "cv-1", 2, "health", body)
    assert store.read("SELECT n, fps_sum, outbox, temp FROM health_history") == [
        (1, None, None, None)
    ]
    login(client)
    assert client.get("/").status_code == 200


def test_a_change_never_answered_is_not_waited_for_forever(
    client: TestClient, store: Store, clock: Any
) -> None:
    add(store, "cv-1", 1, "status", {"state": "online"})
    add(store, "cv-1", 2, "health", reporting({}))
    with store.transaction() as conn:  # sent by a dashboard that stopped before the ack came
        conn.execute(
            "INSERT INTO commands (id, device, name, args, operator, sent_at, status) "
            "VALUES ('op-9', 'cv-1', 'set_config', '{}', 'alice', ?, 'sent')",
            (clock.now,),
        )
    login(client)
    assert states(client)["cv-1"] == "pending"
    clock.now += drift.IN_FLIGHT_S + 1
    assert states(client)["cv-1"] == "unset"
