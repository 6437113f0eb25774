"""A new CRL reaches a running broker without a new broker bundle: ``camveil station crl --out``
on the station, the file dropped into the broker host's ``incoming/``, and the bundle's
``camveil-crl.service`` (its ExecStart run directly: there is no systemd here) puts it in force.

With a real mosquitto 2.0.11 started from the bundle (main config as Debian's, the drop-in and
files put in place by its install.sh):

- a reload (SIGHUP) makes mosquitto refuse new handshakes of a revoked certificate, but a
  connection already open with it stays open: that is why the service restarts mosquitto;
- with the service's restart, a unit renewed at the station (its old pair superseded) and a
  revoked unit are refused, their open connections are gone, and the renewed unit's new pair and
  an untouched unit connect;
- a CRL not signed by the station's CA, or older than the one in force, is not applied and
  mosquitto is not restarted.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from broker import ClientFiles, mosquitto_binary
from station_rig import (
    CONNACK_OK,
    host_broker,
    install_bundle,
    mqtt_connect,
    provision_unit,
    settings,
    wait_for_log,
)

from agent.unitstate import UnitState
from provisioning import pki
from provisioning.devbroker import HOST, BrokerProcess, free_port
from provisioning.renewal import confirm_renewal, issue_renewal
from provisioning.station import StationPaths, init_station

NAME = "localhost"


def unit(paths: StationPaths, where: Path) -> ClientFiles:
    device = provision_unit(paths, where)
    state = UnitState.load(where)
    return ClientFiles(device, state.ca_cert, state.tls_cert, state.tls_key)


def renew_at_station(paths: StationPaths, old: ClientFiles, where: Path) -> ClientFiles:
    """The station's half of a renewal (what `camveil station renew` does once the unit's CSR
    arrived and its install_cert was acked): a new key, certified, confirmed in use."""
    key = pki.make_device_key()
    issued = issue_renewal(paths.root, old.name, pki.csr_pem(pki.make_csr(key, old.name)))
    confirm_renewal(paths.root, old.name, issued.serial)
    where.mkdir()
    pki.write_private_key(where / "tls.key", key)
    pki.write_atomic(where / "tls.crt", issued.cert_pem, 0o644)
    return ClientFiles(old.name, old.ca, where / "tls.crt", where / "tls.key")


def serial(files: ClientFiles) -> str:
    assert files.cert is not None
    return f"{pki.load_cert_pem(files.cert.read_bytes()).serial_number:x}"


def open_session(files: ClientFiles, port: int) -> ssl.SSLSocket:
    """An MQTT session over TLS that the broker accepted (CONNACK 0), left open."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(files.ca)
    assert files.cert is not None and files.key is not None
    context.load_cert_chain(files.cert, files.key)
    raw = socket.create_connection((HOST, port), timeout=5.0)
    tls = context.wrap_socket(raw, server_hostname=NAME)
    cid = files.name.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    tls.sendall(bytes([0x10, len(body)]) + body)
    assert tls.recv(4) == CONNACK_OK
    return tls


def answers_ping(tls: ssl.SSLSocket) -> bool:
    """The broker still serves this connection: PINGREQ gets PINGRESP."""
    try:
        tls.sendall(b"\xc0\x00")
        return tls.recv(2) == b"\xd0\x00"
    except OSError:
        return False


def refused(files: ClientFiles, port: int) -> bool:
    try:
        return mqtt_connect(files, port, NAME) != CONNACK_OK
    except OSError:  # TLS 1.3: the "certificate revoked" alert after the client's handshake
        return True


def exec_start(service: Path) -> list[str]:
    """The ExecStart command of a oneshot unit file."""
    (line,) = [x for x in service.read_text().splitlines() if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def run_service(command: list[str], restart: str) -> subprocess.CompletedProcess[str]:
    """The service's ExecStart, as systemd would run it (as root there; the restart command
    is this test's instead of `systemctl restart mosquitto.service`)."""
    env = {**os.environ, "RESTART": restart}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


def restarted(process: BrokerProcess) -> None:
    """What systemd does after the service's `systemctl restart`: the stopped mosquitto
    (SIGTERM from the service) is started again."""
    deadline = time.monotonic() + 10
    while process.running:
        assert time.monotonic() < deadline, "mosquitto did not stop"
        time.sleep(0.02)
    process.stop()  # forget the exited process
    process.start()


def station_crl(station: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    import camveil.__main__ as cli

    assert cli.main(["station", "crl", str(station), "--out", str(out)]) == 0
    return capsys.readouterr().out


def test_a_new_crl_reaches_the_broker_without_a_new_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import camveil.__main__ as cli

    mosquitto_binary()
    port = free_port()
    paths = init_station(
        tmp_path / "station", broker_url=f"mqtts://{NAME}:{port}", broker_settings=settings()
    )
    station = paths.root
    renewed, revoked, good = (unit(paths, tmp_path / n) for n in ("unit-a", "unit-b", "unit-c"))

    host = tmp_path / "broker-host"  # stands for / on the broker host
    target = host / "etc-mosquitto-camveil"
    bundle = tmp_path / "bundle"
    argv = ["station", "broker-bundle", str(station), str(bundle), "--target-dir", str(target)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    install_bundle(bundle, host, reload="true")
    # install.sh put the CRL path in place: the script beside the files, the units in systemd
    assert os.access(target / "apply-crl.sh", os.X_OK) and (target / "incoming").is_dir()
    path_unit = (host / "systemd" / "camveil-crl.path").read_text()
    assert f"PathChanged={target}/incoming/crl.pem" in path_unit
    command = exec_start(host / "systemd" / "camveil-crl.service")
    assert command == ["/bin/sh", str(target / "apply-crl.sh")]
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "camveil-crl.path", "camveil-crl.service"],
        cwd=host / "systemd", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    incoming = target / "incoming" / "crl.pem"

    with host_broker(paths, host, port, tmp_path / "mosquitto.log") as process:
        assert process.pid is not None
        for files in (renewed, revoked, good):
            assert mqtt_connect(files, port, NAME) == CONNACK_OK, process.log_tail()
        revoked_open = open_session(revoked, port)

        # 1. revoke; only the CRL goes over; applied with a reload instead of the restart
        assert cli.main(["station", "revoke", str(station), revoked.name]) == 0
        assert "camveil station crl" in capsys.readouterr().out  # the next step it names
        first = tmp_path / "crl-1.pem"
        out = station_crl(station, first, capsys)
        assert re.search(rf"^{serial(revoked)}\t{revoked.name}\trevoked\t\S+\tunspecified$", out,
                         re.MULTILINE), out  # fmt: skip
        assert "CRL number 2: 1 certificate(s) refused" in out
        incoming.write_bytes(first.read_bytes())
        reloads = process.log().count("Reloading config")
        done = run_service(command, restart=f"kill -HUP {process.pid}")
        assert done.returncode == 0, done.stderr
        assert "CRL number 2 in force" in done.stdout
        assert (target / "crl.pem").read_bytes() == first.read_bytes()
        assert not incoming.exists()
        wait_for_log(process, "Reloading config", after=reloads)
        assert refused(revoked, port)  # new handshakes: refused after a reload ...
        assert answers_ping(revoked_open)  # ... but the open connection is still served
        assert mqtt_connect(good, port, NAME) == CONNACK_OK

        # 2. renew a unit at the station; its old pair stays connected meanwhile (a thief's copy)
        old_open = open_session(renewed, port)
        new_pair = renew_at_station(paths, renewed, tmp_path / "unit-a-new")
        second = tmp_path / "crl-2.pem"
        out = station_crl(station, second, capsys)
        assert f"{serial(renewed)}\t{renewed.name}\tsuperseded\t" in out
        assert f"\t{revoked.name}\trevoked\t" in out
        assert "CRL number 3: 2 certificate(s) refused" in out
        incoming.write_bytes(second.read_bytes())
        done = run_service(command, restart=f"kill -TERM {process.pid}")
        assert done.returncode == 0, done.stderr
        assert "CRL number 3 in force; restarting mosquitto" in done.stdout
        restarted(process)

        for stale in (revoked_open, old_open):  # the restart ended both connections
            assert not answers_ping(stale)
            stale.close()
        assert refused(renewed, port), process.log_tail()  # the superseded pair
        assert refused(revoked, port)
        assert mqtt_connect(new_pair, port, NAME) == CONNACK_OK, process.log_tail()
        assert mqtt_connect(good, port, NAME) == CONNACK_OK

        # 3. not applied: an older CRL (would let the revoked unit back in), a foreign CA's
        marker = tmp_path / "restarted"
        for wrong, why in (
            (first.read_bytes(), "not newer than the 3 in force"),
            (pki.crl_pem(pki.make_crl(pki.make_ca("not the station"), [], number=99)),
             "is not a CRL signed by the CA"),
            (b"not a CRL\n", "is not a CRL signed by the CA"),
        ):  # fmt: skip
            incoming.write_bytes(wrong)
            done = run_service(command, restart=f"touch {marker}")
            assert done.returncode == 1 and why in done.stderr, (done.stdout, done.stderr)
            assert not marker.exists()
            assert (target / "crl.pem").read_bytes() == second.read_bytes()
        # the same CRL again: nothing to do, no restart
        incoming.write_bytes(second.read_bytes())
        done = run_service(command, restart=f"touch {marker}")
        assert done.returncode == 0 and "already in force" in done.stdout, done.stderr
        assert not marker.exists() and not incoming.exists()
        assert process.running
