"""The station's broker, as ``camveil station init`` renders it, run by a real mosquitto: it listens
where the broker URL says, its certificate names every host the units may dial (the URL's and each
``--broker-name``), and a unit certificate from the station's CA gets a CONNACK through any of
those names, while a name not in the certificate fails TLS verification at the unit.

A unit resolves the name and then verifies the certificate against it; here the TCP connection goes
to 127.0.0.1 and the TLS layer is told the name (SNI and hostname check), which is what the unit's
TLS stack does after DNS. "localhost" is also dialled by name through paho.
"""

from __future__ import annotations

import os
import pwd
import socket
import ssl
from pathlib import Path

import pytest
from broker import ClientFiles, TestClient, mosquitto_binary

from provisioning import pki
from provisioning.broker import BrokerSettings
from provisioning.devbroker import HOST, BrokerProcess, ProbeClient, free_port
from provisioning.station import StationPaths, init_station

CONNACK_OK = b"\x20\x02\x00\x00"


def settings() -> BrokerSettings:
    # as root, mosquitto would drop to user "mosquitto", which cannot read the 0600 key
    return BrokerSettings(persistence=False, user=pwd.getpwuid(os.geteuid()).pw_name)


def station_ca(paths: StationPaths) -> pki.Issued:
    return pki.Issued(
        pki.load_key_pem((paths.ca_dir / "ca.key").read_bytes()),
        pki.load_cert_pem((paths.ca_dir / "ca.crt").read_bytes()),
    )


def unit_files(paths: StationPaths, device: str, where: Path) -> ClientFiles:
    """A device certificate from the station's CA, as provisioning gives a unit."""
    where.mkdir(exist_ok=True)
    files = pki.write_issued(where, device, pki.make_device_cert(station_ca(paths), device))
    return ClientFiles(device, paths.ca_dir / "ca.crt", files.cert, files.key)


def backend_files(paths: StationPaths) -> ClientFiles:
    return ClientFiles(
        "backend-dashboard",
        paths.ca_dir / "ca.crt",
        paths.clients_dir / "backend-dashboard.crt",
        paths.clients_dir / "backend-dashboard.key",
    )


def broker_process(paths: StationPaths, port: int, log: Path) -> BrokerProcess:
    backend = backend_files(paths)
    assert backend.cert is not None and backend.key is not None
    return BrokerProcess(
        paths.broker_dir / "mosquitto.conf",
        port=port,
        probe=ProbeClient(backend.ca, backend.cert, backend.key),
        log_path=log,
        cwd=paths.broker_dir,
    )


def mqtt_connect(files: ClientFiles, port: int, server_name: str) -> bytes:
    """TCP to 127.0.0.1:port, TLS verifying the broker as ``server_name``, then a raw MQTT 3.1.1
    CONNECT; the bytes that came back (``20 02 00 00`` is a CONNACK accepting it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(files.ca)
    assert files.cert is not None and files.key is not None
    context.load_cert_chain(files.cert, files.key)
    cid = files.name.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    with (
        socket.create_connection((HOST, port), timeout=5.0) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(bytes([0x10, len(body)]) + body)
        data = b""
        while len(data) < 4:
            chunk = tls.recv(4 - len(data))
            if not chunk:
                break
            data += chunk
        return data


def listener_line(paths: StationPaths) -> str:
    conf = (paths.broker_dir / "mosquitto.conf").read_text()
    (line,) = [x for x in conf.splitlines() if x.startswith("listener ")]
    return line


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
    from contract.errors import ProvisioningError

    for url in ("broker.local", "http://foo", "mqtts://", "mqtts://h:0", "mqtts://h:x"):
        with pytest.raises(ProvisioningError, match="broker URL"):
            init_station(tmp_path / "st", broker_url=url)
    with pytest.raises(ProvisioningError, match="broker name 'http://x'"):
        init_station(tmp_path / "st", broker_names=("http://x",))
    assert not (tmp_path / "st").exists()  # nothing written before the checks
    paths = init_station(tmp_path / "st", broker_url="mqtts://Broker.Example")
    assert listener_line(paths) == "listener 8883"  # the default port, every address
    assert '"mqtts://broker.example:8883"' in paths.config.read_text()
