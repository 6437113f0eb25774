"""The MQTT daemon end to end: real mosquitto (TLS, client certificates, ACL), real CenterFace
model on a replay camera of a real photo, real SQLite outbox, the real listener.

The :class:`Harness` here is also used by test_wire.py.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from broker import Mosquitto, TestClient, TestPki
from PIL import Image

from agent.config import load_with_remote
from agent.daemon import Daemon, DaemonSummary
from agent.unitstate import UnitState
from agent.vision.factory import DetectorConfig, build_detector
from contract.commands import seal_command
from contract.envelope.keys import Identity, PeerKeys, ack_reader
from contract.envelope.seal import SealedEnvelope
from contract.topics import ack_topic, event_topic
from dashboard.listener import (
    Listener,
    ListenerConfig,
    MemoryDedupe,
    Opener,
    Received,
    SqliteDedupe,
)
from tools.devpki import write_unit_state

DEVICE = "cv-it-0001"
HOST = "127.0.0.1"


def astronaut(size: tuple[int, int] = (640, 480)) -> npt.NDArray[np.uint8]:
    from skimage import data

    photo = data.astronaut()  # type: ignore[no-untyped-call]
    return np.asarray(Image.fromarray(photo).convert("RGB").resize(size))


def config_text(photos: Path, unit_dir: Path, **events: Any) -> str:
    settings = {"presence_window_s": 1.0, "health_interval_s": 1.0, **events}
    lines = "\n".join(f"{k} = {v!r}" for k, v in settings.items())
    return (
        f'[camera]\nkind = "replay"\nsource = "{photos}"\nloop = true\nrealtime = true\n'
        f'fps = 4.0\n\n[mqtt]\nenabled = true\nstate_dir = "{unit_dir}"\n'
        f"reconnect_min_s = 0.2\nreconnect_max_s = 1.0\n\n[events]\n{lines}\n"
    )


@dataclass
class Harness:
    """One unit, one backend listener, one operator, on one broker."""

    tmp: Path
    broker: Mosquitto
    pki: TestPki
    backend: Identity = field(default_factory=lambda: Identity.generate("backend"))
    operator: Identity = field(default_factory=lambda: Identity.generate("operator"))
    received: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    daemon: Daemon | None = None
    thread: threading.Thread | None = None
    summaries: list[DaemonSummary] = field(default_factory=list)
    _cmd_seq: int = field(default_factory=lambda: int(time.time() * 1000))

    def setup(self, shared: bool = True) -> None:
        self.unit_dir = self.tmp / "unit"
        url = f"mqtts://{HOST}:{self.broker.port}"
        self.device = write_unit_state(
            self.unit_dir,
            ca=self.pki.ca,
            device_id=DEVICE,
            broker_url=url,
            backend=self.backend.public(),
            operator=self.operator.public(),
        )
        photos = self.tmp / "photos"
        photos.mkdir()
        Image.fromarray(astronaut()).save(photos / "astronaut.png")
        self.config_path = self.tmp / "camveil.toml"
        self.config_path.write_text(config_text(photos, self.unit_dir))
        client = self.pki.backend("dashboard")
        assert client.cert is not None and client.key is not None
        self.opener = Opener(
            self.backend, PeerKeys([self.device.public()]), SqliteDedupe(self.tmp / "seen.db")
        )
        self.listener = Listener(
            ListenerConfig(
                host=HOST,
                port=self.broker.port,
                ca_file=client.ca,
                cert_file=client.cert,
                key_file=client.key,
                group="it",
                client_id=f"it-listen-{self.tmp.name}",
                shared=shared,
            ),
            self.opener,
            self._on_received,
        )
        self.listener.start()
        assert self.listener.subscribed.wait(10), "listener not subscribed"
        # acks are sealed to the operator, not the backend: read them as `camveil cmd` does
        self.ack_opener = Opener(
            ack_reader(self.operator), PeerKeys([self.device.public()]), MemoryDedupe()
        )
        self.ack_client = TestClient(
            self.pki.operator("console"), self.broker.port, client_id=f"it-acks-{self.tmp.name}"
        )
        self.ack_client.connect()
        assert not self.ack_client.subscribe(ack_topic(DEVICE)).is_failure
        self._acks_stop = threading.Event()
        self._ack_thread = threading.Thread(target=self._read_acks, name="acks")
        self._ack_thread.start()

    def _read_acks(self) -> None:
        while not self._acks_stop.is_set():
            message = self.ack_client.expect(timeout=0.1)
            if message is None:
                continue
            received = self.ack_opener.open(message.topic, bytes(message.payload))
            if received is not None:
                self._on_received(received)

    def _on_received(self, received: Received) -> None:
        with self.cond:
            self.received.append(received)
            self.cond.notify_all()

    # --- the agent -------------------------------------------------------------------------

    def start_agent(self) -> Daemon:
        config = load_with_remote(self.config_path)[0]
        daemon = Daemon(config, UnitState.load(self.unit_dir), config_path=self.config_path)
        self.daemon = daemon
        self.thread = threading.Thread(target=self._run, args=(daemon,), name="daemon")
        self.thread.start()
        assert daemon.ready.wait(30), "daemon did not start"
        transport = daemon.transport
        assert transport is not None
        assert transport.wait_subscribed(15), "daemon not subscribed to its commands"
        return daemon

    def _run(self, daemon: Daemon) -> None:
        self.summaries.append(daemon.run())

    def stop_agent(self) -> DaemonSummary:
        assert self.daemon is not None and self.thread is not None
        self.daemon.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "daemon did not stop"
        self.daemon = None
        return self.summaries[-1]

    def close(self) -> None:
        if self.daemon is not None:
            self.stop_agent()
        self.listener.stop()
        self._acks_stop.set()
        self._ack_thread.join(5)
        self.ack_client.close()

    # --- waiting and commanding --------------------------------------------------------------

    def wait_for(
        self, pred: Callable[[Received], bool], timeout: float = 20.0, after: int = 0
    ) -> Received:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for r in self.received[after:]:
                    if pred(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = [(r.type, r.seq) for r in self.received[-20:]]
                    raise AssertionError(f"no matching message in {timeout}s; last: {kinds}")
                self.cond.wait(left)

    def command(
        self,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        command_id: str = "c1",
        operator: Identity | None = None,
        expires_in: int = 60,
    ) -> SealedEnvelope:
        self._cmd_seq += 1
        return seal_command(
            name,
            command_id=command_id,
            device=self.device.public(),
            operator=operator or self.operator,
            seq=self._cmd_seq,
            expires_at=int(time.time()) + expires_in,
            args=args,
        )

    def publish(self, envelope: SealedEnvelope) -> None:
        with TestClient(self.pki.operator("console-2"), self.broker.port) as client:
            rc = client.publish(envelope.topic, envelope.data)
            assert not rc.is_failure, rc

    def ack_for(self, envelope: SealedEnvelope, timeout: float = 20.0) -> dict[str, Any]:
        r = self.wait_for(
            lambda r: r.type == "cmd_ack" and r.message["body"]["cmd_seq"] == envelope.seq,
            timeout,
        )
        return dict(r.message["body"])


@pytest.fixture
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_mosquitto: Mosquitto, mqtt_pki: TestPki
) -> Iterator[Harness]:
    h = Harness(tmp_path, fresh_mosquitto, mqtt_pki)
    h.setup(shared=getattr(request, "param", True))
    try:
        yield h
    finally:
        h.close()


def _is(kind: str) -> Callable[[Received], bool]:
    return lambda r: r.type == kind


def test_events_flow_and_snapshot_is_redacted(harness: Harness) -> None:
    harness.start_agent()
    online = harness.wait_for(_is("status"))
    assert online.message["body"] == {"state": "online"}
    presence = harness.wait_for(_is("presence"))
    zones = presence.message["body"]["zones"]
    assert zones[0]["zone"] == "all" and zones[0]["faces"] >= 1  # the astronaut
    health = harness.wait_for(_is("health"))
    body = health.message["body"]
    assert body["models"]["centerface_int8"]
    assert body["outbox"]["depth"] >= 0 and body["uptime_s"] > 0
    assert "detect" in body["latency"]

    cmd = harness.command("snapshot", command_id="snap-1")
    harness.publish(cmd)
    assert harness.ack_for(cmd) == {
        "id": "snap-1",
        "cmd_seq": cmd.seq,
        "status": "accepted",
        "reason": "ok",
    }
    snap = harness.wait_for(
        lambda r: r.type == "snapshot" and r.message["body"].get("cmd") == "snap-1"
    )
    jpeg = snap.message["body"]["jpeg"]
    assert jpeg[:3] == b"\xff\xd8\xff"
    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), dtype=np.float32)
    original = astronaut()
    faces = [d for d in build_detector(DetectorConfig()).detect(original) if d.kind == "face"]
    assert faces, "the model finds the astronaut's face"
    sx, sy = pixels.shape[1] / original.shape[1], pixels.shape[0] / original.shape[0]
    for face in faces:
        b = face.box
        dx, dy = b.width * 0.2, b.height * 0.2
        region = pixels[
            int((b.y0 + dy) * sy) : int((b.y1 - dy) * sy),
            int((b.x0 + dx) * sx) : int((b.x1 - dx) * sx),
        ]
        assert region.size > 100
        assert region.mean() < 20 and region.std() < 10, "face region is filled (solid black)"
    summary = harness.stop_agent()
    assert summary.outbox_depth == 0
    harness.wait_for(lambda r: r.type == "status" and r.message["body"]["state"] == "offline")


def test_forged_replayed_and_expired_commands_are_rejected(harness: Harness) -> None:
    harness.start_agent()
    harness.wait_for(_is("status"))

    forged = harness.command("snapshot", operator=Identity.generate("operator"))
    harness.publish(forged)
    ack = harness.ack_for(forged)
    assert ack["status"] == "rejected" and ack["reason"] == "bad_signature"
    assert ack["id"] is None

    stranger = harness.command("snapshot", operator=Identity.generate("operator-x"))
    harness.publish(stranger)
    assert harness.ack_for(stranger)["reason"] == "unknown_key"

    expired = harness.command("snapshot", expires_in=-5)
    harness.publish(expired)
    assert harness.ack_for(expired)["reason"] == "expired"

    good = harness.command("restart_pipeline", command_id="restart-1")
    harness.publish(good)
    assert harness.ack_for(good)["status"] == "accepted"
    mark = len(harness.received)
    harness.publish(good)  # the same envelope again
    replay = harness.wait_for(
        lambda r: r.type == "cmd_ack" and r.message["body"]["cmd_seq"] == good.seq, after=mark
    )
    assert replay.message["body"]["status"] == "rejected"
    assert replay.message["body"]["reason"] == "replay"

    first = harness.stop_agent()
    assert first.commands_rejected == {
        "bad_signature": 1,
        "unknown_key": 1,
        "expired": 1,
        "replay": 1,
    }
    health = [r for r in harness.received if r.type == "health"][-1]
    assert health.message["body"]["dropped"]["cmd_rejected.bad_signature"] == 1

    # after a restart the replay window is restored from the state directory
    harness.start_agent()
    mark = len(harness.received)
    harness.publish(good)
    again = harness.wait_for(
        lambda r: r.type == "cmd_ack" and r.message["body"]["cmd_seq"] == good.seq, after=mark
    )
    assert again.message["body"]["reason"] == "replay"
    assert harness.stop_agent().commands_accepted == 0


def test_operator_clock_behind_is_accepted_and_replays_refused_across_restarts(
    harness: Harness,
) -> None:
    """Two operator consoles, one 5 s behind the other (seqs are Unix ms): both get their
    commands run, and an exact replay of any earlier command is refused, also after a restart
    of the unit. (A 1,024-wide seq window locked the slow console out after a 1 s skew.)"""

    def at(clock: float, command_id: str) -> SealedEnvelope:
        return seal_command(
            "restart_pipeline",
            command_id=command_id,
            device=harness.device.public(),
            operator=harness.operator,
            seq=int(clock * 1000),
            expires_at=int(clock) + 120,
        )

    harness.start_agent()
    harness.wait_for(_is("status"))
    sent = []
    for command_id, skew in (("on-time", 0.0), ("behind-5s", -5.0)):
        envelope = at(time.time() + skew, command_id)
        harness.publish(envelope)
        ack = harness.ack_for(envelope)
        assert ack["status"] == "accepted", ack
        sent.append(envelope)

    def replayed(envelope: SealedEnvelope) -> str:
        mark = len(harness.received)
        harness.publish(envelope)
        r = harness.wait_for(
            lambda r: r.type == "cmd_ack" and r.message["body"]["cmd_seq"] == envelope.seq,
            after=mark,
        )
        return str(r.message["body"]["reason"])

    assert [replayed(e) for e in sent] == ["replay", "replay"]
    harness.stop_agent()
    harness.start_agent()
    assert [replayed(e) for e in sent] == ["replay", "replay"]
    late = at(time.time() - 5.0, "behind-after-restart")
    harness.publish(late)
    assert harness.ack_for(late)["status"] == "accepted"
    assert harness.stop_agent().commands_accepted == 1


def test_set_config_bad_value_is_rejected_and_good_one_applied(harness: Harness) -> None:
    before = harness.config_path.read_text()
    daemon = harness.start_agent()
    harness.wait_for(_is("status"))

    bad = harness.command("set_config", {"config": {"detector": {"threads": 0}}}, command_id="b1")
    harness.publish(bad)
    ack = harness.ack_for(bad)
    assert ack["status"] == "rejected" and "threads" in ack["reason"]
    forbidden = harness.command("set_config", {"config": {"mqtt": {"enabled": False}}})
    harness.publish(forbidden)
    assert "cannot be changed remotely" in harness.ack_for(forbidden)["reason"]
    missing = harness.command("set_config", {"config": {"camera": {"source": "/nonexistent"}}})
    harness.publish(missing)
    assert harness.ack_for(missing)["status"] == "rejected"
    assert harness.config_path.read_text() == before
    assert daemon.config.detector.threads == 1

    good = harness.command(
        "set_config", {"config": {"events": {"presence_window_s": 2.0}}}, command_id="g1"
    )
    harness.publish(good)
    assert harness.ack_for(good)["status"] == "accepted"
    assert daemon.config.events.presence_window_s == 2.0
    mark = len(harness.received)
    harness.wait_for(_is("presence"), after=mark)  # the swapped pipeline runs
    harness.stop_agent()
    # the administrator's file is untouched; the change is kept in the state directory and
    # applies again after a restart
    assert harness.config_path.read_text() == before
    assert (harness.unit_dir / "remote.toml").exists()
    assert load_with_remote(harness.config_path)[0].events.presence_window_s == 2.0
    assert harness.start_agent().config.events.presence_window_s == 2.0
    harness.stop_agent()


@pytest.mark.parametrize("harness", [False, True], indirect=True)  # plain, $share
def test_broker_restart_loses_nothing(harness: Harness) -> None:
    daemon = harness.start_agent()
    harness.wait_for(_is("presence"))
    for _ in range(2):
        harness.broker.stop()  # SIGTERM: mosquitto saves its state (sessions, queues)
        time.sleep(1.5)  # events pile up in the outbox meanwhile
        harness.broker.start()
        harness.wait_for(_is("presence"), after=len(harness.received))
    emitter = daemon.emitter
    assert emitter is not None
    summary = harness.stop_agent()
    assert summary.outbox_depth == 0
    sent = {seq for _, seq in emitter.enqueued}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with harness.cond:
            got = [r.seq for r in harness.received]
        if sent <= set(got):
            break
        time.sleep(0.2)
    assert len(got) == len(set(got)), "a message was delivered twice after dedupe"
    missing = sorted(sent - set(got))
    topics = dict((seq, topic) for topic, seq in emitter.enqueued)
    assert not missing, f"lost seqs {[(m, topics[m]) for m in missing[:20]]}"
    extra = [r for r in harness.received if r.seq not in sent]
    assert all(r.type == "status" and r.message["body"]["state"] == "offline" for r in extra)


def test_publish_path_refuses_anything_but_sealed_envelopes(harness: Harness) -> None:
    from agent.outbox import Outbox
    from contract.errors import UnredactedDataError

    daemon = harness.start_agent()
    transport = daemon.transport
    assert transport is not None
    with pytest.raises(UnredactedDataError):
        transport.publish(event_topic(DEVICE, "presence"), b"plain")  # type: ignore[arg-type]
    with (
        Outbox(harness.tmp / "other.db", signer=harness.device.public()) as outbox,
        pytest.raises(UnredactedDataError),
    ):
        outbox.enqueue(b"plain")  # type: ignore[arg-type]
    harness.stop_agent()


@pytest.mark.parametrize("harness", [False], indirect=True)
def test_agent_killed_loses_nothing_it_stored(harness: Harness) -> None:
    """kill -9 of `camveil run` while the broker is down: every envelope in the outbox at that
    moment arrives after the restart (the outbox is durable, the seq file never repeats)."""
    import signal
    import sqlite3
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "camveil", "run", "--config", str(harness.config_path)]
    agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        harness.wait_for(_is("presence"))
        harness.broker.stop()
        time.sleep(2.5)  # presence and health events pile up in the outbox
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    with sqlite3.connect(harness.unit_dir / "outbox.db") as db:
        stored = {seq for (seq,) in db.execute("SELECT seq FROM outbox")}
    db.close()
    assert stored, "nothing was waiting in the outbox"
    harness.broker.start()
    harness.start_agent()
    harness.wait_for(lambda r: stored <= {x.seq for x in harness.received}, timeout=30)
    summary = harness.stop_agent()
    assert summary.outbox_depth == 0
    seqs = [r.seq for r in harness.received]
    assert len(seqs) == len(set(seqs))


def test_systemd_ready_and_watchdog_only_while_frames_flow(harness: Harness) -> None:
    """`camveil run` as systemd runs it (Type=notify, WatchdogSec): READY=1 after the first
    redacted frame, WATCHDOG=1 while frames flow, STOPPING=1 at the end."""
    import os
    import socket
    import subprocess
    import sys

    path = harness.tmp / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.2)
        env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
        cmd = [sys.executable, "-m", "camveil", "run", "--config", str(harness.config_path)]
        agent = subprocess.Popen(
            [*cmd, "--frames", "16"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        messages: list[str] = []
        while agent.poll() is None or messages[-1:] != ["STOPPING=1"]:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                if agent.poll() is not None:
                    break
        agent.wait(30)
    assert agent.returncode == 0
    first_ok = next(i for i, m in enumerate(messages) if "READY=1" in m)
    assert "WATCHDOG=1" in messages[first_ok]
    assert all("READY=1" not in m for m in messages[first_ok + 1 :])
    assert any("WATCHDOG=1" in m for m in messages[first_ok + 1 :])
    assert messages[-1] == "STOPPING=1"
