"""`camveil cmd` end to end: the real CLI (a subprocess) against a running agent on a real
mosquitto (TLS, client certificates, ACL), with the keys in a dev-pki-shaped folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import HOST, Mosquitto, TestClient, TestPki
from harness import DEVICE, Harness

from contract.envelope.keys import Identity, PeerKeys, ack_reader, save_identity, save_peers
from contract.envelope.replay import ReplayGuard
from contract.envelope.seal import open_envelope
from contract.errors import ConfigError, DecryptError, UnknownKeyError
from contract.topics import ack_topic
from dashboard.command_client import load_station, parse_config_pairs
from provisioning.station import init_station


@pytest.fixture
def unit(tmp_path: Path, fresh_mosquitto: Mosquitto, mqtt_pki: TestPki) -> Iterator[Harness]:
    h = Harness(tmp_path, fresh_mosquitto, mqtt_pki)
    h.setup()
    try:
        h.start_agent()
        yield h
    finally:
        h.close()


def _pki_folder(h: Harness) -> Path:
    """The harness's keys in the `camveil dev-pki` layout that `camveil cmd --pki` reads."""
    root = h.tmp / "pki"
    (root / "operator").mkdir(parents=True)
    (root / "backend").mkdir()
    client = h.pki.operator("console-3")  # the harness holds console(-2)
    assert client.cert is not None and client.key is not None
    shutil.copy(client.ca, root / "ca.crt")
    shutil.copy(client.cert, root / "operator" / client.cert.name)
    shutil.copy(client.key, root / "operator" / client.key.name)
    save_identity(root / "operator" / "identity.cbor", h.operator)
    # public keys only: `camveil cmd` must work without the backend's key (it opens everything)
    save_peers(root / "backend" / "devices.cbor", [h.device.public()])
    assert not any(p.name in ("identity.cbor", "backend.key") for p in (root / "backend").iterdir())
    return root


def _cmd(h: Harness, root: Path, *argv: str) -> tuple[int, dict[str, object] | None, str]:
    broker = f"mqtts://{HOST}:{h.broker.port}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "camveil",
            "cmd",
            "--pki",
            str(root),
            "--device",
            DEVICE,
            "--broker",
            broker,
            "--timeout",
            "15",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if lines else None), proc.stderr


def test_cmd_snapshot_accepted_and_bad_config_rejected(unit: Harness) -> None:
    root = _pki_folder(unit)
    # a backend also reads the ack topic (the ACL allows it): it must not be able to open acks
    spy = TestClient(unit.pki.backend("watcher"), unit.broker.port, client_id="it-ack-spy")
    spy.connect()
    assert not spy.subscribe(ack_topic(DEVICE)).is_failure

    rc, ack, err = _cmd(unit, root, "--id", "cli-snap-1", "snapshot")
    assert rc == 0, err
    raw = spy.expect(timeout=10)
    spy.close()
    assert raw is not None and raw.topic == ack_topic(DEVICE)
    trusted = PeerKeys([unit.device.public()])
    with pytest.raises(UnknownKeyError):  # sealed to the operator's key id
        open_envelope(bytes(raw.payload), topic=raw.topic, trusted_senders=trusted,
                      recipient=unit.backend, replay_guard=ReplayGuard())  # fmt: skip
    # the backend's X25519 key under the operator's kid: the decryption itself fails
    posing = Identity(unit.operator.kid, unit.backend.signing_key, unit.backend.encryption_key)
    with pytest.raises(DecryptError):
        open_envelope(bytes(raw.payload), topic=raw.topic, trusted_senders=trusted,
                      recipient=posing, replay_guard=ReplayGuard())  # fmt: skip
    reader = ack_reader(unit.operator)
    opened = open_envelope(bytes(raw.payload), topic=raw.topic, trusted_senders=trusted,
                           recipient=reader, replay_guard=ReplayGuard())  # fmt: skip
    assert opened.message["body"]["id"] == "cli-snap-1"
    assert ack is not None and ack["type"] == "cmd_ack" and ack["device"] == DEVICE
    assert ack["body"] == {
        "id": "cli-snap-1",
        "cmd_seq": ack["body"]["cmd_seq"],  # type: ignore[index]
        "status": "accepted",
        "reason": "ok",
    }
    unit.wait_for(lambda r: r.type == "snapshot" and r.message["body"].get("cmd") == "cli-snap-1")

    rc, ack, err = _cmd(unit, root, "set-config", "detector.threads=0")
    assert rc == 1, err
    assert ack is not None
    body = ack["body"]
    assert isinstance(body, dict)
    assert body["status"] == "rejected" and "threads" in body["reason"]
    assert body["id"].startswith("op-")

    rc, _, err = _cmd(unit, root, "--device", "cv-unknown", "snapshot")
    assert rc == 2 and "cv-unknown" in err


def test_set_config_pairs_and_station_layout(tmp_path: Path) -> None:
    assert parse_config_pairs(["detector.threads=2", "privacy.mode=blur", "events.x=1.5"]) == {
        "detector": {"threads": 2},
        "privacy": {"mode": "blur"},
        "events": {"x": 1.5},
    }
    for bad in (["mqtt.enabled=false"], ["threads=2"], []):
        with pytest.raises(ConfigError):
            parse_config_pairs(bad)
    station = init_station(tmp_path / "station", broker_url="mqtts://broker.example:8883")
    keys = load_station(station.root)
    assert keys.operator.kid == "operator" and not hasattr(keys, "backend")
    (station.root / "backend.key").unlink()  # not needed by the operator tool
    assert load_station(station.root).operator.kid == "operator"
    assert keys.cert.name.startswith("operator-") and keys.key.exists() and keys.ca.exists()
    assert keys.broker_url == "mqtts://broker.example:8883"
    with pytest.raises(ConfigError, match="not in the trusted devices"):
        keys.device(DEVICE)
