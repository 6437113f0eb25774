"""The dashboard ingest with a real station and a real mosquitto: units provisioned while it runs,
forged and revoked senders, acknowledgement only after the store write, the fleet simulator."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from broker import TestClient
from stationbroker import StationBroker, client_files

from agent.events import LinkState, seal_event
from contract.envelope.keys import Identity, load_identity, load_peers, save_peers
from dashboard import held
from dashboard.ingest import Ingest, IngestSettings
from dashboard.store import Store
from tools.simulate import Fleet, SimSettings, SimUnit, provision_fleet, provision_unit

NEVER = 3600.0  # poll interval that never fires in a test: reloads are explicit


def _wait(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _ingest(sb: StationBroker, store: Store, poll_s: float = NEVER, **config: object) -> Ingest:
    paths = sb.station
    return Ingest(
        sb.listener_config(**config),
        load_identity(paths.backend_key),
        load_peers(paths.peers),
        store,
        devices_file=paths.peers,
        settings=IngestSettings(devices_poll_s=poll_s),
    )


def _events(store: Store, device: str) -> list[tuple[str, int]]:
    return sorted((e.type, e.seq) for e in store.events(device))


def test_unit_provisioned_while_ingest_runs_has_its_earlier_events_stored(tmp_path: Path) -> None:
    """The issue's "tried as a new user would" failure: the unit publishes before the ingest
    has re-read the device list; the broker acknowledged, so dropping would lose them."""
    with StationBroker(tmp_path) as sb, Store(tmp_path / "dash.db") as store:
        ingest = _ingest(sb, store)
        changes: list[frozenset[str]] = []
        ingest.on_inventory_change(lambda change: changes.append(change.added))
        with ingest:
            assert ingest.listener.subscribed.wait(10)
            provision_unit(sb.station.root, tmp_path / "u1", "cv-new-0001", "lab")
            unit = SimUnit(tmp_path / "u1").open()
            early = [unit.status(LinkState.ONLINE), unit.presence(), unit.health(), unit.presence()]
            with TestClient(client_files(unit), sb.port) as client:
                for env in early:
                    rc = client.publish(env.topic, env.data, retain="status" in env.topic)
                    assert not rc.is_failure
                _wait(lambda: ingest.stats.held == 4)
                assert store.event_count() == 0
                assert held.summary(store)["cv-new-0001"].count == 4
                assert ingest.reload_devices()  # the station rewrote devices.cbor
                _wait(lambda: store.event_count() == 4)
                late = unit.presence()
                client.publish(late.topic, late.data)
                _wait(lambda: store.event_count() == 5)
                client.publish(early[1].topic, early[1].data)  # a replay of a held one
                _wait(lambda: ingest.stats.acked == 6)
            unit.close()
        assert changes == [frozenset({"cv-new-0001"})]
        assert _events(store, "cv-new-0001") == sorted(
            (kind, env.seq)
            for kind, env in zip(
                ["status", "presence", "health", "presence", "presence"],
                [*early, late],
                strict=True,
            )
        )
        assert held.summary(store) == {}
        assert store.rejections() == {"cv-new-0001": {"duplicate": 1}}
        u = store.unit("cv-new-0001")
        assert u is not None and u.state == "online" and u.fps is not None


def test_live_poll_picks_up_a_new_unit_without_restart(tmp_path: Path) -> None:
    with StationBroker(tmp_path) as sb, Store(tmp_path / "dash.db") as store:
        with _ingest(sb, store, poll_s=0.2) as ingest:
            assert ingest.listener.subscribed.wait(10)
            provision_unit(sb.station.root, tmp_path / "u1", "cv-poll-0001", "lab")
            unit = SimUnit(tmp_path / "u1").open()
            with TestClient(client_files(unit), sb.port) as client:
                for _ in range(5):
                    env = unit.presence()
                    client.publish(env.topic, env.data)
                    time.sleep(0.1)
                _wait(lambda: store.event_count() == 5)
            unit.close()
            assert "cv-poll-0001" in ingest.devices
        assert held.summary(store) == {}
        assert store.rejections() == {}


def test_held_forgery_is_counted_once_the_key_is_known_and_revoked_units_are_refused(
    tmp_path: Path,
) -> None:
    with (
        StationBroker(tmp_path) as sb,
        Store(tmp_path / "dash.db") as store,
        _ingest(sb, store) as ingest,
    ):
        assert ingest.listener.subscribed.wait(10)
        dirs = provision_fleet(sb.station.root, tmp_path / "units", 2, prefix="cv-rev-")
        a, b = (SimUnit(d).open() for d in dirs)
        genuine = b.presence()
        forged = seal_event(
            b.builder.presence(0.0, 1.0, {"all": (9, 9)}),
            sender=Identity.generate(b.device),  # claims b's key id, signed by another key
            recipient=b.state.backend,
        )
        with TestClient(client_files(b), sb.port) as client:
            client.publish(genuine.topic, genuine.data)
            client.publish(forged.topic, forged.data)
            _wait(lambda: ingest.stats.held == 2)
        assert ingest.reload_devices()
        _wait(lambda: not held.summary(store))
        assert _events(store, b.device) == [("presence", genuine.seq)]
        assert store.rejections() == {b.device: {"bad_signature": 1}}

        # the station drops unit a (revoked): its later messages are refused, not held
        save_peers(sb.station.peers, [load_peers(sb.station.peers)[b.device]])
        assert ingest.reload_devices()
        assert a.device not in ingest.devices
        with TestClient(client_files(a), sb.port) as client:
            env = a.presence()
            client.publish(env.topic, env.data)
            _wait(lambda: store.rejections().get(a.device) == {"revoked": 1})
        assert held.summary(store) == {}
        assert store.events(a.device) == []
        a.close()
        b.close()


_REFUSE = (
    "CREATE TRIGGER refuse BEFORE INSERT ON events "
    "BEGIN SELECT RAISE(ABORT, 'disk full (simulated by the test)'); END"
)


def _refuse_writes(db: Path, refuse: bool) -> None:
    """A real failing write in the real database: a trigger that aborts every insert."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(_REFUSE if refuse else "DROP TRIGGER refuse")
    conn.close()


def test_a_failed_store_write_is_retried_and_not_acknowledged_meanwhile(tmp_path: Path) -> None:
    with StationBroker(tmp_path) as sb, Store(tmp_path / "dash.db") as store:
        (d,) = provision_fleet(sb.station.root, tmp_path / "units", 1)
        unit = SimUnit(d).open()
        with _ingest(sb, store, client_id="dash") as ingest:
            assert ingest.listener.subscribed.wait(10)
            _refuse_writes(tmp_path / "dash.db", True)
            sent = [unit.presence() for _ in range(5)]
            with TestClient(client_files(unit), sb.port) as client:
                for env in sent:
                    client.publish(env.topic, env.data)
            _wait(lambda: ingest.stats.store_failures >= 2)
            assert ingest.stats.acked == 0 and store.event_count() == 0
            _refuse_writes(tmp_path / "dash.db", False)
            _wait(lambda: store.event_count() == 5)
            _wait(lambda: ingest.stats.acked == 5)  # acknowledged right after the commit
        unit.close()
        assert _events(store, unit.device) == [("presence", e.seq) for e in sent]


def test_messages_not_stored_before_a_restart_are_redelivered_and_stored_once(
    tmp_path: Path,
) -> None:
    """Before ack-after-store, the listener acknowledged a message whose store write failed:
    the broker forgot it and it was lost for good."""
    with StationBroker(tmp_path) as sb, Store(tmp_path / "dash.db") as store:
        (d,) = provision_fleet(sb.station.root, tmp_path / "units", 1)
        unit = SimUnit(d).open()
        with _ingest(sb, store, client_id="dash") as ingest:
            assert ingest.listener.subscribed.wait(10)
            _refuse_writes(tmp_path / "dash.db", True)
            sent = [unit.presence() for _ in range(5)]
            with TestClient(client_files(unit), sb.port) as client:
                for env in sent:
                    client.publish(env.topic, env.data)
            _wait(lambda: ingest.stats.store_failures >= 1)
        assert store.event_count() == 0
        _refuse_writes(tmp_path / "dash.db", False)
        with _ingest(sb, store, client_id="dash") as again:
            _wait(lambda: store.event_count() == 5)
            _wait(lambda: again.stats.acked >= 5)
        unit.close()
        assert _events(store, unit.device) == [("presence", e.seq) for e in sent]


def test_simulated_fleet_goes_online_publishes_and_leaves_its_last_wills(tmp_path: Path) -> None:
    with StationBroker(tmp_path) as sb, Store(tmp_path / "dash.db") as store:
        dirs = provision_fleet(sb.station.root, tmp_path / "units", 6)
        with _ingest(sb, store) as ingest:
            assert ingest.listener.subscribed.wait(10)
            fleet = Fleet(
                [SimUnit(d) for d in dirs],
                sb.broker_address,
                SimSettings(rate=5.0, health_every=3, snapshot_every=4, threads=2),
            )
            fleet.start()
            assert fleet.wait_connected(30)
            _wait(
                lambda: {u.state for u in store.units()} == {"online"} and len(store.units()) == 6
            )
            _wait(lambda: fleet.stats.acked >= 6 * 6)
            fleet.stop(publish_will=True)
            _wait(lambda: {u.state for u in store.units()} == {"offline"})
            _wait(lambda: ingest.stats.acked >= fleet.stats.acked + 6)
        assert not fleet.stats.refused
        assert store.rejections() == {}
        kinds = {e.type for u in store.units() for e in store.events(u.device, limit=1000)}
        assert kinds == {"status", "presence", "health", "snapshot"}
        snap = store.latest_snapshot(dirs[0].name)
        assert snap is not None and snap.body["jpeg"][:2] == b"\xff\xd8"
        # every publish of every unit, and each last will, stored exactly once
        assert store.event_count() == fleet.stats.acked + 6


def test_the_ingest_receipts_what_it_stored_held_events_and_replays_included(
    tmp_path: Path,
) -> None:
    """Receipts (docs/PROTOCOL.md): sealed to the unit by the backend key, sent after the batch
    commit, covering held events once they are stored and repeats of stored ones."""
    from contract.envelope.keys import PeerKeys
    from contract.envelope.replay import CommandReplayGuard
    from contract.envelope.seal import open_envelope
    from contract.receipts import parse_receipt
    from contract.topics import receipt_topic

    with StationBroker(tmp_path) as sb, Store(tmp_path / "dash.db") as store:
        ingest = _ingest(sb, store)
        backend = load_identity(sb.station.backend_key).public()
        with ingest:
            assert ingest.listener.subscribed.wait(10)
            provision_unit(sb.station.root, tmp_path / "u1", "cv-rcpt-0001", "lab")
            unit = SimUnit(tmp_path / "u1").open()
            assert unit.state.receipts  # the station's bundle carries the backend's verify key
            assert unit.state.backend.verify_key == backend.verify_key
            guard = CommandReplayGuard()
            covered: set[int] = set()

            def read_receipts(client: TestClient) -> None:
                while (message := client.expect(0.05)) is not None:
                    opened = open_envelope(
                        bytes(message.payload),
                        topic=message.topic,
                        trusted_senders=PeerKeys([backend]),
                        recipient=unit.state.identity,
                        replay_guard=guard,
                    )
                    for lo, hi in parse_receipt(opened.message):
                        covered.update(range(lo, hi + 1))

            with TestClient(client_files(unit), sb.port) as client:
                assert not client.subscribe(receipt_topic(unit.device)).is_failure
                early = [unit.presence(), unit.health()]
                for env in early:
                    assert not client.publish(env.topic, env.data).is_failure
                _wait(lambda: ingest.stats.held == 2)
                time.sleep(0.5)
                read_receipts(client)
                assert covered == set()  # held (sender unknown yet): not stored, no receipt
                assert ingest.reload_devices()
                late = unit.presence()
                client.publish(late.topic, late.data)
                client.publish(early[0].topic, early[0].data)  # a republish of a stored one
                wanted = {env.seq for env in [*early, late]}

                def all_covered() -> bool:
                    read_receipts(client)
                    return wanted <= covered

                _wait(all_covered)
            unit.close()
        assert ingest.receipter is not None and ingest.receipter.stats.sent >= 1
