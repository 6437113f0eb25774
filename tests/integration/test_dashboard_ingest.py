"""Ingest against a real mosquitto: genuine events stored once, forged / unknown-device /
replayed / malformed messages counted per claimed device and never stored."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from broker import HOST, Mosquitto, TestClient, TestPki
from sealing_unit import Unit

from agent.events import seal_event
from contract.envelope.keys import Identity, PeerKeys
from contract.topics import event_topic
from dashboard import held
from dashboard.ingest import Ingest
from dashboard.listener import ListenerConfig
from dashboard.store import Store


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
