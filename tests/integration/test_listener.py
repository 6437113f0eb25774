"""The backend listener against a real mosquitto: shared subscriptions split the load, bad
messages are counted and never stop it, duplicates are dropped (persistently with SQLite), and
the `camveil listen` / `camveil dev-pki` commands work together with the repo's broker config."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from broker import HOST, ClientFiles, Mosquitto, TestClient, TestPki, free_port, mosquitto_binary
from sealing_unit import Unit

from agent.events import seal_event
from camveil.cli.listen import to_json
from contract.envelope.keys import Identity, PeerKeys, load_identity
from contract.envelope.seal import SealedEnvelope
from contract.ranges import seq_ranges
from contract.topics import event_topic
from dashboard.listener import (
    Listener,
    ListenerConfig,
    MemoryDedupe,
    Opener,
    Received,
    SqliteDedupe,
)
from tools.devpki import make_dev_pki

DEVICE = "cv-listen-01"


def _listener(
    pki: TestPki,
    port: int,
    opener: Opener,
    sink: list[Received],
    group: str = "g",
    name: str = "dashboard",
) -> Listener:
    files = pki.backend(name)  # one certificate per connection: the broker's client id
    assert files.cert is not None and files.key is not None
    lock = threading.Lock()

    def on_received(r: Received) -> None:
        with lock:
            sink.append(r)

    config = ListenerConfig(HOST, port, files.ca, files.cert, files.key, group=group)
    return Listener(config, opener, on_received)


def _wait(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_shared_subscription_splits_the_load(mosquitto: Mosquitto, mqtt_pki: TestPki) -> None:
    backend = Identity.generate("backend")
    unit = Unit(mqtt_pki.device("cv-listen-share"), backend.public())
    peers = PeerKeys([unit.identity.public()])
    got_a: list[Received] = []
    got_b: list[Received] = []
    a = _listener(mqtt_pki, mosquitto.port, Opener(backend, peers, MemoryDedupe()), got_a, "s1")
    b = _listener(
        mqtt_pki, mosquitto.port, Opener(backend, peers, MemoryDedupe()), got_b, "s1", "ingest"
    )
    with a, b:
        assert a.subscribed.wait(10) and b.subscribed.wait(10)
        sent = []
        with TestClient(unit.files, mosquitto.port) as client:
            for _ in range(20):
                env = unit.event()
                sent.append(env.seq)
                assert not client.publish(env.topic, env.data).is_failure
        _wait(lambda: len(got_a) + len(got_b) >= 20)
    seqs_a = {r.seq for r in got_a}
    seqs_b = {r.seq for r in got_b}
    assert seqs_a and seqs_b, "both members of the group got a share"
    assert not seqs_a & seqs_b
    assert seqs_a | seqs_b == set(sent)


def test_a_stop_asked_for_is_logged_at_info_not_as_a_warning(
    mosquitto: Mosquitto, mqtt_pki: TestPki, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Identity.generate("backend")
    opener = Opener(backend, PeerKeys([]), MemoryDedupe())
    listener = _listener(mqtt_pki, mosquitto.port, opener, [], "quiet")
    with caplog.at_level(logging.INFO, logger="dashboard.listener"), listener:
        assert listener.subscribed.wait(10)
    stops = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert [r.levelno for r in stops] == [logging.INFO], stops


def test_bad_and_duplicate_messages_are_counted_not_fatal(
    fresh_mosquitto: Mosquitto, mqtt_pki: TestPki, tmp_path: Path
) -> None:
    mosquitto = fresh_mosquitto  # its own broker: no retained messages of other tests
    backend = Identity.generate("backend")
    unit = Unit(mqtt_pki.device(DEVICE), backend.public())
    stranger = Identity.generate(DEVICE)  # same id, other keys: a forgery
    peers = PeerKeys([unit.identity.public()])
    got: list[Received] = []
    opener = Opener(backend, peers, SqliteDedupe(tmp_path / "seen.db"))
    with _listener(mqtt_pki, mosquitto.port, opener, got, "bad") as listener:
        assert listener.subscribed.wait(10)
        good = unit.event()
        forged = seal_event(
            unit.builder.presence(0.0, 1.0, {"all": (0, 0)}),
            sender=stranger,
            recipient=backend.public(),
        )
        with TestClient(unit.files, mosquitto.port) as client:
            client.publish(event_topic(DEVICE, "presence"), b"\x00garbage")
            client.publish(forged.topic, forged.data)
            client.publish(good.topic, good.data)
            client.publish(good.topic, good.data)  # a redelivery
            last = unit.status()
            client.publish(last.topic, last.data)
        _wait(lambda: len(got) >= 2 and opener.stats.duplicates >= 1)
        time.sleep(0.3)
    assert [r.type for r in got] == ["presence", "status"]
    assert opener.stats.bad == {"MalformedEnvelopeError": 1, "BadSignatureError": 1}
    assert opener.stats.duplicates == 1

    # a new process (fresh replay window) over the same database still sees the duplicate
    again = Opener(backend, peers, SqliteDedupe(tmp_path / "seen.db"))
    assert again.open(good.topic, good.data) is None
    assert again.stats.duplicates == 1


def test_json_lines_summarise_bytes_and_write_snapshots(tmp_path: Path) -> None:
    r = Received(
        "cv-1",
        7,
        event_topic("cv-1", "snapshot"),
        "snapshot",
        {"ts": 1, "boot": "b", "body": {"jpeg": b"\xff\xd8\xffabc", "w": 2, "cmd": "c"}},
    )
    line = to_json(r, None, False)
    assert line["body"]["jpeg"]["bytes"] == 6 and len(line["body"]["jpeg"]["sha256"]) == 64
    line = to_json(r, tmp_path / "snaps", False)
    assert Path(line["file"]).read_bytes() == b"\xff\xd8\xffabc"
    assert seq_ranges([5, 1, 2, 3, 9, 3]) == [[1, 3], [5, 5], [9, 9]]


def test_listen_cli_with_dev_pki_and_repo_broker_config(tmp_path: Path) -> None:
    mosquitto_binary()
    port = free_port()
    dev = make_dev_pki(tmp_path / "pki", port=port, device_id="cv-cli-01")
    broker = subprocess.Popen(
        [mosquitto_binary(), "-c", str(dev.broker.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listen = None
    try:
        time.sleep(0.5)
        listen = subprocess.Popen(
            [sys.executable, "-m", "camveil", "listen", "--dev-pki", str(dev.root), "--count", "3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        assert listen.stderr is not None
        assert b"subscribed" in listen.stderr.readline()
        device_files = ClientFiles(
            "cv-cli-01",
            dev.root / "ca.crt",
            dev.unit_dir / "provisioned" / "tls.crt",
            dev.unit_dir / "provisioned" / "tls.key",
        )
        backend = load_identity(dev.backend.identity).public()
        device = load_identity(dev.unit_dir / "provisioned" / "identity.cbor")
        unit = Unit(device_files, backend, device)
        with TestClient(device_files, port) as client:
            for _ in range(3):
                env = unit.event()
                assert not client.publish(env.topic, env.data).is_failure
        out, err = listen.communicate(timeout=20)
        lines = [json.loads(x) for x in out.decode().splitlines()]
        assert [x["type"] for x in lines] == ["presence"] * 3
        assert lines[0]["device"] == "cv-cli-01"
        summary = json.loads(err.decode().strip().splitlines()[-1])["listen_summary"]
        assert summary["received"] == 3 and summary["duplicates"] == 0
        assert summary["seqs"] == {"cv-cli-01": [[0, 2]]}
    finally:
        if listen is not None and listen.poll() is None:
            listen.send_signal(signal.SIGTERM)
            listen.wait(10)
        broker.terminate()
        broker.wait(10)


def test_listen_restarted_with_defaults_refuses_a_replayed_envelope(tmp_path: Path) -> None:
    """De-duplication survives a restart without any flag: an envelope replayed to a new
    `camveil listen` process is counted as a duplicate, not printed again. --no-db opts out."""
    port = free_port()
    dev = make_dev_pki(tmp_path / "pki", port=port, device_id="cv-cli-02")
    broker = subprocess.Popen(
        [mosquitto_binary(), "-c", str(dev.broker.config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    device_files = ClientFiles(
        "cv-cli-02",
        dev.root / "ca.crt",
        dev.unit_dir / "provisioned" / "tls.crt",
        dev.unit_dir / "provisioned" / "tls.key",
    )
    backend = load_identity(dev.backend.identity).public()
    unit = Unit(
        device_files, backend, load_identity(dev.unit_dir / "provisioned" / "identity.cbor")
    )

    def listen_once(*payloads: SealedEnvelope, extra: tuple[str, ...] = ()) -> tuple[list, dict]:
        argv = [sys.executable, "-m", "camveil", "listen", "--dev-pki", str(dev.root)]
        proc = subprocess.Popen(
            [*argv, "--count", "1", "--duration", "20", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        try:
            assert proc.stderr is not None
            assert b"subscribed" in proc.stderr.readline()
            with TestClient(device_files, port) as client:
                for env in payloads:
                    assert not client.publish(env.topic, env.data).is_failure
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
        lines = [json.loads(x) for x in out.decode().splitlines()]
        return lines, json.loads(err.decode().strip().splitlines()[-1])["listen_summary"]

    try:
        time.sleep(0.5)
        first, fresh, third = unit.event(), unit.event(), unit.event()
        lines, summary = listen_once(first)
        assert [x["seq"] for x in lines] == [first.seq]
        # a new process with the same defaults: the replay is a duplicate, the fresh one prints
        lines, summary = listen_once(first, fresh)
        assert [x["seq"] for x in lines] == [fresh.seq]
        assert summary["duplicates"] == 1
        (db,) = dev.backend.identity.parent.glob("listen-*.db")  # named by the group's hash
        group = (dev.root / "backend" / "share-group").read_text().strip()
        assert group not in db.name  # the group is a secret: not in a file name
        assert db.stat().st_mode & 0o077 == 0
        # the explicit opt-out: memory only, so a restarted listener takes the replay again
        lines, _ = listen_once(third, extra=("--no-db",))
        lines, _ = listen_once(third, extra=("--no-db",))
        assert [x["seq"] for x in lines] == [third.seq]
    finally:
        broker.terminate()
        broker.wait(10)
