"""Ingest against a real mosquitto: genuine events stored once, forged / unknown-device /
replayed / malformed messages counted per claimed device and never stored."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from broker import HOST, Mosquitto, TestClient, TestPki
from sealing_unit import BOOT, Unit

from agent.events import seal_event
from contract.confighash import digest
from contract.envelope.keys import Identity, PeerKeys
from contract.topics import event_topic
from dashboard import held, history
from dashboard.drift import record_set
from dashboard.ingest import Ingest
from dashboard.listener import ListenerConfig
from dashboard.store import Store
from dashboard.web.views import Thresholds, fleet_row


def _wait(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_ingest_stores_genuine_once_and_counts_rejections(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki, tmp_path: Path
) -> None:
    backend = Identity.generate("backend")
    unit = Unit(mqtt_pki.device("cv-ing-01"), backend.public())
    stranger_files = mqtt_pki.device("cv-ing-99")
    stranger = Unit(stranger_files, backend.public())  # not in the backend's devices
    forger = Identity.generate("cv-ing-01")
    files = mqtt_pki.backend("dashboard")
    assert files.cert is not None and files.key is not None
    config = ListenerConfig(HOST, fresh_mosquitto.port, files.ca, files.cert, files.key)
    with Store(tmp_path / "dash.db") as store:
        ingest = Ingest(config, backend, PeerKeys([unit.identity.public()]), store)
        with ingest:
            assert ingest.listener.subscribed.wait(10)
            good = unit.event()
            forged = seal_event(
                unit.builder.presence(0.0, 1.0, {"all": (0, 0)}),
                sender=forger,
                recipient=backend.public(),
            )
            with TestClient(unit.files, fresh_mosquitto.port) as client:
                client.publish(good.topic, good.data)
                client.publish(good.topic, good.data)  # replayed / redelivered
                client.publish(forged.topic, forged.data)
                client.publish(event_topic("cv-ing-01", "presence"), b"\x00junk")
                status = unit.status()
                client.publish(status.topic, status.data)
            with TestClient(stranger_files, fresh_mosquitto.port) as other:
                env = stranger.event()
                other.publish(env.topic, env.data)
            _wait(lambda: sum(sum(r.values()) for r in store.rejections().values()) >= 3)
            _wait(lambda: store.event_count() >= 2 and bool(held.summary(store)))
            time.sleep(0.3)
        assert store.event_count() == 2
        assert [e.type for e in store.events("cv-ing-01")] == ["status", "presence"]
        assert store.events("cv-ing-99") == []
        assert store.rejections() == {
            "cv-ing-01": {"replayed": 1, "bad_signature": 1, "malformed": 1},
        }
        # the stranger's envelope is kept sealed until the inventory knows it (see below)
        assert {d: i.count for d, i in held.summary(store).items()} == {"cv-ing-99": 1}
        u = store.unit("cv-ing-01")
        assert u is not None and u.state == "online"


def test_a_unit_reports_its_config_hashes_and_health_history(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki, tmp_path: Path
) -> None:
    """Through the broker and the ingest: the hashes a unit reports are stored and judged
    against what was set from the dashboard (unset, then pending until a health sent after the
    ack, then in force or drift); every health adds to the sparklines' history."""
    backend = Identity.generate("backend")
    unit = Unit(mqtt_pki.device("cv-ing-02"), backend.public())
    old = Unit(mqtt_pki.device("cv-ing-03"), backend.public())
    files = mqtt_pki.backend("dashboard")
    assert files.cert is not None and files.key is not None
    config = ListenerConfig(HOST, fresh_mosquitto.port, files.ca, files.cert, files.key)
    overlay = {"detector": {"threads": 2}}
    effective = {"detector": {"threads": 2}, "events": {"health_interval_s": 60.0}}
    before, after = digest(effective, {}), digest(effective, overlay)
    with Store(tmp_path / "dash.db") as store:
        peers = PeerKeys([unit.identity.public(), old.identity.public()])

        def state(device: str) -> str:
            row = fleet_row(store, device, store.now(), Thresholds())
            assert row is not None
            return row.config.state

        with Ingest(config, backend, peers, store) as ingest:
            assert ingest.listener.subscribed.wait(10)
            with TestClient(unit.files, fresh_mosquitto.port) as client:
                for envelope in (unit.status(), unit.health(9.0, before)):
                    client.publish(envelope.topic, envelope.data)
                _wait(lambda: store.event_count() == 2)
                assert state("cv-ing-02") == "unset"
                health = store.unit("cv-ing-02")
                assert health is not None and health.health is not None
                assert health.health["config"]["effective"] == before.effective
                # acknowledged as the unit's next seq: the change, sealed by the operator's
                # client, is recorded as the dashboard's command desk does
                with store.transaction() as conn:
                    record_set(
                        conn, "cv-ing-02", overlay, command_id="op-1", operator="alice",
                        now=store.now(), ack={"boot": BOOT, "seq": 2, "ts": 0},
                    )  # fmt: skip
                unit.event()  # seq 2, spent on the ack (sealed to the operator, not ingested)
                assert state("cv-ing-02") == "pending"  # its health is seq 1: before the ack
                stale = unit.health(9.5, before)  # seq 3: after the ack, without the change
                client.publish(stale.topic, stale.data)
                _wait(lambda: store.event_count() == 3)
                assert state("cv-ing-02") == "drift"
                good = unit.health(10.0, after)
                client.publish(good.topic, good.data)
                _wait(lambda: store.event_count() == 4)
                assert state("cv-ing-02") == "ok"
            with TestClient(old.files, fresh_mosquitto.port) as client:
                for envelope in (old.status(), old.health(8.0)):
                    client.publish(envelope.topic, envelope.data)
                _wait(lambda: store.event_count() == 6)
            assert state("cv-ing-03") == "unknown"
        assert store.read(
            "SELECT device, SUM(n), SUM(fps_sum), MAX(outbox) FROM health_history "
            "GROUP BY device ORDER BY device"
        ) == [("cv-ing-02", 3, 28.5, 2), ("cv-ing-03", 1, 8.0, 2)]
        rows = store.read(history.SERIES_SQL, (history.first_bucket(store.now()),))
        assert set(history.series(rows, store.now())) == {"cv-ing-02", "cv-ing-03"}
