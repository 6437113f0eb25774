"""From the USB cable to the backend: a unit provisioned over a real pty pair connects to a real
mosquitto with its new certificate, and what it publishes opens at the station.

The chain, all real code and real files:

1. ``camveil station init`` (:func:`provisioning.station.init_station`) in a temporary directory,
   with the broker URL of a free loopback port; the station writes the broker's config, ACL and
   a server certificate signed by its own CA (:func:`provisioning.broker.write_broker_state`).
2. Provisioning over two ptys through pyserial (the rig of ``test_provisioning.py``): the unit
   side is :func:`provisioning.unit.listen` on its own state directory.
3. mosquitto runs the station's ``broker/mosquitto.conf`` (:class:`provisioning.devbroker.
   BrokerProcess`); the backend side is :class:`dashboard.listener.Listener` with the station's
   ``clients/backend-dashboard`` certificate, ``backend.key`` and ``devices.cbor``.
4. ``camveil run`` (the daemon, synthetic camera) as a subprocess on the unit's state directory:
   no broker URL in its config, so it dials the one from the provisioning bundle.

Negative control: a certificate for the same device id from another CA never gets a CONNACK,
while the same raw MQTT CONNECT with the provisioned certificate does.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from broker import ClientFiles, TestClient, mosquitto_binary
from serial_rig import BAUD, FaultProxy, Pty, Unit, verify_provisioned
from station_rig import CONNACK_OK, connections_as, mqtt_connect, wait_for_log

from agent.unitstate import UnitState
from contract.envelope.keys import load_identity, load_peers
from contract.envelope.replay import ReplayGuard
from contract.envelope.seal import open_envelope
from contract.topics import device_filter, topic_device
from dashboard.listener import Listener, ListenerConfig, MemoryDedupe, Opener, Received
from dashboard.receipts import Receipter
from hw.serial_link import PySerialLink
from provisioning import pki
from provisioning.broker import BrokerSettings
from provisioning.devbroker import HOST, BrokerProcess, ProbeClient, free_port
from provisioning.serial_proto import Channel
from provisioning.station import Station, StationPaths, add_backend, init_station

FRAMES = 12


@dataclass
class Inbox:
    """What the station's listener delivered, in order."""

    received: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, received: Received) -> None:
        with self.cond:
            self.received.append(received)
            self.cond.notify_all()

    def wait_for(self, predicate: object, timeout: float) -> list[Received]:
        assert callable(predicate)
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.received), timeout)
            assert ok, f"not received in {timeout} s: {[(r.type, r.seq) for r in self.received]}"
            return list(self.received)


@pytest.fixture
def station(tmp_path: Path) -> tuple[StationPaths, int]:
    port = free_port()
    settings = BrokerSettings(
        port=port,
        bind_address=HOST,
        persistence=False,
        # as root, mosquitto would drop to user "mosquitto", which cannot read the 0600 key
        user=pwd.getpwuid(os.geteuid()).pw_name,
    )
    paths = init_station(
        tmp_path / "station", broker_url=f"mqtts://{HOST}:{port}", broker_settings=settings
    )
    # a second backend process (the raw watcher below) needs a certificate of its own
    add_backend(paths.root, "raw")
    return paths, port


@pytest.fixture
def ptys() -> Iterator[tuple[Pty, Pty]]:
    a, b = Pty(), Pty()
    with FaultProxy(a, b, seed=1):  # no faults: a plain cable
        yield a, b
    a.close()
    b.close()


def test_provisioned_unit_publishes_to_the_stations_broker(
    station: tuple[StationPaths, int], ptys: tuple[Pty, Pty], tmp_path: Path
) -> None:
    mosquitto_binary()
    start = time.monotonic()
    paths, port = station
    a, b = ptys

    # --- 1-2: provision one unit over the pty pair ---------------------------------------------
    unit_dir = tmp_path / "unit"
    unit = Unit(unit_dir, b.path).start()
    try:
        with PySerialLink(a.path, BAUD) as link:
            result = Station(paths, Channel(link), timeout=2.0, attempts=3).provision(site="lab")
    finally:
        unit.stop()
    assert result.outcome == "provisioned"
    device = verify_provisioned(unit_dir, paths)
    assert device == result.device
    unit_state = UnitState.load(unit_dir)
    assert unit_state.broker_url == f"mqtts://{HOST}:{port}"
    ca_cert = pki.load_cert_pem((paths.ca_dir / "ca.crt").read_bytes())
    unit_cert = pki.load_cert_pem(unit_state.tls_cert.read_bytes())
    unit_cert.verify_directly_issued_by(ca_cert)  # the NEW certificate, from the station's CA
    assert pki.common_name(unit_cert) == device

    # --- 3: the station's broker and the station's backend listener -----------------------------
    broker_dir = paths.broker_dir
    server_cert = pki.load_cert_pem((broker_dir / "server.crt").read_bytes())
    server_cert.verify_directly_issued_by(ca_cert)
    assert (broker_dir / "ca.crt").read_bytes() == (paths.ca_dir / "ca.crt").read_bytes()
    backend = ClientFiles(
        "backend-dashboard",
        paths.ca_dir / "ca.crt",
        paths.clients_dir / "backend-dashboard.crt",
        paths.clients_dir / "backend-dashboard.key",
    )
    assert backend.cert is not None and backend.key is not None
    log_path = tmp_path / "mosquitto.log"
    process = BrokerProcess(
        broker_dir / "mosquitto.conf",
        port=port,
        probe=ProbeClient(backend.ca, backend.cert, backend.key),
        log_path=log_path,
        cwd=broker_dir,
    )
    backend_identity = load_identity(paths.backend_key)
    trusted = load_peers(paths.peers)
    assert device in trusted
    inbox = Inbox()
    # the backend receipts what it got: the unit (delete_on = "receipt") then forgets it
    receipter = Receipter(backend_identity, lambda: trusted, lambda e: listener.publish_receipt(e))
    listener = Listener(
        ListenerConfig(
            host=HOST,
            port=port,
            ca_file=backend.ca,
            cert_file=backend.cert,
            key_file=backend.key,
            shared=False,
        ),
        Opener(backend_identity, trusted, MemoryDedupe()),
        inbox.add,
        receipter=receipter,
    )
    raw_files = ClientFiles(
        "backend-raw",
        paths.ca_dir / "ca.crt",
        paths.clients_dir / "backend-raw.crt",
        paths.clients_dir / "backend-raw.key",
    )
    with process:
        raw = TestClient(raw_files, port)  # the raw payloads, to open them by hand as well
        raw.connect()
        listener.start()
        receipter.start()
        try:
            assert raw.subscribe(device_filter(device)) < 0x80
            assert listener.subscribed.wait(10), f"listener not subscribed:\n{process.log_tail()}"

            # --- negative control: same device id, certificate from another CA -------------------
            rogue_ca = pki.make_ca("not the station")
            rogue_key = pki.make_device_key()
            rogue = pki.Issued(
                rogue_key, pki.sign_device_csr(rogue_ca, pki.make_csr(rogue_key, device))
            )
            (tmp_path / "rogue").mkdir()
            rogue_files = pki.write_issued(tmp_path / "rogue", "device", rogue)
            rogue_client = ClientFiles(device, backend.ca, rogue_files.cert, rogue_files.key)
            try:
                answer = mqtt_connect(rogue_client, port, HOST)  # client id: its name, the device
            except OSError:  # includes ssl.SSLError: the handshake or the first read failed
                answer = b""
            assert answer == b"", f"a foreign-CA certificate got {answer.hex()}"
            wait_for_log(process, "certificate verify failed")  # refused by the broker's TLS
            assert connections_as(process.log(), device) == 0
            assert listener.stats.as_dict()["received"] == 0

            # --- 4: the unit's daemon, from its provisioned state -----------------------------
            config = tmp_path / "camveil.toml"
            config.write_text(
                '[camera]\nkind = "synthetic"\nwidth = 320\nheight = 240\nrealtime = false\n\n'
                '[detector]\nmodel = "blazeface_full_int8"\n\n'
                f'[output]\ndir = "{tmp_path / "out"}"\n\n'
                f'[mqtt]\nenabled = true\nstate_dir = "{unit_dir}"\n'
                "reconnect_min_s = 0.2\nreconnect_max_s = 1.0\n\n"
                "[events]\npresence_window_s = 1.0\nhealth_interval_s = 60.0\n"
            )  # no [mqtt] broker: the URL comes from the provisioning bundle
            agent = subprocess.run(
                [sys.executable, "-m", "camveil", "run", "--config", str(config),
                 "--frames", str(FRAMES)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert agent.returncode == 0, agent.stderr[-3000:]
            summary = json.loads(agent.stdout.strip().splitlines()[-1])["summary"]
            assert summary["device"] == device
            assert summary["outbox_depth"] == 0 and summary["acked"] == summary["enqueued"] >= 2

            # --- assertions at the station --------------------------------------------------
            got = inbox.wait_for(lambda rs: len(rs) >= summary["enqueued"], timeout=10)
            first = got[0]
            assert first.device == device
            assert topic_device(first.topic) == device
            assert first.type in {"status", "presence", "health"}
            assert {r.type for r in got} >= {"status", "health"}
            status = [r for r in got if r.type == "status"]
            assert status[0].message["body"] == {"state": "online", "delivery": "receipt"}
            # the daemon stopped with its sealed last will: the broker published it for the unit
            inbox.wait_for(
                lambda rs: any(
                    r.type == "status" and r.message["body"]["state"] == "offline" for r in rs
                ),
                timeout=10,
            )
            assert all(r.device == device for r in got)
            assert listener.stats.bad == {} and listener.stats.duplicates == 0

            # the first raw payload, opened by hand with the station's backend key
            message = raw.expect(timeout=5)
            assert message is not None
            opened = open_envelope(
                bytes(message.payload),
                topic=message.topic,
                trusted_senders=trusted,
                recipient=backend_identity,
                replay_guard=ReplayGuard(),
            )
            assert opened.sender_kid == opened.device == device
            assert opened.seq == first.seq

            log = process.log()
            assert connections_as(log, device) >= 1, process.log_tail()
            assert f"as {device} " in log  # client id = username = certificate CN

            # the raw CONNECT that the foreign certificate failed works with the real one
            genuine = ClientFiles(device, backend.ca, unit_state.tls_cert, unit_state.tls_key)
            assert mqtt_connect(genuine, port, HOST) == CONNACK_OK
        finally:
            receipter.stop()
            listener.stop()
            raw.close()
    elapsed = time.monotonic() - start
    print(f"\nprovision -> broker -> station in {elapsed:.1f} s ({len(got)} messages)")
    assert elapsed < 40
