"""Station, broker and client helpers for tests of the station's broker configuration,
revocation and broker bundle (shared by test_station_broker and test_broker_bundle)."""

from __future__ import annotations

import os
import pwd
import socket
import ssl
import subprocess
import time
from pathlib import Path

from broker import ClientFiles
from serial_rig import BAUD, FaultProxy, Pty, Unit

from hw.serial_link import PySerialLink
from provisioning import pki
from provisioning.broker import BrokerSettings
from provisioning.devbroker import HOST, BrokerProcess, ProbeClient
from provisioning.serial_proto import Channel
from provisioning.station import Station, StationPaths

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


def provision_unit(paths: StationPaths, unit_dir: Path) -> str:
    """One unit provisioned over a real pty pair (the rig of test_provisioning.py)."""
    a, b = Pty(), Pty()
    try:
        with FaultProxy(a, b, seed=1):  # no faults: a plain cable
            unit = Unit(unit_dir, b.path).start()
            try:
                with PySerialLink(a.path, BAUD) as link:
                    channel = Channel(link)
                    result = Station(paths, channel, timeout=2.0, attempts=3).provision()
            finally:
                unit.stop()
    finally:
        a.close()
        b.close()
    return result.device


def connections_as(log: str, username: str) -> int:
    """Connections mosquitto accepted with this username (certificate CN)."""
    return log.count(f"u'{username}')")


def wait_for_log(process: BrokerProcess, text: str, after: int = 0, timeout: float = 5.0) -> None:
    """Until ``text`` occurs more than ``after`` times in the broker's log."""
    deadline = time.monotonic() + timeout
    while process.log().count(text) <= after:
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{process.log_tail()}"
        time.sleep(0.02)


def install_bundle(bundle: Path, host: Path, reload: str) -> subprocess.CompletedProcess[str]:
    """The bundle's install.sh, with the broker host's paths under ``host`` (conf.d, systemd)
    and this user owning the key; systemctl is not run (no systemd here)."""
    (host / "conf.d").mkdir(parents=True, exist_ok=True)
    (host / "systemd").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MOSQUITTO_USER": pwd.getpwuid(os.geteuid()).pw_name,
        "CONF_D": str(host / "conf.d"),
        "SYSTEMD_DIR": str(host / "systemd"),
        "SYSTEMCTL": "true",
        "RELOAD": reload,
    }
    done = subprocess.run(
        ["sh", str(bundle / "install.sh")], env=env, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def host_broker(paths: StationPaths, host: Path, port: int, log: Path) -> BrokerProcess:
    """mosquitto as on a Debian broker host after install.sh: the host's main config (user,
    persistence, logging) including ``host/conf.d``, where the bundle's drop-in is."""
    main_conf = host / "mosquitto.conf"
    main_conf.write_text(
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\npersistence true\n"
        f"persistence_location {host}/data/\nlog_dest stderr\ninclude_dir {host / 'conf.d'}\n"
    )
    (host / "data").mkdir(exist_ok=True)
    backend = backend_files(paths)
    assert backend.cert is not None and backend.key is not None
    return BrokerProcess(
        main_conf,
        port=port,
        probe=ProbeClient(backend.ca, backend.cert, backend.key),
        log_path=log,
        cwd=host,
    )
