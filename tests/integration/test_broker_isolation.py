"""The broker config from provisioning.broker, run by a real mosquitto, isolates clients:
certificates from our CA only, each device confined to its own topics, backends reading all
devices through shared subscriptions, the last will as the retained status."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from broker import HOST, ClientFiles, Mosquitto, TestClient, TestPki

from agent.transport import ConnectionEvent, ConnectionState, Transport, TransportConfig
from contract.envelope import Identity, PeerKeys, ReplayGuard, open_envelope, save_identity

NOT_AUTHORIZED = 0x87
QUIET = 0.5  # how long "nothing arrives" is watched


def _refused(files: ClientFiles, port: int, username: str | None = None) -> str:
    """Connect and return how it failed; AssertionError if the broker let the client in."""
    client = TestClient(files, port)
    if username is not None:
        client.client.username_pw_set(username)
    try:
        client.connect(timeout=5)
    except (OSError, ssl.SSLError) as exc:  # TLS alert, reset, CONNACK refusal
        return f"{type(exc).__name__}: {exc}"
    client.close()
    raise AssertionError(f"{files.name} was let in")


def test_client_without_certificate_is_refused(mosquitto: Mosquitto, mqtt_pki: TestPki) -> None:
    no_cert = ClientFiles("cam-iso-a", mqtt_pki.ca_file, None, None)
    before = mosquitto.log().count("peer did not return a certificate")
    _refused(no_cert, mosquitto.port, username="cam-iso-a")  # a claimed username does not help
    mosquitto.wait_for_log("peer did not return a certificate", after=before)


def test_client_certificate_from_another_ca_is_refused(
    mosquitto: Mosquitto, mqtt_pki: TestPki, tmp_path: Path
) -> None:
    rogue = TestPki.create(tmp_path / "rogue")
    files = rogue.device("cam-iso-a")  # same CN as a real device, wrong issuer
    trusting_our_broker = ClientFiles(files.name, mqtt_pki.ca_file, files.cert, files.key)
    before = mosquitto.log().count("certificate verify failed")
    _refused(trusting_our_broker, mosquitto.port)
    mosquitto.wait_for_log("certificate verify failed", after=before)


def test_device_cannot_publish_on_another_devices_topics(
    mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    with (
        TestClient(mqtt_pki.backend("dashboard"), mosquitto.port) as backend,
        TestClient(mqtt_pki.device("cam-iso-a"), mosquitto.port) as dev_a,
    ):
        backend.subscribe("camveil/v1/cam-iso-b/#")
        for topic in (
            "camveil/v1/cam-iso-b/event/person",
            "camveil/v1/cam-iso-b/status",
            "camveil/v1/cam-iso-b/cmd/ack",
            "camveil/v1/cam-iso-b/cmd",
        ):
            reason = dev_a.publish(topic, b"forged")
            assert reason.value == NOT_AUTHORIZED, topic
        # nor a device's own command topic (only the backend writes commands)
        assert dev_a.publish("camveil/v1/cam-iso-a/cmd", b"self").value == NOT_AUTHORIZED
        assert backend.expect(QUIET) is None


def test_device_cannot_read_another_devices_commands_or_events(
    mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    """mosquitto 2.0 grants the SUBSCRIBE (SUBACK 0x01) but checks read access on every
    delivery, so nothing of another device ever arrives. Newer brokers may refuse the SUBACK
    (>= 0x80); either is fine, delivery is what matters."""
    with (
        TestClient(mqtt_pki.device("cam-iso-a"), mosquitto.port) as dev_a,
        TestClient(mqtt_pki.device("cam-iso-b"), mosquitto.port) as dev_b,
        TestClient(mqtt_pki.backend("dashboard"), mosquitto.port) as backend,
    ):
        for topic in ("camveil/v1/cam-iso-b/cmd", "camveil/v1/#", "$share/g/camveil/v1/+/event/#"):
            dev_a.subscribe(topic)
        assert not dev_b.subscribe("camveil/v1/cam-iso-b/cmd").is_failure
        assert not backend.publish("camveil/v1/cam-iso-b/cmd", b"for b").is_failure
        assert not dev_b.publish("camveil/v1/cam-iso-b/event/person", b"b's event").is_failure
        got = dev_b.expect()
        assert got is not None and got.payload == b"for b"
        assert dev_a.expect(QUIET) is None


def test_own_events_reach_the_backend_through_a_shared_subscription(
    mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    with (
        TestClient(mqtt_pki.backend("ingest"), mosquitto.port) as ingest_1,
        TestClient(mqtt_pki.backend("ingest"), mosquitto.port) as ingest_2,
        TestClient(mqtt_pki.device("cam-iso-c"), mosquitto.port) as dev,
    ):
        for ingest in (ingest_1, ingest_2):
            for topic in ("event/#", "status", "cmd/ack"):
                reason = ingest.subscribe(f"$share/ingest/camveil/v1/+/{topic}")
                assert not reason.is_failure, topic
        sent = [(f"camveil/v1/cam-iso-c/event/e{i}", b"%d" % i) for i in range(10)]
        sent += [
            ("camveil/v1/cam-iso-c/status", b"online"),
            ("camveil/v1/cam-iso-c/cmd/ack", b"ok"),
        ]
        for topic, payload in sent:
            assert dev.publish(topic, payload).value < 0x80, topic  # 0x00 or 0x10
        received = []
        deadline = time.monotonic() + 5
        quiet_until = None
        while time.monotonic() < (quiet_until or deadline):
            for ingest in (ingest_1, ingest_2):
                msg = ingest.expect(0.02)
                # not other tests' retained status (mosquitto sends retained to $share too)
                if msg is not None and msg.topic.startswith("camveil/v1/cam-iso-c/"):
                    received.append((msg.topic, msg.payload))
            if len(received) >= len(sent) and quiet_until is None:
                quiet_until = time.monotonic() + QUIET  # then watch for duplicates
        # each message exactly once across the group
        assert sorted(received) == sorted(sent)


def test_backend_cannot_publish_events_and_operator_cannot_read_them(
    mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    with (
        TestClient(mqtt_pki.backend("dashboard"), mosquitto.port) as backend,
        TestClient(mqtt_pki.operator("console"), mosquitto.port) as operator,
        TestClient(mqtt_pki.device("cam-iso-d"), mosquitto.port) as dev,
    ):
        assert backend.publish("camveil/v1/cam-iso-d/event/x", b"f").value == NOT_AUTHORIZED
        assert backend.publish("camveil/v1/cam-iso-d/status", b"f").value == NOT_AUTHORIZED
        operator.subscribe("camveil/v1/+/event/#")
        dev.publish("camveil/v1/cam-iso-d/event/x", b"e")
        assert operator.expect(QUIET) is None


def test_transport_refuses_a_broker_certified_by_another_ca(
    mosquitto_factory: Callable[..., Mosquitto], mqtt_pki: TestPki, tmp_path: Path
) -> None:
    impostor = mosquitto_factory(TestPki.create(tmp_path / "impostor"))
    files = mqtt_pki.device("cam-iso-e")
    events: list[ConnectionEvent] = []
    transport = Transport(
        TransportConfig("cam-iso-e", HOST, files.ca, files.cert, files.key, port=impostor.port,
                        reconnect_min_s=0.05, reconnect_max_s=0.2),
        on_acked=lambda mid: None,
        on_state=events.append,
    )  # fmt: skip
    with transport:
        assert not transport.wait_connected(0.5)
    failures = [e for e in events if e.state is ConnectionState.CONNECT_FAILED]
    assert failures and all("certificate verify failed" in e.reason for e in failures), failures
    assert not any(e.state is ConnectionState.CONNECTED for e in events)


def test_transport_checks_the_broker_host_name(
    mosquitto_factory: Callable[..., Mosquitto], mqtt_pki: TestPki
) -> None:
    """A certificate from the right CA for another host name is refused too."""
    elsewhere = mosquitto_factory(mqtt_pki.with_server(("broker.invalid",)))
    files = mqtt_pki.device("cam-iso-f")
    events: list[ConnectionEvent] = []
    transport = Transport(
        TransportConfig("cam-iso-f", HOST, files.ca, files.cert, files.key, port=elsewhere.port,
                        reconnect_min_s=0.05, reconnect_max_s=0.2),
        on_acked=lambda mid: None,
        on_state=events.append,
    )  # fmt: skip
    with transport:
        assert not transport.wait_connected(0.5)
    failures = [e for e in events if e.state is ConnectionState.CONNECT_FAILED]
    assert failures and all("mismatch" in e.reason for e in failures), failures


DEVICE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from contract.envelope import PublicIdentity, load_identity, seal
    from agent.transport import Transport, TransportConfig

    key_file, backend_pub, ca, cert, key, port = sys.argv[1:]
    me = load_identity(Path(key_file))
    backend = PublicIdentity.from_cbor(bytes.fromhex(backend_pub))
    topic = f"camveil/v1/{me.kid}/status"
    will = seal({"state": "offline"}, sender=me, recipient=backend, topic=topic, seq=7,
                device=me.kid)
    config = TransportConfig(me.kid, "127.0.0.1", Path(ca), Path(cert), Path(key), port=int(port))
    transport = Transport(config, on_acked=lambda mid: None, will=will)
    transport.start()
    assert transport.wait_connected(10)
    print("connected", flush=True)
    time.sleep(60)
    """
)


def test_last_will_is_the_retained_status_when_the_unit_dies(
    mosquitto: Mosquitto, mqtt_pki: TestPki, tmp_path: Path
) -> None:
    device, backend_id = Identity.generate("cam-iso-will"), Identity.generate("backend-dashboard")
    save_identity(tmp_path / "device.key", device)
    files = mqtt_pki.device(device.kid)
    topic = f"camveil/v1/{device.kid}/status"
    with TestClient(mqtt_pki.backend("dashboard"), mosquitto.port) as watcher:
        watcher.subscribe(topic)
        unit = subprocess.Popen(
            [sys.executable, "-c", DEVICE_SCRIPT, str(tmp_path / "device.key"),
             backend_id.public().to_cbor().hex(), str(files.ca), str(files.cert),
             str(files.key), str(mosquitto.port)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert unit.stdout is not None
            assert unit.stdout.readline().strip() == "connected"
            assert watcher.expect(0.2) is None  # nothing while the unit lives
            os.kill(unit.pid, signal.SIGKILL)
        finally:
            unit.kill()
            unit.wait()
            if unit.stdout is not None:
                unit.stdout.close()
        will = watcher.expect(5)
        assert will is not None
    # a dashboard that connects later still learns the unit is offline: the will is retained
    # (MQTT 5 says retained messages are not sent to shared subscriptions, mosquitto 2.0 sends
    # them anyway: a dashboard reads status without $share to be portable)
    with TestClient(mqtt_pki.backend("ingest"), mosquitto.port) as late:
        late.subscribe(topic)
        retained = late.expect(5)
    assert retained is not None and retained.retain and retained.payload == will.payload
    opened = open_envelope(
        will.payload,
        topic=topic,
        trusted_senders=PeerKeys([device.public()]),
        recipient=backend_id,
        replay_guard=ReplayGuard(),
    )
    assert opened.message["state"] == "offline" and opened.seq == 7
