"""`camveil station renew --jobs N`: several real units (each provisioned over a pty pair, each
the real daemon on a replay camera) renew in one call against a real mosquitto started from the
station's broker config. One line per unit in device order, every unit on its new certificate,
the station's inventory and CRL with every unit's old certificate (the renewals' writes from
several threads lose nothing), and after a broker restart with that CRL every old pair is
refused while every unit is back on its new one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import ClientFiles, mosquitto_binary
from harness import astronaut, config_text
from PIL import Image
from station_rig import (
    backend_files,
    broker_process,
    mqtt_connect,
    provision_unit,
    settings,
    station_ca,
)

from agent.config import load_with_remote
from agent.daemon import Daemon, DaemonSummary
from agent.unitstate import UnitState
from contract.envelope.keys import load_identity, load_peers
from dashboard.listener import Listener, ListenerConfig, MemoryDedupe, Opener
from dashboard.receipts import Receipter
from provisioning import pki
from provisioning.devbroker import HOST, BrokerProcess, free_port
from provisioning.inventory import Inventory
from provisioning.station import StationPaths, init_station

UNITS = 3


@dataclass
class RunningUnit:
    device: str
    directory: Path
    daemon: Daemon
    thread: threading.Thread
    summaries: list[DaemonSummary]

    def pair(self) -> tuple[bytes, bytes]:
        provisioned = self.directory / "provisioned"
        return (provisioned / "tls.crt").read_bytes(), (provisioned / "tls.key").read_bytes()

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), f"{self.device}: daemon did not stop"


@dataclass
class Fleet:
    paths: StationPaths
    port: int
    broker: BrokerProcess
    units: list[RunningUnit]


def start_unit(
    unit_dir: Path, photos: Path
) -> tuple[Daemon, threading.Thread, list[DaemonSummary]]:
    config_path = unit_dir.with_suffix(".toml")
    # one frame a second: three detectors share this machine with the rest of the suite
    config_path.write_text(config_text(photos, unit_dir).replace("fps = 4.0", "fps = 1.0"))
    config = load_with_remote(config_path)[0]
    daemon = Daemon(config, UnitState.load(unit_dir), config_path=config_path)
    summaries: list[DaemonSummary] = []
    thread = threading.Thread(target=lambda: summaries.append(daemon.run()), name="daemon")
    thread.start()
    return daemon, thread, summaries


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    mosquitto_binary()
    port = free_port()
    paths = init_station(
        tmp_path / "station", broker_url=f"mqtts://{HOST}:{port}", broker_settings=settings()
    )
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut()).save(photos / "astronaut.png")
    dirs = [tmp_path / f"unit-{i}" for i in range(UNITS)]
    devices = [provision_unit(paths, d) for d in dirs]
    units: list[RunningUnit] = []
    # the backend: without a subscriber the broker refuses the units' events (PUBACK 0x10) and
    # their acks queue behind them; with receipts their outboxes drain as in a real fleet
    backend = backend_files(paths)
    assert backend.cert is not None and backend.key is not None
    identity = load_identity(paths.backend_key)
    trusted = load_peers(paths.peers)
    receipter = Receipter(identity, lambda: trusted, lambda e: listener.publish_receipt(e))
    listener = Listener(
        ListenerConfig(HOST, port, backend.ca, backend.cert, backend.key, shared=False),
        Opener(identity, trusted, MemoryDedupe()),
        lambda received: None,
        receipter=receipter,
    )
    with broker_process(paths, port, tmp_path / "mosquitto.log") as process:
        listener.start()
        receipter.start()
        try:
            assert listener.subscribed.wait(10), process.log_tail()
            for device, unit_dir in zip(devices, dirs, strict=True):
                daemon, thread, summaries = start_unit(unit_dir, photos)
                units.append(RunningUnit(device, unit_dir, daemon, thread, summaries))
            for unit in units:
                assert unit.daemon.ready.wait(30), unit.device
                transport = unit.daemon.transport
                assert transport is not None and transport.wait_subscribed(15), unit.device
            yield Fleet(paths, port, process, units)
        finally:
            for unit in units:
                if unit.thread.is_alive():
                    unit.stop()
            receipter.stop()
            listener.stop()


def test_several_units_renew_in_one_call(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    from camveil.__main__ import main

    before = {u.device: u.pair() for u in fleet.units}
    old_serials = {
        u.device: pki.load_cert_pem(before[u.device][0]).serial_number for u in fleet.units
    }
    # named in reverse order: the lines still come in device order
    devices = sorted(u.device for u in fleet.units)
    argv = ["station", "renew", str(fleet.paths.root), *reversed(devices), "--jobs", "3",
            "--timeout", "30"]  # fmt: skip
    assert main(argv) == 0, (capsys.readouterr(), fleet.broker.log_tail())
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines[:UNITS]] == devices, lines
    assert all(line.split("\t")[1] == "renewed" for line in lines[:UNITS]), lines
    assert f"{UNITS} superseded certificate(s)" in lines[UNITS]

    ca = station_ca(fleet.paths)
    crl = pki.load_crl_pem(fleet.paths.crl.read_bytes())
    assert crl.is_signature_valid(ca.cert.public_key())
    with Inventory(fleet.paths.inventory) as inventory:
        for unit in fleet.units:
            new_pem, new_key = unit.pair()
            assert (new_pem, new_key) != before[unit.device]
            new = pki.load_cert_pem(new_pem)
            old = old_serials[unit.device]
            line = f"{unit.device}\trenewed\tcertificate {old:x} -> {new.serial_number:x}, "
            assert any(x.startswith(line) for x in lines), lines
            states = {c.serial: c.state for c in inventory.certificates(unit.device)}
            assert states == {f"{old:x}": "superseded", f"{new.serial_number:x}": "current"}
            assert crl.get_revoked_certificate_by_serial_number(old) is not None
            assert crl.get_revoked_certificate_by_serial_number(new.serial_number) is None

    # the broker takes the CRL at its restart: every old pair is refused, every unit comes back
    fleet.broker.restart()
    for unit in fleet.units:
        old_dir = unit.directory.parent / f"{unit.device}-old"
        old_dir.mkdir()
        (old_dir / "tls.crt").write_bytes(before[unit.device][0])
        (old_dir / "tls.key").write_bytes(before[unit.device][1])
        old_pair = ClientFiles(unit.device, fleet.paths.ca_dir / "ca.crt", old_dir / "tls.crt",
                               old_dir / "tls.key")  # fmt: skip
        with pytest.raises(OSError):  # TLS: "certificate revoked"
            mqtt_connect(old_pair, fleet.port, HOST)
    deadline = time.monotonic() + 30
    for unit in fleet.units:
        transport = unit.daemon.transport
        assert transport is not None
        while not transport.connected:
            assert time.monotonic() < deadline, f"{unit.device} did not reconnect"
            time.sleep(0.1)
        serial = pki.load_cert_pem(unit.pair()[0]).serial_number
        assert serial != old_serials[unit.device]
