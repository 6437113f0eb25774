"""A broker that refuses the unit's certificate, as the unit's journal tells it (agent.linkreport).

With TLS 1.3 (what mosquitto 2.0.11 and the unit agree on with the station's broker config) the
broker checks the client certificate after the client's side of the handshake has finished, so a
refusal arrives as an alert on the first read of the new connection, not as a handshake error.
paho reported it as "Unspecified error"; the link report now says that the broker closed the
connection right after the TLS handshake, with the broker's alert and what it means, naming
host:port, and the status LED shows "refused" (retrying will not fix it), not "unreachable".
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import socket
import ssl
import time
from pathlib import Path

import pytest
from broker import ClientFiles, mosquitto_binary
from station_rig import broker_process, settings, station_ca, unit_files

from agent.linkreport import LinkReport
from agent.transport import ConnectionEvent, ConnectionState, Transport, TransportConfig
from provisioning import pki
from provisioning.devbroker import HOST, free_port
from provisioning.station import init_station

DEVICE = "cv-0123456789abcdef"


def pair(where: Path, stem: str, issued: pki.Issued, ca: Path) -> ClientFiles:
    files = pki.write_issued(where, stem, issued)
    return ClientFiles(DEVICE, ca, files.cert, files.key)


def tls_version(files: ClientFiles, port: int) -> str | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(files.ca)
    assert files.cert is not None and files.key is not None
    context.load_cert_chain(files.cert, files.key)
    with (
        socket.create_connection((HOST, port), timeout=5.0) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        return tls.version()


def first_report(
    files: ClientFiles, port: int, caplog: pytest.LogCaptureFixture
) -> tuple[str, ConnectionEvent, list[str]]:
    """Run the unit's transport with its link report until the first refusal is reported."""
    leds: list[str] = []
    events: queue.Queue[ConnectionEvent] = queue.Queue()
    report = LinkReport(f"{HOST}:{port}", lambda: 3, show=leds.append)

    def on_state(event: ConnectionEvent) -> None:
        events.put(event)
        report.on_event(event)

    assert files.cert is not None and files.key is not None
    config = TransportConfig(
        device_id=DEVICE, host=HOST, port=port, ca_file=files.ca, cert_file=files.cert,
        key_file=files.key, reconnect_min_s=0.2, reconnect_max_s=0.5,
    )  # fmt: skip
    transport = Transport(config, on_acked=lambda mid: None, on_state=on_state)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent.linkreport"):
        transport.start()
        try:
            event = events.get(timeout=15)
            deadline = time.monotonic() + 5
            while report.reports == 0:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            transport.stop()
        (line,) = [r.getMessage() for r in caplog.records if r.name == "agent.linkreport"]
    return line, event, leds


def test_a_refused_certificate_is_reported_with_what_it_means(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mosquitto_binary()
    port = free_port()
    paths = init_station(
        tmp_path / "station", broker_url=f"mqtts://{HOST}:{port}", broker_settings=settings()
    )
    ca = station_ca(paths)
    ca_file = paths.ca_dir / "ca.crt"
    good = unit_files(paths, DEVICE, tmp_path / "good")
    revoked = pair(tmp_path, "revoked", pki.make_device_cert(ca, DEVICE), ca_file)
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    expired = pair(tmp_path, "expired", pki.make_device_cert(ca, DEVICE, days=1, now=long_ago),
                   ca_file)  # fmt: skip
    foreign = pair(tmp_path, "foreign", pki.make_device_cert(pki.make_ca("other"), DEVICE),
                   ca_file)  # fmt: skip
    assert revoked.cert is not None
    serial = pki.load_cert_pem(revoked.cert.read_bytes()).serial_number
    crl = pki.make_crl(ca, [pki.Revoked(serial, dt.datetime.now(dt.timezone.utc))], number=2)
    pki.write_atomic(paths.crl, pki.crl_pem(crl), 0o644)

    with broker_process(paths, port, tmp_path / "mosquitto.log") as process:
        assert tls_version(good, port) == "TLSv1.3"  # the broker and the unit agree on 1.3
        for files, alert, meaning in (
            (revoked, "certificate revoked", "on its CRL"),
            (expired, "certificate expired", "past its end date"),
            (foreign, "unknown ca", "does not know the CA"),
        ):
            line, event, leds = first_report(files, port, caplog)
            assert event.state is ConnectionState.CONNECT_FAILED
            assert event.reason.startswith(
                "the broker closed the connection right after the TLS handshake: "
            ), event.reason
            assert alert in event.reason, process.log_tail()
            assert "Unspecified error" not in line
            assert line.startswith(f"cannot publish to {HOST}:{port}: the broker closed"), line
            assert meaning in line, line
            assert leds[0] == "refused"  # fast blink: retrying will not fix it
