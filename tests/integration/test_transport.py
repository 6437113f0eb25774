"""agent.transport against a real mosquitto: acks, backpressure, reconnection, commands."""

from __future__ import annotations

import queue
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import ClientFiles, Mosquitto, TestClient, TestPki

from agent.transport import ConnectionEvent, ConnectionState, Transport, TransportConfig
from contract.envelope import Identity, PeerKeys, ReplayGuard, SealedEnvelope, open_envelope, seal
from contract.errors import ConfigError, UnredactedDataError
from contract.topics import command_topic, event_topic, events_filter, status_topic

BACKEND = Identity.generate("backend-dashboard")


def sealed(device: Identity, topic: str, seq: int, **body: Any) -> SealedEnvelope:
    return seal(
        {"type": "test", **body},
        sender=device,
        recipient=BACKEND.public(),
        topic=topic,
        seq=seq,
        device=device.kid,
    )


class Recorder:
    """Collects what a Transport reports, in order, from its dispatcher thread."""

    def __init__(self) -> None:
        self.acked: queue.Queue[int] = queue.Queue()
        self.rejected: queue.Queue[tuple[int, int]] = queue.Queue()
        self.events: queue.Queue[ConnectionEvent] = queue.Queue()
        self.commands: queue.Queue[tuple[str, bytes]] = queue.Queue()

    def kwargs(self) -> dict[str, Any]:
        return {
            "on_acked": self.acked.put,
            "on_rejected": lambda mid, rc: self.rejected.put((mid, rc)),
            "on_state": self.events.put,
            "on_command": lambda topic, payload: self.commands.put((topic, payload)),
        }

    def wait_state(self, state: ConnectionState, timeout: float = 10.0) -> ConnectionEvent:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                break
            if event.state is state:
                return event
        raise AssertionError(f"no {state} event within {timeout}s")


def config_for(
    files: ClientFiles, port: int, device_id: str | None = None, **kw: Any
) -> TransportConfig:
    return TransportConfig(
        device_id=device_id or files.name,
        host="127.0.0.1",
        port=port,
        ca_file=files.ca,
        cert_file=files.cert,
        key_file=files.key,
        reconnect_min_s=kw.pop("reconnect_min_s", 0.05),
        reconnect_max_s=kw.pop("reconnect_max_s", 0.5),
        **kw,
    )


@pytest.fixture
def make_transport() -> Iterator[Callable[..., tuple[Transport, Recorder]]]:
    started: list[Transport] = []

    def make(config: TransportConfig, **kwargs: Any) -> tuple[Transport, Recorder]:
        recorder = Recorder()
        transport = Transport(config, **recorder.kwargs(), **kwargs)
        transport.start()
        started.append(transport)
        return transport, recorder

    yield make
    for transport in started:
        transport.stop()


def test_publish_fires_on_acked_with_the_mid_and_the_backend_gets_the_bytes(
    mosquitto: Mosquitto, mqtt_pki: TestPki, make_transport: Callable[..., Any]
) -> None:
    device = Identity.generate("cam-tx-ack")
    transport, rec = make_transport(config_for(mqtt_pki.device(device.kid), mosquitto.port))
    with TestClient(mqtt_pki.backend("dashboard"), mosquitto.port) as backend:
        assert not backend.subscribe(events_filter(device.kid)).is_failure
        assert transport.wait_connected(10)
        rec.wait_state(ConnectionState.CONNECTED)
        envelopes = [sealed(device, event_topic(device.kid, "person"), s) for s in (1, 2, 3)]
        mids = [transport.publish(env.topic, env) for env in envelopes]
        assert None not in mids and len(set(mids)) == 3
        acked = {rec.acked.get(timeout=5) for _ in mids}
        assert acked == set(mids)
        got = [backend.expect() for _ in envelopes]
        assert [m.payload for m in got] == [env.data for env in envelopes]
        assert all(m.qos == 1 for m in got)
    assert transport.outstanding == 0
    assert rec.rejected.empty()


def test_publish_refuses_anything_but_a_sealed_envelope(mqtt_pki: TestPki) -> None:
    files = mqtt_pki.device("cam-tx-type")
    transport = Transport(config_for(files, 1), on_acked=lambda mid: None)  # never started
    with pytest.raises(UnredactedDataError):
        transport.publish(event_topic("cam-tx-type", "person"), b"raw bytes")  # type: ignore[arg-type]
    other = Identity.generate("cam-tx-other")
    env = sealed(other, event_topic("cam-tx-other", "person"), 1)
    with pytest.raises(ValueError, match="sealed for"):
        transport.publish(event_topic("cam-tx-type", "person"), env)
    with pytest.raises(ValueError, match="device"):
        transport.publish(env.topic, env)
    with pytest.raises(ValueError, match="last will"):
        own = Identity.generate("cam-tx-type")
        transport.set_will(sealed(own, event_topic("cam-tx-type", "person"), 1))


def test_publish_while_disconnected_returns_none(
    mqtt_pki: TestPki, make_transport: Callable[..., Any], tmp_path: Path
) -> None:
    device = Identity.generate("cam-tx-offline")
    port = Mosquitto(tmp_path, mqtt_pki).port  # nothing listens there
    transport, rec = make_transport(config_for(mqtt_pki.device(device.kid), port))
    event = rec.wait_state(ConnectionState.CONNECT_FAILED)
    assert "refused" in event.reason.lower()
    env = sealed(device, event_topic(device.kid, "person"), 1)
    assert transport.publish(env.topic, env) is None
    assert transport.outstanding == 0


def test_reconnect_backoff_grows_with_jitter(mqtt_pki: TestPki, tmp_path: Path) -> None:
    device = "cam-tx-backoff"
    port = Mosquitto(tmp_path, mqtt_pki).port
    rec = Recorder()
    config = config_for(mqtt_pki.device(device), port, reconnect_min_s=0.02, reconnect_max_s=0.16)
    transport = Transport(config, **rec.kwargs(), rng=random.Random(7))
    with transport:
        delays = [rec.wait_state(ConnectionState.CONNECT_FAILED).retry_in_s for _ in range(6)]
    ceilings = [0.02, 0.04, 0.08, 0.16, 0.16, 0.16]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert delay is not None and ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not a fixed ladder


def test_broker_restart_reconnects_by_itself_and_publishing_works_again(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki, make_transport: Callable[..., Any]
) -> None:
    device = Identity.generate("cam-tx-restart")
    topic = event_topic(device.kid, "person")
    transport, rec = make_transport(config_for(mqtt_pki.device(device.kid), fresh_mosquitto.port))
    rec.wait_state(ConnectionState.CONNECTED)
    for seq in range(1, 4):
        fresh_mosquitto.restart()
        rec.wait_state(ConnectionState.DISCONNECTED)
        rec.wait_state(ConnectionState.CONNECTED, timeout=5)  # bounded: max backoff is 0.5 s
        with TestClient(mqtt_pki.backend("ingest"), fresh_mosquitto.port) as backend:
            backend.subscribe(f"$share/ingest/{topic}")
            env = sealed(device, topic, seq)
            mid = transport.publish(topic, env)
            assert mid is not None
            assert rec.acked.get(timeout=5) == mid
            msg = backend.expect()
            assert msg is not None and msg.payload == env.data


def test_message_in_flight_when_broker_is_killed_is_resent_and_acked_after_reconnect(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki, make_transport: Callable[..., Any]
) -> None:
    """A mid handed out stays valid across a reconnect: paho resends it and acks it later."""
    device = Identity.generate("cam-tx-inflight")
    topic = event_topic(device.kid, "person")
    transport, rec = make_transport(config_for(mqtt_pki.device(device.kid), fresh_mosquitto.port))
    rec.wait_state(ConnectionState.CONNECTED)
    import os
    import signal

    assert fresh_mosquitto.pid is not None
    os.kill(fresh_mosquitto.pid, signal.SIGSTOP)  # broker frozen: no PUBACK can come
    try:
        env = sealed(device, topic, 1)
        mid = transport.publish(topic, env)
        assert mid is not None
        assert rec.acked.empty() and transport.outstanding == 1
    finally:
        fresh_mosquitto.kill()
    fresh_mosquitto.start()
    rec.wait_state(ConnectionState.CONNECTED, timeout=10)
    assert rec.acked.get(timeout=5) == mid
    assert transport.outstanding == 0


def test_max_outstanding_gives_backpressure(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki, make_transport: Callable[..., Any]
) -> None:
    import os
    import signal

    device = Identity.generate("cam-tx-window")
    topic = event_topic(device.kid, "person")
    config = config_for(mqtt_pki.device(device.kid), fresh_mosquitto.port, max_outstanding=2)
    transport, rec = make_transport(config)
    rec.wait_state(ConnectionState.CONNECTED)
    assert fresh_mosquitto.pid is not None
    os.kill(fresh_mosquitto.pid, signal.SIGSTOP)
    try:
        mids = [transport.publish(topic, sealed(device, topic, s)) for s in (1, 2, 3)]
        assert mids[0] is not None and mids[1] is not None and mids[2] is None
    finally:
        os.kill(fresh_mosquitto.pid, signal.SIGCONT)
    assert {rec.acked.get(timeout=5), rec.acked.get(timeout=5)} == set(mids[:2])
    assert transport.publish(topic, sealed(device, topic, 3)) is not None


def test_puback_failure_goes_to_on_rejected_not_on_acked(
    mosquitto: Mosquitto, mqtt_pki: TestPki, make_transport: Callable[..., Any]
) -> None:
    """The ACL follows the certificate, not the client id: a unit configured as cam-tx-x but
    holding cam-tx-y's certificate gets 0x87 for cam-tx-x's topics."""
    device = Identity.generate("cam-tx-x")
    files = mqtt_pki.device("cam-tx-y")
    transport, rec = make_transport(config_for(files, mosquitto.port, device_id=device.kid))
    rec.wait_state(ConnectionState.CONNECTED)
    env = sealed(device, event_topic(device.kid, "person"), 1)
    mid = transport.publish(env.topic, env)
    assert rec.rejected.get(timeout=5) == (mid, 0x87)
    assert rec.acked.empty()


@pytest.mark.parametrize("require_subscriber", [False, True])
def test_no_matching_subscribers_is_kept_when_a_subscriber_is_required(
    mosquitto: Mosquitto,
    mqtt_pki: TestPki,
    make_transport: Callable[..., Any],
    require_subscriber: bool,
) -> None:
    """PUBACK 0x10: nobody heard it. With require_subscriber the outbox must keep the row."""
    device = Identity.generate(f"cam-tx-alone-{int(require_subscriber)}")
    config = config_for(
        mqtt_pki.device(device.kid), mosquitto.port, require_subscriber=require_subscriber
    )
    transport, rec = make_transport(config)
    rec.wait_state(ConnectionState.CONNECTED)
    env = sealed(device, event_topic(device.kid, "person"), 1)
    mid = transport.publish(env.topic, env)
    if require_subscriber:
        assert rec.rejected.get(timeout=5) == (mid, 0x10)
        assert rec.acked.empty()
        with TestClient(mqtt_pki.backend("dashboard"), mosquitto.port) as backend:
            assert not backend.subscribe(events_filter(device.kid)).is_failure
            again = transport.publish(env.topic, env)
            assert rec.acked.get(timeout=5) == again
            assert backend.expect().payload == env.data
    else:
        assert rec.acked.get(timeout=5) == mid
        assert rec.rejected.empty()


def test_commands_reach_on_command_after_every_reconnect(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki, make_transport: Callable[..., Any]
) -> None:
    device = "cam-tx-cmd"
    transport, rec = make_transport(config_for(mqtt_pki.device(device), fresh_mosquitto.port))
    rec.wait_state(ConnectionState.CONNECTED)
    for round_ in range(2):
        assert transport.wait_subscribed(5)  # the SUBSCRIBE follows the CONNACK
        with TestClient(mqtt_pki.operator("console"), fresh_mosquitto.port) as operator:
            assert not operator.publish(command_topic(device), b"cmd%d" % round_).is_failure
        # QoS 1 is at least once: a command whose PUBACK the restart cut off comes again
        # (the unit's replay guard drops it); the new one must arrive
        seen = set()
        while (got := rec.commands.get(timeout=5)) != (
            command_topic(device),
            b"cmd%d" % round_,
        ):
            seen.add(got[1])
        assert seen <= {b"cmd%d" % r for r in range(round_)}
        fresh_mosquitto.restart()
        rec.wait_state(ConnectionState.CONNECTED)


def test_stop_publishes_the_last_will(mosquitto: Mosquitto, mqtt_pki: TestPki) -> None:
    device = Identity.generate("cam-tx-will")
    will = sealed(device, status_topic(device.kid), 1, state="offline")
    rec = Recorder()
    transport = Transport(
        config_for(mqtt_pki.device(device.kid), mosquitto.port), **rec.kwargs(), will=will
    )
    with TestClient(mqtt_pki.backend("dashboard"), mosquitto.port) as backend:
        backend.subscribe(will.topic)
        with transport:
            assert transport.wait_connected(10)
        msg = backend.expect()
        assert msg is not None and msg.payload == will.data
    rec.wait_state(ConnectionState.STOPPED)


def test_commands_queued_while_offline_survive_a_broker_restart(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    """clean_start=false + session expiry: the broker keeps the unit's subscription and queues
    its commands while it is away, and its persistence keeps both (and retained status) across
    a clean broker restart."""
    device = "cam-tx-session"
    config = config_for(mqtt_pki.device(device), fresh_mosquitto.port)
    first = Recorder()
    with Transport(config, **first.kwargs()) as transport:
        assert transport.wait_subscribed(5)
    with TestClient(mqtt_pki.operator("console"), fresh_mosquitto.port) as operator:
        assert not operator.publish(command_topic(device), b"while away").is_failure
    fresh_mosquitto.restart()
    second = Recorder()
    with Transport(config, **second.kwargs()) as transport:
        assert transport.wait_connected(10)
        assert second.commands.get(timeout=5) == (command_topic(device), b"while away")


def test_a_will_factory_seals_a_fresh_will_for_every_connection(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    device = Identity.generate("cam-tx-willgen")
    topic = status_topic(device.kid)
    seqs: list[int] = []

    def seal_will() -> SealedEnvelope:
        seqs.append(100 + len(seqs))
        return sealed(device, topic, seqs[-1], state="offline")

    rec = Recorder()
    config = config_for(mqtt_pki.device(device.kid), fresh_mosquitto.port)
    with Transport(config, **rec.kwargs(), will=seal_will) as transport:
        rec.wait_state(ConnectionState.CONNECTED)
        assert seqs == [100]
        fresh_mosquitto.restart()
        rec.wait_state(ConnectionState.CONNECTED)
        assert len(seqs) >= 2  # sealed again before reconnecting
        with TestClient(mqtt_pki.backend("dashboard"), fresh_mosquitto.port) as watcher:
            watcher.subscribe(topic)
            retained = watcher.expect()  # the will of the first connection: mosquitto sent it
            assert retained is not None and retained.retain  # when it shut down for the restart
            transport.stop()  # the broker publishes the will of the current connection
            msg = watcher.expect()
    assert msg is not None and not msg.retain
    opened = open_envelope(
        msg.payload,
        topic=topic,
        trusted_senders=PeerKeys([device.public()]),
        recipient=BACKEND,
        replay_guard=ReplayGuard(),
    )
    assert opened.seq == seqs[-1] and opened.message["state"] == "offline"


def test_missing_tls_files_are_a_config_error_naming_the_file(
    mqtt_pki: TestPki, tmp_path: Path
) -> None:
    files = mqtt_pki.device("cam-tx-files")
    broken = ClientFiles(files.name, files.ca, tmp_path / "missing.crt", files.key)
    transport = Transport(config_for(broken, 1), on_acked=lambda mid: None)
    with pytest.raises(ConfigError, match=r"missing\.crt.*re-provision"):
        transport.start()
    (tmp_path / "ca.crt").write_text("not a certificate")
    broken = ClientFiles(files.name, tmp_path / "ca.crt", files.cert, files.key)
    with pytest.raises(ConfigError, match="CA certificate"):
        Transport(config_for(broken, 1), on_acked=lambda mid: None).start()


def test_transport_comes_back_after_twenty_broker_restarts_and_crashes(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki, make_transport: Callable[..., Any]
) -> None:
    """What the chaos tests build on: the fixture restarts (SIGTERM) and crashes (SIGKILL) the
    broker fast on the same port and state, and the transport comes back by itself each time."""
    device = Identity.generate("cam-tx-chaos")
    topic = event_topic(device.kid, "person")
    transport, rec = make_transport(config_for(mqtt_pki.device(device.kid), fresh_mosquitto.port))
    rec.wait_state(ConnectionState.CONNECTED)
    started = time.monotonic()
    for seq in range(1, 21):
        if seq % 4 == 0:
            fresh_mosquitto.kill()
            fresh_mosquitto.start()
        else:
            fresh_mosquitto.restart()
        rec.wait_state(ConnectionState.CONNECTED, timeout=5)
        env = sealed(device, topic, seq)
        while (mid := transport.publish(topic, env)) is None:  # the link may drop again
            time.sleep(0.01)
        assert rec.acked.get(timeout=5) == mid
    assert fresh_mosquitto.starts == 21
    assert time.monotonic() - started < 20
    assert rec.rejected.empty() and transport.outstanding == 0


def test_reconnect_with_another_certificate_and_refusals(
    mosquitto: Mosquitto, mqtt_pki: TestPki, make_transport: Callable[..., Any], tmp_path: Path
) -> None:
    """What a certificate renewal asks of the transport: a new session with another key and
    certificate of the same device; a certificate the broker refuses ends the wait early; a
    pair that does not load changes nothing; after stop() nothing is started again."""
    from provisioning import pki

    device = Identity.generate("cam-tx-renew")
    files = mqtt_pki.device(device.kid)
    transport, rec = make_transport(config_for(files, mosquitto.port))
    assert transport.wait_connected(10)
    renewed = pki.write_issued(tmp_path, "renewed", pki.make_device_cert(mqtt_pki.ca, device.kid))
    foreign = pki.write_issued(tmp_path, "foreign",
                               pki.make_device_cert(pki.make_ca("other"), device.kid))  # fmt: skip

    assert transport.reconnect_with(renewed.cert, renewed.key, wait_s=20)
    rec.wait_state(ConnectionState.STOPPED)  # the publisher requeues what was in flight
    rec.wait_state(ConnectionState.CONNECTED)
    envelope = sealed(device, event_topic(device.kid, "person"), 1)
    assert transport.publish(envelope.topic, envelope) is not None
    rec.acked.get(timeout=5)

    started = time.monotonic()
    assert not transport.reconnect_with(foreign.cert, foreign.key, wait_s=30)
    assert time.monotonic() - started < 20  # refused twice: no waiting out the 30 s
    assert transport.reconnect_with(files.cert, files.key, wait_s=20)

    with pytest.raises(ConfigError, match="client certificate and key"):
        transport.reconnect_with(renewed.cert, foreign.key, wait_s=5)  # key of another cert
    assert transport.connected  # nothing was disconnected
    transport.stop()
    assert not transport.reconnect_with(renewed.cert, renewed.key, wait_s=5)
    assert not transport.connected
