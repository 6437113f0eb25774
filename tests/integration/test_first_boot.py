"""First boot with no hand edits: a unit provisioned over a real pty pair with ``camveil provision
--camera replay --camera-source VIDEO`` and started with the installed template config, unchanged,
publishes sealed events to a real mosquitto run from the station's broker files.

The chain, all real code and files:

1. :func:`provisioning.station.init_station` in a temporary directory (broker URL on a free
   loopback port); a second backend certificate for a raw watcher.
2. ``camveil provision`` (the CLI, a subprocess) on one end of a pty pair, the unit's listener
   (:func:`provisioning.unit.listen`) on the other: the bundle carries the camera and MQTT on.
3. ``docs/camveil.toml.example`` copied byte for byte as the unit's ``camveil.toml`` (what
   install.sh does); ``camveil run --state-dir`` points it at the test's state directory instead
   of /var/lib/camveil, the only difference from the unit's systemd command line.
4. While the broker is down, the agent says once at WARNING why it cannot publish, and keeps
   what it sealed in the outbox.
5. mosquitto from the station's ``broker/mosquitto.conf``; a backend listener and receipter with
   the station's backend identity; the agent runs again: everything from both runs arrives and
   the first raw payload opens with the backend key.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import pytest
from broker import ClientFiles, TestClient, mosquitto_binary
from harness import astronaut
from serial_rig import FaultProxy, Pty, Unit, verify_provisioned
from station_rig import backend_files, broker_process, settings

from contract.envelope.keys import load_identity, load_peers
from contract.envelope.replay import ReplayGuard
from contract.envelope.seal import open_envelope
from contract.statedir import Bundle
from contract.topics import device_filter
from dashboard.listener import Listener, ListenerConfig, MemoryDedupe, Opener, Received
from dashboard.receipts import Receipter
from provisioning.devbroker import HOST, free_port
from provisioning.station import StationPaths, add_backend, init_station

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "docs" / "camveil.toml.example"
FRAMES = 12


@dataclass
class Inbox:
    received: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def add(self, received: Received) -> None:
        with self.cond:
            self.received.append(received)
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.received), timeout)
            assert ok, f"not received in {timeout} s: {[(r.type, r.seq) for r in self.received]}"


def write_video(path: Path) -> None:
    """FRAMES frames of a photo with a face, at 6 fps (2 s of real-time replay)."""
    bgr = cv2.cvtColor(astronaut((640, 480)), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 6.0, (640, 480))
    for _ in range(FRAMES):
        writer.write(bgr)
    writer.release()
    assert path.stat().st_size > 0


def camveil(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "camveil", *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=env, cwd=REPO,
    )  # fmt: skip


def provision_over_pty(paths: StationPaths, unit_dir: Path, video: Path) -> str:
    a, b = Pty(), Pty()
    try:
        with FaultProxy(a, b, seed=1):  # no faults: a plain cable
            unit = Unit(unit_dir, b.path).start()
            try:
                done = camveil(
                    "provision", "--port", a.path, "--station", str(paths.root),
                    "--site", "lobby", "--camera", "replay", "--camera-source", str(video),
                    timeout=60,
                )  # fmt: skip
            finally:
                unit.stop()
    finally:
        a.close()
        b.close()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "provisioned" in done.stdout
    first_boot = f"first boot: camera: replay {video}, MQTT on (unless its camveil.toml sets them)"
    assert first_boot in done.stdout
    return verify_provisioned(unit_dir, paths)


def test_a_provisioned_unit_publishes_from_the_template_config(tmp_path: Path) -> None:
    mosquitto_binary()
    port = free_port()
    paths = init_station(
        tmp_path / "station",
        broker_url=f"mqtts://{HOST}:{port}",
        broker_settings=settings(),
    )
    add_backend(paths.root, "raw")
    video = tmp_path / "camera.mp4"
    write_video(video)

    # --- provisioning over the pty pair, camera chosen at the station ---------------------------
    unit_dir = tmp_path / "unit"
    device = provision_over_pty(paths, unit_dir, video)
    bundle = Bundle.decode((unit_dir / "provisioned" / "bundle.cbor").read_bytes())
    assert bundle.settings == {
        "camera": {"kind": "replay", "source": str(video)},
        "mqtt": {"enabled": True},
    }

    # --- the installed config: the template, not edited ----------------------------------------
    config = tmp_path / "etc" / "camveil.toml"
    config.parent.mkdir()
    shutil.copyfile(TEMPLATE, config)
    assert config.read_bytes() == TEMPLATE.read_bytes()
    run = ("run", "--config", str(config), "--state-dir", str(unit_dir))

    # --- broker down: the unit says why it cannot publish, once, and keeps its events ----------
    offline = camveil(*run, timeout=120)
    assert offline.returncode == 0, offline.stderr[-3000:]
    summary = json.loads(offline.stdout.strip().splitlines()[-1])["summary"]
    assert summary["device"] == device
    # the station's camera, the replayed video (real-time: a frame late under load is lost)
    assert 0 < summary["frames_in"] <= FRAMES
    assert summary["acked"] == 0 and summary["outbox_depth"] == summary["enqueued"] >= 2
    why = [line for line in offline.stderr.splitlines() if "cannot publish to" in line]
    assert len(why) == 1, offline.stderr[-3000:]
    assert why[0].startswith("WARNING agent.linkreport: ")
    assert f"cannot publish to {HOST}:{port}: " in why[0] and "mosquitto running" in why[0]

    # --- the station's broker and backend -------------------------------------------------------
    backend = backend_files(paths)
    assert backend.cert is not None and backend.key is not None
    backend_identity = load_identity(paths.backend_key)
    trusted = load_peers(paths.peers)
    inbox = Inbox()
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
    process = broker_process(paths, port, tmp_path / "mosquitto.log")
    with process:
        raw = TestClient(raw_files, port)
        raw.connect()
        listener.start()
        receipter.start()
        try:
            assert raw.subscribe(device_filter(device)) < 0x80
            assert listener.subscribed.wait(10), f"listener not subscribed:\n{process.log_tail()}"

            online = camveil(*run, timeout=120)
            assert online.returncode == 0, online.stderr[-3000:]
            second = json.loads(online.stdout.strip().splitlines()[-1])["summary"]
            assert 0 < second["frames_in"] <= FRAMES
            assert second["outbox_depth"] == 0, online.stderr[-3000:]
            assert "cannot publish" not in online.stderr

            total = summary["enqueued"] + second["enqueued"]
            inbox.wait_for(lambda rs: len(rs) >= total, timeout=15)
            got = inbox.received
            assert {r.device for r in got} == {device}
            assert {"status", "health", "presence"} <= {r.type for r in got}
            presence = [r for r in got if r.type == "presence"]  # faces: the video, not synthetic
            assert any(
                any(zone["faces"] for zone in r.message["body"]["zones"]) for r in presence
            ), presence[0].message["body"]
            assert listener.stats.bad == {} and listener.stats.duplicates == 0

            # the first sealed event, opened by hand with the station's backend identity
            message = raw.expect(timeout=5)
            assert message is not None
            opened = open_envelope(
                bytes(message.payload),
                topic=message.topic,
                trusted_senders=trusted,
                recipient=backend_identity,
                replay_guard=ReplayGuard(),
            )
            assert opened.device == opened.sender_kid == device
        finally:
            receipter.stop()
            listener.stop()
            raw.close()


def test_station_cli_camera_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from camveil.__main__ import main

    root = tmp_path / "st"
    url = f"mqtts://{HOST}:{free_port()}"
    assert main(["station", "init", str(root), "--broker-url", url, "--camera", "replay"]) == 2
    err = capsys.readouterr().err
    assert err == 'camveil station: error: camera kind "replay" needs a source (a video file)\n'
    assert not (root / "station.json").exists()
    with pytest.raises(SystemExit) as usage:
        main(["station", "init", str(root), "--camera", "webcam"])
    assert usage.value.code == 2
    assert "argument --camera: invalid choice: 'webcam'" in capsys.readouterr().err

    assert main(["station", "init", str(root), "--broker-url", url, "--camera", "v4l2",
                 "--camera-source", "/dev/video0"]) == 0  # fmt: skip
    assert "units are given:  MQTT on, camera: v4l2 /dev/video0" in capsys.readouterr().out
    assert json.loads((root / "station.json").read_text())["camera"] == {
        "kind": "v4l2",
        "source": "/dev/video0",
    }
    # a source without a kind is refused before the serial port is opened
    code = main(["provision", "--port", str(tmp_path / "no-such-port"), "--station", str(root),
                 "--camera-source", "/dev/video1"])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        "camveil provision: error: --camera-source needs --camera KIND\n"
    )
