"""The station's broker, as ``camveil station init`` renders it, run by a real mosquitto: it listens
where the broker URL says, its certificate names every host the units may dial (the URL's and each
``--broker-name``), and a unit certificate from the station's CA gets a CONNACK through any of
those names, while a name not in the certificate fails TLS verification at the unit.

A unit resolves the name and then verifies the certificate against it; here the TCP connection goes
to 127.0.0.1 and the TLS layer is told the name (SNI and hostname check), which is what the unit's
TLS stack does after DNS. "localhost" is also dialled by name through paho.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
from pathlib import Path

import pytest
from broker import ClientFiles, TestClient, mosquitto_binary
from station_rig import (
    CONNACK_OK,
    broker_process,
    connections_as,
    listener_line,
    mqtt_connect,
    provision_unit,
    settings,
    station_ca,
    unit_files,
    wait_for_log,
)

from agent.unitstate import UnitState
from contract.envelope.keys import load_peers
from contract.errors import ProvisioningError
from provisioning import pki
from provisioning.devbroker import HOST, free_port
from provisioning.station import init_station, revoke_unit


@pytest.mark.parametrize(
    ("url_host", "names", "bind"),
    [
        # a loopback URL: the listener binds loopback only
        ("localhost", ("cam-broker.test", "127.0.0.1"), HOST),
        # a LAN name: the listener binds every address; an IP address as an extra name
        ("cams.example", ("10.0.0.5", "broker.cams.example"), None),
    ],
)
def test_broker_listens_on_the_url_port_and_is_trusted_by_every_name(
    tmp_path: Path, url_host: str, names: tuple[str, ...], bind: str | None
) -> None:
    mosquitto_binary()
    port = free_port()
    assert port != 8883
    paths = init_station(
        tmp_path / "station",
        broker_url=f"mqtts://{url_host}:{port}",
        broker_names=names,
        broker_settings=settings(),
    )
    # the listener where the URL says
    assert listener_line(paths) == (f"listener {port} {bind}" if bind else f"listener {port}")

    # the certificate names the URL host first (CN) and every --broker-name, IPs as IP SANs
    cert = pki.load_cert_pem((paths.broker_dir / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(pki.x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(pki.x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(pki.x509.IPAddress)]
    assert pki.common_name(cert) == url_host
    for name in (url_host, *names):
        assert name in (ips if name[0].isdigit() else dns), (name, dns, ips)
    assert "10.0.0.5" not in dns  # an address is an IP SAN, not a DNS name

    unit = unit_files(paths, "cv-sanunit0000001", tmp_path / "unit")
    with broker_process(paths, port, tmp_path / "mosquitto.log") as process:
        for name in (url_host, *names):
            if name == "10.0.0.5":
                continue  # not an address of this machine; its SAN is checked above
            assert mqtt_connect(unit, port, name) == CONNACK_OK, (name, process.log_tail())
        # a name the station was not told about: the unit's TLS refuses the broker
        with pytest.raises(ssl.SSLCertVerificationError):
            mqtt_connect(unit, port, "not-the-broker.test")
        # dialled by name through DNS and paho, as a unit's transport does
        with TestClient(unit, port, host="localhost") as client:
            assert client.publish(f"camveil/v1/{unit.name}/status", b"x") < 0x80


def test_station_refuses_a_url_or_name_units_cannot_dial(tmp_path: Path) -> None:
    for url in ("broker.local", "http://foo", "mqtts://", "mqtts://h:0", "mqtts://h:x"):
        with pytest.raises(ProvisioningError, match="broker URL"):
            init_station(tmp_path / "st", broker_url=url)
    with pytest.raises(ProvisioningError, match="broker name 'http://x'"):
        init_station(tmp_path / "st", broker_names=("http://x",))
    assert not (tmp_path / "st").exists()  # nothing written before the checks
    paths = init_station(tmp_path / "st", broker_url="mqtts://Broker.Example")
    assert listener_line(paths) == "listener 8883"  # the default port, every address
    assert '"mqtts://broker.example:8883"' in paths.config.read_text()


# --- revocation ---------------------------------------------------------------------------------


def test_revoked_unit_is_refused_by_mosquitto(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import camveil.__main__ as cli

    mosquitto_binary()
    port = free_port()
    paths = init_station(
        tmp_path / "station", broker_url=f"mqtts://localhost:{port}", broker_settings=settings()
    )
    conf = (paths.broker_dir / "mosquitto.conf").read_text()
    assert f"crlfile {paths.crl}" in conf  # every station's broker checks its CRL from the start
    device = provision_unit(paths, tmp_path / "unit")
    state = UnitState.load(tmp_path / "unit")
    unit = ClientFiles(device, state.ca_cert, state.tls_cert, state.tls_key)
    other = unit_files(paths, "cv-stillgood00001", tmp_path / "other")  # not revoked
    ca = station_ca(paths)
    serial = pki.load_cert_pem(state.tls_cert.read_bytes()).serial_number

    with broker_process(paths, port, tmp_path / "mosquitto.log") as process:
        assert mqtt_connect(unit, port, "localhost") == CONNACK_OK
        session = TestClient(unit, port)  # a connection open before the revocation
        session.connect()
        try:
            assert cli.main(["station", "revoke", str(paths.root), device, "--reason", "lost"]) == 0
            out = capsys.readouterr().out
            assert f"revoked {device}" in out and "camveil station crl" in out
            assert "restarts mosquitto" in out

            # the station's records: CRL signed by the CA with the serial, trust files without it
            crl = pki.load_crl_pem(paths.crl.read_bytes())
            assert crl.is_signature_valid(ca.cert.public_key())
            assert crl.get_revoked_certificate_by_serial_number(serial) is not None
            assert device not in load_peers(paths.peers)
            assert device not in json.loads(paths.devices.read_text())["devices"]
            revoked = json.loads(paths.revocations.read_text())["revoked"]
            assert revoked[device]["serial"] == f"{serial:x}"
            assert revoked[device]["reason"] == "lost"
            assert cli.main(["station", "list", str(paths.root)]) == 0
            assert capsys.readouterr().out.startswith(f"{device}\trevoked\t")

            # SIGHUP (systemctl reload mosquitto): mosquitto 2.0.11 re-reads crlfile
            connected = connections_as(process.log(), device)
            assert process.pid is not None
            os.kill(process.pid, signal.SIGHUP)
            wait_for_log(process, "Reloading config")
            # the connection opened before the reload stays up (same TCP session, no reconnect)
            assert session.publish(f"camveil/v1/{device}/status", b"x") < 0x80
            assert session._connack.empty()  # no disconnect seen by the client
            assert connections_as(process.log(), device) == connected
        finally:
            session.close()
        # new handshakes of the revoked unit fail; the raw connects use the unit's client id, so
        # they come after the session is closed (they would take it over)
        deadline = time.monotonic() + 5
        while True:
            try:
                answer = mqtt_connect(unit, port, "localhost")
            except OSError:  # TLS 1.3: the "certificate revoked" alert, or the close after it
                break
            assert answer == CONNACK_OK
            assert time.monotonic() < deadline, "the CRL was not reloaded on SIGHUP"
            time.sleep(0.05)
        wait_for_log(process, "certificate verify failed")
        assert mqtt_connect(other, port, "localhost") == CONNACK_OK  # only the one unit

        process.restart()  # the open session is gone, and the unit cannot come back
        refusals = process.log().count("certificate verify failed")
        with pytest.raises(OSError):  # TLS 1.3: the alert, or the close it leads to, at the unit
            mqtt_connect(unit, port, "localhost")
        wait_for_log(process, "certificate verify failed", after=refusals)
        assert mqtt_connect(other, port, "localhost") == CONNACK_OK

    # the revoked unit's keys cannot be provisioned again (it must be factory-reset first)
    with pytest.raises(ProvisioningError, match="was revoked"):
        provision_unit(paths, tmp_path / "unit")
    # and a second revoke says it is done already
    assert cli.main(["station", "revoke", str(paths.root), device]) == 2
    assert "revoked already" in capsys.readouterr().err


def test_revoking_an_unknown_unit_names_the_known_ones(tmp_path: Path) -> None:
    paths = init_station(tmp_path / "station")
    with pytest.raises(
        ProvisioningError, match=r"no unit 'cv-nobody' in the inventory \(units: none\)"
    ):
        revoke_unit(paths.root, "cv-nobody")
