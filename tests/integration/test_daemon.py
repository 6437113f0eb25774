"""The MQTT daemon end to end: real mosquitto (TLS, client certificates, ACL), real CenterFace
model on a replay camera of a real photo, real SQLite outbox, the real listener.

The :class:`Harness` (harness.py) is shared with test_wire.py and test_cmd.py.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable

import numpy as np
import pytest
from harness import DEVICE, Harness, astronaut, config_text
from PIL import Image

from agent.config import config_digest, load_with_remote
from agent.vision.factory import DetectorConfig, build_detector
from contract.commands import seal_command
from contract.confighash import key_hashes, keys_hash
from contract.envelope.keys import Identity
from contract.envelope.seal import SealedEnvelope
from contract.topics import event_topic
from dashboard.listener import (
    Received,
)


def _is(kind: str) -> Callable[[Received], bool]:
    return lambda r: r.type == kind


def test_events_flow_and_snapshot_is_redacted(harness: Harness) -> None:
    harness.start_agent()
    online = harness.wait_for(_is("status"))
    assert online.message["body"] == {"state": "online", "delivery": "receipt"}
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
    # the first health after the ack reports the new config: the overlay key by key (hashes of
    # values, the values never), and the whole effective config
    acked = harness.wait_for(lambda r: r.type == "cmd_ack" and r.message["body"]["id"] == "g1")
    reported = harness.wait_for(
        lambda r: (
            r.type == "health" and r.message["boot"] == acked.message["boot"] and r.seq > acked.seq
        )
    ).message["body"]["config"]
    overlay = {"events": {"presence_window_s": 2.0}}
    assert reported["remote_keys"] == key_hashes(overlay)
    assert reported["remote"] == keys_hash(key_hashes(overlay))
    assert reported["effective"] == config_digest(daemon.config, overlay).effective
    mark = len(harness.received)
    harness.wait_for(_is("presence"), after=mark)  # the swapped pipeline runs
    harness.stop_agent()
    # the administrator's file is untouched; the change is kept in the state directory and
    # applies again after a restart
    assert harness.config_path.read_text() == before
    assert (harness.unit_dir / "remote.toml").exists()
    assert load_with_remote(harness.config_path)[0].events.presence_window_s == 2.0
    mark = len(harness.received)
    assert harness.start_agent().config.events.presence_window_s == 2.0
    again = harness.wait_for(_is("health"), after=mark).message["body"]["config"]
    assert again == reported  # after a restart, from remote.toml
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


def test_dp_counts_spend_the_daily_budget_on_disk_then_withhold(harness: Harness) -> None:
    """[events] dp_epsilon reaches the unit's builder with the budget file in its state dir."""
    harness.config_path.write_text(
        config_text(
            harness.tmp / "photos", harness.unit_dir, dp_epsilon=1.0, dp_epsilon_per_day=2.0
        )
    )
    harness.start_agent()
    noised = harness.wait_for(lambda r: r.type == "presence" and "eps" in r.message["body"]["dp"])
    assert noised.message["body"]["dp"]["day"] == 2.0
    withheld = harness.wait_for(
        lambda r: r.type == "presence" and r.message["body"]["dp"].get("exhausted") is True
    )
    zones = withheld.message["body"]["zones"]
    assert all(z["people"] is None and z["faces"] is None for z in zones)
    record = harness.unit_dir / "dp-budget.json"
    assert record.stat().st_mode & 0o777 == 0o600
    assert json.loads(record.read_bytes())["spent"] == pytest.approx(2.0)
