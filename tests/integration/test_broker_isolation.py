"""The broker config from provisioning.broker, run by a real mosquitto, isolates clients:
certificates from our CA only, each device confined to its own topics, backends reading all
devices through shared subscriptions, the last will as the retained status."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from broker import HOST, ClientFiles, Mosquitto, TestClient, TestPki

from agent.events import Header, SnapshotEvent, seal_event
from agent.transport import ConnectionEvent, ConnectionState, Transport, TransportConfig
from contract.envelope import (
    Identity,
    PeerKeys,
    PublicIdentity,
    ReplayGuard,
    SealedEnvelope,
    load_identity,
    open_envelope,
    save_identity,
    seal,
)
from dashboard.listener import Listener, ListenerConfig, MemoryDedupe, Opener, Received
from provisioning.broker import BrokerSettings, new_share_group
from provisioning.devbroker import BrokerProcess, ProbeClient, free_port
from tools.devpki import make_dev_pki

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
        TestClient(mqtt_pki.backend("ingest-2"), mosquitto.port) as ingest_2,
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


# --- issue 14: access control and limits ---------------------------------------------------------


class _Ingest:
    """The real backend listener (dashboard.listener) on a shared subscription, collecting."""

    def __init__(self, pki: TestPki, port: int, name: str, group: str, device: Identity) -> None:
        self.backend = Identity.generate("backend")
        self.opener = Opener(self.backend, PeerKeys([device.public()]), MemoryDedupe())
        self.got: list[Received] = []
        files = pki.backend(name)
        assert files.cert is not None and files.key is not None
        config = ListenerConfig(HOST, port, files.ca, files.cert, files.key, group=group)
        self.listener = Listener(config, self.opener, self.got.append)

    def quiet(self, count: int, timeout: float = 15.0) -> int:
        """Wait for ``count`` messages (or ``timeout``), then ``QUIET`` more; how many came."""
        deadline = time.monotonic() + timeout
        while len(self.got) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(QUIET)
        return len(self.got)


def _event(device: Identity, backend: PublicIdentity, seq: int, kind: str = "x") -> SealedEnvelope:
    topic = f"camveil/v1/{device.kid}/event/{kind}"
    body = {"type": kind, "ts": 0, "boot": "0123456789abcdef", "body": {}}
    return seal(body, sender=device, recipient=backend, topic=topic, seq=seq, device=device.kid)


#: share names a unit might try: the old default of `camveil listen`, the obvious ones
GUESSED_GROUPS = ("camveil", "ingest", "dashboard", "backend", "g", "it")


def test_a_unit_cannot_black_hole_events_by_joining_the_ingest_group(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    """mosquitto 2.0.11 grants any $share SUBSCRIBE (the ACL file does not check subscriptions)
    and round-robins each message to the group's members, dropping the shares of members
    without read access. The defence is a group name with 128 random bits; the intruders here
    join every name they could guess. Send 100, the real listener gets 100."""
    port = fresh_mosquitto.port
    device = Identity.generate("cam-iso-bh")
    ingest = _Ingest(mqtt_pki, port, "ingest", new_share_group(), device)
    intruders = [TestClient(mqtt_pki.device(f"cam-iso-bh-{i}"), port) for i in range(2)]
    with ingest.listener, intruders[0], intruders[1]:
        for intruder in intruders:
            for group in GUESSED_GROUPS:
                intruder.subscribe(f"$share/{group}/camveil/v1/+/event/#")
        assert ingest.listener.subscribed.wait(10)
        with TestClient(mqtt_pki.device(device.kid), port) as unit:
            for seq in range(1, 101):
                env = _event(device, ingest.backend.public(), seq)
                assert not unit.publish(env.topic, env.data).is_failure
        assert ingest.quiet(100) == 100
        assert sorted(r.seq for r in ingest.got) == list(range(1, 101))
        assert all(i.expect(0.01) is None for i in intruders)


def test_a_second_certificate_cannot_take_over_a_units_client_id(
    mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    """The broker takes the client id from the certificate (use_username_as_clientid): a unit
    connecting with another unit's client id gets a session of its own name, the victim stays
    connected and receives the commands sent meanwhile."""
    victim_id = "cam-iso-victim"
    victim = TestClient(mqtt_pki.device(victim_id), mosquitto.port, client_id=victim_id)
    thief = mqtt_pki.device("cam-iso-thief")
    with victim, TestClient(mqtt_pki.operator("console"), mosquitto.port) as operator:
        assert not victim.subscribe(f"camveil/v1/{victim_id}/cmd").is_failure
        for n in range(3):
            # each connection a takeover attempt
            with TestClient(thief, mosquitto.port, client_id=victim_id) as attacker:
                attacker.subscribe(f"camveil/v1/{victim_id}/cmd")
                reason = operator.publish(f"camveil/v1/{victim_id}/cmd", b"cmd %d" % n)
                assert not reason.is_failure
                got = victim.expect(5)
                assert got is not None and got.payload == b"cmd %d" % n
                assert attacker.expect(0.05) is None
        assert victim.client.is_connected()
        assert victim._connack.empty(), "the victim was disconnected"


def test_backends_and_operators_cannot_publish_as_a_unit_under_their_own_name(
    mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    """The device patterns (%u) apply to every username; the deny lines of the backend and
    operator blocks take them back."""
    with (
        TestClient(mqtt_pki.backend("dashboard"), mosquitto.port) as backend,
        TestClient(mqtt_pki.operator("console"), mosquitto.port) as operator,
        TestClient(mqtt_pki.backend("watcher"), mosquitto.port) as watcher,
    ):
        watcher.subscribe("camveil/v1/+/event/#")
        for client in (backend, operator):
            cn = client.files.name
            for topic in ("event/x", "event/person/extra", "status", "cmd/ack"):
                reason = client.publish(f"camveil/v1/{cn}/{topic}", b"forged")
                assert reason.value >= 0x80, (cn, topic, reason)
        assert watcher.expect(QUIET) is None
        # what they may do still works: a backend commands a unit
        assert not backend.publish("camveil/v1/cam-iso-d/cmd", b"c").is_failure


def test_an_oversized_publish_is_cut_off_and_a_maximum_snapshot_fits(
    mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    limit = BrokerSettings().max_packet_size
    device = Identity.generate("cam-iso-big")
    backend = Identity.generate("backend")
    # the largest snapshot a unit can be configured for ([events] snapshot_max_bytes)
    header = Header(device=device.kid, boot="0123456789abcdef", seq=1, ts=1_700_000_000_000)
    jpeg = b"\xff" * (4 * 1024 * 1024 - 4096)
    snapshot = SnapshotEvent(header, jpeg, 4056, 3040, 40, command="op-1700000000-0123abcd")
    sealed = seal_event(snapshot, sender=device, recipient=backend.public())
    overhead = len(sealed.data) - len(jpeg)
    packet = 2 + 4 + 2 + len(sealed.topic) + 2 + 1 + len(sealed.data)  # header, topic, id, props
    assert overhead < 1024 and packet <= limit - 2048, (overhead, packet)
    with TestClient(mqtt_pki.backend("watcher"), mosquitto.port) as watcher:
        watcher.subscribe(f"camveil/v1/{device.kid}/event/#")
        with TestClient(mqtt_pki.device(device.kid), mosquitto.port) as unit:
            assert not unit.publish(sealed.topic, sealed.data, timeout=20).is_failure
            got = watcher.expect(10)
            assert got is not None and got.payload == sealed.data
            # one byte over the limit: not read, the client is disconnected (no PUBACK)
            info = unit.client.publish(f"camveil/v1/{device.kid}/event/x", b"\0" * limit, qos=1)
            event = unit._connack.get(timeout=10)
            assert isinstance(event, tuple) and event[0] == "disconnect", event
            unit.client.disconnect()  # paho would resend it after reconnecting
            assert not info.is_published()
        assert watcher.expect(QUIET) is None
        # the broker is fine and the unit can go on
        with TestClient(mqtt_pki.device(device.kid), mosquitto.port) as unit:
            assert not unit.publish(f"camveil/v1/{device.kid}/event/x", b"small").is_failure
        got = watcher.expect(5)
        assert got is not None and got.payload == b"small"


def test_a_retained_event_does_not_reach_a_new_listener(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    """The ACL file cannot forbid retain on event topics; the listener subscribes to events and
    acks with retain handling 2 ("do not send"), status keeps its retained value."""
    port = fresh_mosquitto.port
    device = Identity.generate("cam-iso-ret")
    ingest = _Ingest(mqtt_pki, port, "ingest", new_share_group(), device)
    backend = ingest.backend.public()
    status = seal(
        {"type": "status", "ts": 0, "boot": "0123456789abcdef", "body": {"state": "online"}},
        sender=device, recipient=backend, topic=f"camveil/v1/{device.kid}/status", seq=1,
        device=device.kid,
    )  # fmt: skip
    with TestClient(mqtt_pki.device(device.kid), port) as unit:
        for seq in range(2, 12):
            env = _event(device, backend, seq, kind=f"e{seq}")
            assert not unit.publish(env.topic, env.data, retain=True).is_failure
        ack = seal({"type": "ack"}, sender=device, recipient=backend,
                   topic=f"camveil/v1/{device.kid}/cmd/ack", seq=20, device=device.kid)  # fmt: skip
        assert not unit.publish(ack.topic, ack.data, retain=True).is_failure
        assert not unit.publish(status.topic, status.data, retain=True).is_failure
    with ingest.listener:
        assert ingest.listener.subscribed.wait(10)
        ingest.quiet(1, timeout=5)
    assert [(r.type, r.seq) for r in ingest.got] == [("status", 1)]
    assert not ingest.opener.stats.bad and not ingest.opener.stats.duplicates


def _handshake(files: ClientFiles, port: int, ciphers: str | None, tls13: bool) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(files.ca)
    assert files.cert is not None and files.key is not None
    context.load_cert_chain(files.cert, files.key)
    if not tls13:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        context.set_ciphers(ciphers)
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return f"{tls.version()} {cipher[0]}"


def test_tls_offers_only_forward_secret_aead_suites(
    mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    files = mqtt_pki.device("cam-iso-tls")
    for cbc in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA256"):
        try:
            got = _handshake(files, mosquitto.port, cbc, tls13=False)
        except ssl.SSLError as exc:
            assert "HANDSHAKE_FAILURE" in str(exc) or "handshake failure" in str(exc), exc
        else:
            raise AssertionError(f"the broker accepted {got}")
    assert _handshake(files, mosquitto.port, None, tls13=False) in (
        "TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305",
    )
    assert _handshake(files, mosquitto.port, None, tls13=True).startswith("TLSv1.3 TLS_")


def test_listen_processes_of_one_dev_pki_each_claim_their_own_certificate(
    tmp_path: Path,
) -> None:
    """Two `camveil listen --dev-pki` processes share the load with certificates of their own
    (the broker takes the client id from the certificate, so with one certificate they would
    disconnect each other); the dev-pki's secret group is used, a guessable one is refused."""
    port = free_port()
    dev = make_dev_pki(tmp_path / "pki", port=port, device_id="cv-iso-cli")
    probe = ProbeClient(dev.backend.ca, dev.backend.cert, dev.backend.key)
    log = tmp_path / "mosquitto.log"
    listen = [sys.executable, "-m", "camveil", "listen", "--dev-pki", str(dev.root)]
    refused = subprocess.run(
        [*listen, "--group", "camveil"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "can be guessed" in refused.stderr, refused.stderr
    with BrokerProcess(dev.broker.config, port=port, probe=probe, log_path=log) as broker:
        procs, outs = [], []
        try:
            for n in range(2):
                out = (tmp_path / f"listen-{n}.out").open("w+b")
                err = (tmp_path / f"listen-{n}.err").open("w+b")
                outs.append((out, err))
                procs.append(
                    subprocess.Popen(
                        [*listen, "--idle-exit", "1.5", "--duration", "30"],
                        stdout=out,
                        stderr=err,
                    )
                )
            deadline = time.monotonic() + 30
            while not all(b"subscribed" in (tmp_path / f"listen-{n}.err").read_bytes()
                          for n in range(2)):  # fmt: skip
                errs = [(tmp_path / f"listen-{n}.err").read_bytes()[-2000:] for n in (0, 1)]
                exited = [(n, p.returncode) for n, p in enumerate(procs) if p.poll() is not None]
                assert not exited, f"a listener exited early {exited}: {errs}"
                assert time.monotonic() < deadline, f"the listeners did not subscribe: {errs}"
                time.sleep(0.05)
            device = load_identity(dev.unit_dir / "provisioned" / "identity.cbor")
            backend = load_identity(dev.backend.identity).public()
            unit_files = ClientFiles(
                device.kid,
                dev.root / "ca.crt",
                dev.unit_dir / "provisioned" / "tls.crt",
                dev.unit_dir / "provisioned" / "tls.key",
            )
            with TestClient(unit_files, port) as unit:
                for seq in range(1, 21):
                    env = _event(device, backend, seq)
                    assert not unit.publish(env.topic, env.data).is_failure
            for proc in procs:
                assert proc.wait(40) == 0
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            for out, err in outs:
                out.close()
                err.close()
        seqs = []
        for n in range(2):
            lines = (tmp_path / f"listen-{n}.out").read_text().splitlines()
            assert lines, f"listener {n} got no share"
            seqs += [json.loads(line)["seq"] for line in lines]
        assert sorted(seqs) == list(range(1, 21))
        text = broker.log()
    backends = set(re.findall(r"New client connected from \S+ as (backend-\S+) ", text))
    assert len(backends) == 2, backends
    assert "already connected" not in text
