"""Client-certificate renewal over MQTT, end to end with real parts: a station (`camveil station
init`), a unit provisioned through a pty pair, mosquitto from the station's broker config (TLS,
client certificates, ACL, CRL), the real daemon on a replay camera, the backend listener with
receipts, and `camveil station renew` (the CLI, in process).

- The unit renews: it makes a new key, the station certifies it, the unit reconnects with it and
  only then drops the old pair; the old serial goes into the CRL, and a broker that re-reads it
  refuses the old pair and accepts the unit (new serial). No event is lost.
- A forged install_cert, a replayed renew_cert, and install_certs for another key or another
  unit are refused by the unit, which keeps working with its certificate.
- A revoked unit's renewal is refused at the station.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    wait_for_log,
)

from agent.config import load_with_remote
from agent.daemon import Daemon, DaemonSummary
from agent.unitstate import UnitState
from contract.commands import seal_command
from contract.envelope.keys import Identity, load_identity, load_peers
from contract.errors import ProvisioningError
from contract.topics import KIND_CMD_ACK
from dashboard.command_client import AckWaiter, load_station
from dashboard.listener import Listener, ListenerConfig, MemoryDedupe, Opener, Received
from dashboard.receipts import Receipter
from provisioning import pki
from provisioning.devbroker import HOST, BrokerProcess, free_port
from provisioning.inventory import Inventory
from provisioning.renewal import RenewalTarget, issue_renewal, renewal_targets
from provisioning.station import StationPaths, init_station, load_ca, write_crl

CLI_TIMEOUT = "30"


@dataclass
class Rig:
    tmp: Path
    paths: StationPaths
    port: int
    device: str
    unit_dir: Path
    broker: BrokerProcess
    daemon: Daemon
    thread: threading.Thread
    listener: Listener
    receipter: Receipter
    received: list[Received]
    cond: threading.Condition
    summaries: list[DaemonSummary]

    @property
    def provisioned(self) -> Path:
        return self.unit_dir / "provisioned"

    def serial(self) -> int:
        return pki.load_cert_pem((self.provisioned / "tls.crt").read_bytes()).serial_number

    def target(self) -> RenewalTarget:
        (target,) = renewal_targets(self.paths.root, [self.device])
        return target

    def wait_for(self, pred: Any, timeout: float = 30.0) -> Received:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for r in self.received:
                    if pred(r):
                        return r
                left = deadline - time.monotonic()
                last = [(r.type, r.seq) for r in self.received[-10:]]
                assert left > 0, f"not received; last: {last}"
                self.cond.wait(left)

    def stop_agent(self) -> DaemonSummary:
        self.daemon.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "daemon did not stop"
        return self.summaries[-1]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    mosquitto_binary()
    port = free_port()
    paths = init_station(
        tmp_path / "station", broker_url=f"mqtts://{HOST}:{port}", broker_settings=settings()
    )
    unit_dir = tmp_path / "unit"
    device = provision_unit(paths, unit_dir)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(astronaut()).save(photos / "astronaut.png")
    config_path = tmp_path / "camveil.toml"
    config_path.write_text(config_text(photos, unit_dir) + "\n[outbox]\nreceipt_timeout_s = 5.0\n")

    backend = backend_files(paths)
    assert backend.cert is not None and backend.key is not None
    identity = load_identity(paths.backend_key)
    trusted = load_peers(paths.peers)
    received: list[Received] = []
    cond = threading.Condition()

    def on_received(r: Received) -> None:
        with cond:
            received.append(r)
            cond.notify_all()

    receipter = Receipter(identity, lambda: trusted, lambda e: listener.publish_receipt(e))
    listener = Listener(
        ListenerConfig(HOST, port, backend.ca, backend.cert, backend.key, shared=False),
        Opener(identity, trusted, MemoryDedupe()),
        on_received,
        receipter=receipter,
    )
    with broker_process(paths, port, tmp_path / "mosquitto.log") as process:
        listener.start()
        receipter.start()
        assert listener.subscribed.wait(10), process.log_tail()
        config = load_with_remote(config_path)[0]
        daemon = Daemon(config, UnitState.load(unit_dir), config_path=config_path)
        summaries: list[DaemonSummary] = []
        thread = threading.Thread(target=lambda: summaries.append(daemon.run()), name="daemon")
        thread.start()
        assert daemon.ready.wait(30)
        assert daemon.transport is not None and daemon.transport.wait_subscribed(15)
        rig = Rig(tmp_path, paths, port, device, unit_dir, process, daemon, thread, listener,
                  receipter, received, cond, summaries)  # fmt: skip
        try:
            yield rig
        finally:
            if thread.is_alive():
                rig.stop_agent()
            receipter.stop()
            listener.stop()


def _station(rig: Rig, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from camveil.__main__ import main

    code = main(["station", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unit_renews_over_mqtt_and_the_broker_takes_the_new_certificate(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    old_serial = rig.serial()
    old = rig.tmp / "old-pair"  # a copy of the old pair, as a thief of the old key would hold
    old.mkdir()
    shutil.copy(rig.provisioned / "tls.crt", old / "tls.crt")
    shutil.copy(rig.provisioned / "tls.key", old / "tls.key")
    old_key_pem = (old / "tls.key").read_bytes()
    rig.wait_for(lambda r: r.type == "health" and "cert" in r.message["body"])
    health = rig.wait_for(lambda r: r.type == "health")
    assert health.message["body"]["cert"]["serial"] == f"{old_serial:x}"

    code, out, err = _station(rig, capsys, "renew", str(rig.paths.root), rig.device,
                              "--timeout", CLI_TIMEOUT)  # fmt: skip
    assert code == 0, (out, err, rig.broker.log_tail())
    new_serial = rig.serial()
    assert new_serial != old_serial
    assert f"{rig.device}\trenewed\tcertificate {old_serial:x} -> {new_serial:x}" in out
    assert "superseded certificate(s)" in out

    # the unit: new pair in place, nothing staged, the old key nowhere on its disk
    files = sorted(p.name for p in rig.provisioned.iterdir())
    assert "tls-next.key" not in files and "tls-next.crt" not in files
    assert (rig.provisioned / "tls.key").stat().st_mode & 0o777 == 0o600
    new_cert = pki.load_cert_pem((rig.provisioned / "tls.crt").read_bytes())
    new_key = pki.load_key_pem((rig.provisioned / "tls.key").read_bytes())
    assert pki.spki(new_cert.public_key()) == pki.spki(new_key.public_key())
    assert pki.common_name(new_cert) == rig.device
    new_cert.verify_directly_issued_by(station_ca(rig.paths).cert)
    secret = pki.load_key_pem(old_key_pem).private_numbers().private_value.to_bytes(32, "big")
    for path in rig.unit_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert old_key_pem not in data and secret not in data, path

    # health now reports the new certificate (the dashboard counts down from it)
    rig.wait_for(
        lambda r: r.type == "health" and r.message["body"]["cert"]["serial"] == f"{new_serial:x}"
    )
    # the station: new certificate current, the old one superseded and in the CRL
    with Inventory(rig.paths.inventory) as inventory:
        states = {c.serial: c.state for c in inventory.certificates(rig.device)}
    assert states == {f"{old_serial:x}": "superseded", f"{new_serial:x}": "current"}
    crl = pki.load_crl_pem(rig.paths.crl.read_bytes())
    assert crl.is_signature_valid(station_ca(rig.paths).cert.public_key())
    assert crl.get_revoked_certificate_by_serial_number(old_serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(new_serial) is None
    code, out, _ = _station(rig, capsys, "list", str(rig.paths.root))
    until = new_cert.not_valid_after_utc.date().isoformat()
    assert code == 0 and f"{rig.device}\tprovisioned\tdefault\tcertificate until {until}" in out

    # the broker re-reads the CRL on restart: the old pair is refused, the unit comes back
    last = max(r.seq for r in rig.received)
    rig.broker.restart()
    with pytest.raises(OSError):  # TLS: "certificate revoked"
        mqtt_connect(ClientFiles(rig.device, rig.paths.ca_dir / "ca.crt", old / "tls.crt",
                                 old / "tls.key"), rig.port, HOST)  # fmt: skip
    rig.wait_for(lambda r: r.type == "health" and r.seq > last, timeout=30)
    assert rig.daemon.transport is not None and rig.daemon.transport.connected

    # nothing lost: every envelope the unit sealed for the backend arrived
    summary = rig.stop_agent()
    assert summary.outbox_depth == 0  # every envelope receipted by the backend before the stop
    emitter = rig.daemon.emitter
    assert emitter is not None
    sent = {seq for topic, seq in emitter.enqueued if not topic.endswith(KIND_CMD_ACK)}
    deadline = time.monotonic() + 30
    while True:
        with rig.cond:
            got = {r.seq for r in rig.received}
        if sent <= got or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sent <= got, sorted(sent - got)[:20]
    assert summary.commands_accepted == 2 and summary.commands_rejected == {}


def test_forged_replayed_and_foreign_install_certs_are_refused(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = load_station(rig.paths.root)
    target = rig.target()
    before = (rig.provisioned / "tls.crt").read_bytes()
    ca = station_ca(rig.paths)
    seq = int(time.time() * 1000)

    def command(name: str, args: dict[str, Any] | None, operator: Identity, cid: str) -> Any:
        nonlocal seq
        seq += 1
        return seal_command(name, command_id=cid, device=target.identity, operator=operator,
                            seq=seq, expires_at=int(time.time()) + 120, args=args)  # fmt: skip

    def send(envelope: Any, cid: str) -> dict[str, Any]:
        with AckWaiter(keys, HOST, rig.port, target.identity) as waiter:
            ack = waiter.send(envelope, cid, 20.0)
        body = ack["body"]
        assert isinstance(body, dict)
        return body

    # a renew_cert from the real operator: the unit stages a key and sends its CSR
    renew = command("renew_cert", None, keys.operator, "renew-1")
    body = send(renew, "renew-1")
    assert body["status"] == "accepted", body
    csr_pem = body["result"]["csr"]
    csr = pki.load_csr_pem(csr_pem)
    assert csr.is_signature_valid and pki.common_name(csr) == rig.device
    staged = pki.load_key_pem((rig.provisioned / "tls-next.key").read_bytes())
    assert (rig.provisioned / "tls-next.key").stat().st_mode & 0o777 == 0o600
    assert pki.spki(csr.public_key()) == pki.spki(staged.public_key())

    # the same renew_cert again: a replay
    body = send(renew, "renew-1-replayed")
    assert body["status"] == "rejected" and body["reason"] == "replay", body

    # a certificate for the staged key, but install_cert signed by a key that is not the
    # operator's (same kid): refused before anything is looked at
    issued = issue_renewal(rig.paths.root, rig.device, csr_pem)
    good = pki.load_cert_pem(issued.cert_pem)
    forger = Identity.generate(keys.operator.kid)
    body = send(command("install_cert", {"cert": pki.cert_pem(good)}, forger, "forged-1"),
                "forged-1")  # fmt: skip
    assert body["status"] == "rejected" and body["reason"] == "bad_signature", body

    # signed by the operator, but the certificate is for another key (same device id) ...
    other_key = pki.make_device_cert(ca, rig.device).cert
    body = send(command("install_cert", {"cert": pki.cert_pem(other_key)}, keys.operator,
                        "other-key"), "other-key")  # fmt: skip
    assert body["status"] == "rejected" and "not for this unit's TLS key" in body["reason"], body
    # ... or another unit's certificate ...
    other_unit = pki.make_device_cert(ca, "cv-someone-else01").cert
    body = send(command("install_cert", {"cert": pki.cert_pem(other_unit)}, keys.operator,
                        "other-unit"), "other-unit")  # fmt: skip
    assert body["status"] == "rejected" and "cv-someone-else01" in body["reason"], body
    # ... or one from another CA, for the staged key
    foreign = pki.sign_device_csr(pki.make_ca("not the station"), csr)
    body = send(command("install_cert", {"cert": pki.cert_pem(foreign)}, keys.operator,
                        "foreign-ca"), "foreign-ca")  # fmt: skip
    assert body["status"] == "rejected" and "CA" in body["reason"], body

    # the unit still uses its certificate and publishes
    assert (rig.provisioned / "tls.crt").read_bytes() == before
    last = max(r.seq for r in rig.received)
    rig.wait_for(lambda r: r.type == "health" and r.seq > last)
    # and the staging is still there for the real install
    body = send(command("install_cert", {"cert": pki.cert_pem(good)}, keys.operator, "good"),
                "good")  # fmt: skip
    assert body["status"] == "accepted", body
    assert body["result"]["serial"] == f"{good.serial_number:x}"
    assert rig.serial() == good.serial_number
    assert not (rig.provisioned / "tls-next.key").exists()

    # that install was never confirmed to the station (as if its ack had been lost): the next
    # renewal learns from the unit's signed renew_cert ack that it uses it, then replaces it
    first = rig.target().serial
    assert first != issued.serial
    code, out, err = _station(rig, capsys, "renew", str(rig.paths.root), rig.device,
                              "--timeout", CLI_TIMEOUT)  # fmt: skip
    assert code == 0, (out, err)
    with Inventory(rig.paths.inventory) as inventory:
        states = {c.serial: c.state for c in inventory.certificates(rig.device)}
    assert states == {first: "superseded", issued.serial: "superseded",
                      f"{rig.serial():x}": "current"}  # fmt: skip


def test_a_revoked_unit_is_not_renewed(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    keys = load_station(rig.paths.root)
    target = rig.target()
    with AckWaiter(keys, HOST, rig.port, target.identity) as waiter:
        envelope = seal_command("renew_cert", command_id="pre-revoke", device=target.identity,
                                operator=keys.operator, seq=int(time.time() * 1000),
                                expires_at=int(time.time()) + 60)  # fmt: skip
        ack = waiter.send(envelope, "pre-revoke", 20.0)
    csr = ack["body"]["result"]["csr"]

    code, _, err = _station(rig, capsys, "revoke", str(rig.paths.root), rig.device)
    assert code == 0, err
    code, _, err = _station(rig, capsys, "renew", str(rig.paths.root), rig.device)
    assert code == 2
    assert f"{rig.device} was revoked" in err and "not renewed" in err
    # a CSR obtained before the revocation is not certified after it either
    with pytest.raises(ProvisioningError, match="was revoked"):
        issue_renewal(rig.paths.root, rig.device, csr)
    with Inventory(rig.paths.inventory) as inventory:
        assert inventory.certificates(rig.device) == []
    # --expiring-within skips it too
    assert renewal_targets(rig.paths.root, expiring_within_days=10_000) == []


def test_a_certificate_the_broker_refuses_leaves_the_unit_on_its_old_one(rig: Rig) -> None:
    """Fail closed with a real broker: the station's new certificate is on the broker's CRL (as
    if revoked by mistake), so the unit's trial connection is refused; it goes back to its old
    pair, deletes the staged files and says why in the ack."""
    keys = load_station(rig.paths.root)
    target = rig.target()
    before = (rig.provisioned / "tls.crt").read_bytes(), (rig.provisioned / "tls.key").read_bytes()
    seq = int(time.time() * 1000)

    def send(name: str, args: dict[str, Any] | None, cid: str) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        envelope = seal_command(name, command_id=cid, device=target.identity,
                                operator=keys.operator, seq=seq,
                                expires_at=int(time.time()) + 120, args=args)  # fmt: skip
        with AckWaiter(keys, HOST, rig.port, target.identity) as waiter:
            body = waiter.send(envelope, cid, 60.0)["body"]
        assert isinstance(body, dict)
        return body

    body = send("renew_cert", None, "renew-refused")
    issued = issue_renewal(rig.paths.root, rig.device, body["result"]["csr"])
    with Inventory(rig.paths.inventory) as inventory:
        record = next(c for c in inventory.certificates(rig.device) if c.serial == issued.serial)
    write_crl(rig.paths, load_ca(rig.paths), [], [dataclasses.replace(record, state="revoked")])
    reloads = rig.broker.log().count("Reloading config")
    assert rig.broker.pid is not None
    os.kill(rig.broker.pid, signal.SIGHUP)
    wait_for_log(rig.broker, "Reloading config", after=reloads)

    started = time.monotonic()
    body = send("install_cert", {"cert": issued.cert_pem}, "install-refused")
    took = time.monotonic() - started
    assert body["status"] == "rejected", body
    assert "did not accept the new certificate" in body["reason"], body
    after = (rig.provisioned / "tls.crt").read_bytes(), (rig.provisioned / "tls.key").read_bytes()
    assert after == before
    assert not (rig.provisioned / "tls-next.key").exists()
    assert not (rig.provisioned / "tls-next.crt").exists()
    last = max(r.seq for r in rig.received)
    rig.wait_for(lambda r: r.type == "health" and r.seq > last)  # publishing on the old pair
    print(f"refused trial answered in {took:.1f} s")
