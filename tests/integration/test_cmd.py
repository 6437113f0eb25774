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
from broker import HOST, Mosquitto, TestPki
from test_daemon import DEVICE, Harness

from contract.envelope.keys import save_identity, save_peers
from contract.errors import ConfigError
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
    client = h.pki.operator("console")
    assert client.cert is not None and client.key is not None
    shutil.copy(client.ca, root / "ca.crt")
    shutil.copy(client.cert, root / "operator" / client.cert.name)
    shutil.copy(client.key, root / "operator" / client.key.name)
    save_identity(root / "operator" / "identity.cbor", h.operator)
    save_identity(root / "backend" / "identity.cbor", h.backend)
    save_peers(root / "backend" / "devices.cbor", [h.device.public()])
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

    rc, ack, err = _cmd(unit, root, "--id", "cli-snap-1", "snapshot")
    assert rc == 0, err
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
    assert keys.operator.kid == "operator" and keys.backend.kid == "backend"
    assert keys.cert.name.startswith("operator-") and keys.key.exists() and keys.ca.exists()
    assert keys.broker_url == "mqtts://broker.example:8883"
    with pytest.raises(ConfigError, match="not in the trusted devices"):
        keys.device(DEVICE)
