"""The RTSP camera against a real RTSP server (gst-rtsp-server, H.264 over RTP, TCP or UDP)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.errors import CameraUnavailableError
from hw.camera import CameraConfig, open_camera
from provisioning.devbroker import free_port

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # has python3-gi; the venv does not


class RtspServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> RtspServer:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER), str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise AssertionError(f"the RTSP server did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def url(self, userinfo: str = "") -> str:
        return f"rtsp://{userinfo}127.0.0.1:{self.port}/cam"


@pytest.fixture
def server() -> Iterator[RtspServer]:
    srv = RtspServer(free_port()).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_frames_arrive_at_the_configured_size_with_the_password_kept_out_of_sight(
    server: RtspServer, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = CameraConfig(
        kind="rtsp",
        source=server.url("admin:s3cret@"),
        width=160,
        height=120,
        rtsp_transport=transport,  # type: ignore[arg-type]
        reconnect=False,
        timeout_s=10,
    )
    with caplog.at_level("DEBUG"), open_camera(config) as cam:
        frames = [cam.read() for _ in range(10)]
        assert cam.fps == 15.0
    assert all(f.pixels.shape == (120, 160, 3) and f.pixels.dtype.name == "uint8" for f in frames)
    assert [f.index for f in frames] == sorted({f.index for f in frames})  # strictly increasing
    assert len({f.pixels.tobytes() for f in frames}) > 1  # the ball moves: real decoded video
    assert frames[0].source == server.url("admin:***@")
    assert "s3cret" not in caplog.text and "admin:***@" in caplog.text


def test_a_slow_reader_gets_the_newest_frame_and_the_missed_ones_are_counted(
    server: RtspServer,
) -> None:
    config = CameraConfig(kind="rtsp", source=server.url(), reconnect=False, timeout_s=10)
    with open_camera(config) as cam:
        first = cam.read()
        time.sleep(1.5)  # ~22 frames at 15 fps go by
        second = cam.read()
        assert second.index - first.index >= 10
        stats = cam.stats
    assert stats.lost >= second.index - first.index - 1 and stats.corrupt == 0


def test_a_camera_that_goes_away_is_reopened_when_it_comes_back(server: RtspServer) -> None:
    """The reconnecting wrapper's read() blocks through the outage (it reopens with backoff), so
    the camera comes back from another thread, 1 s after it went."""
    config = CameraConfig(
        kind="rtsp", source=server.url(), timeout_s=2, backoff_initial_s=0.2, backoff_max_s=0.5
    )
    with open_camera(config) as cam:
        before = cam.read()
        server.stop()
        back = threading.Timer(1.0, server.start)
        back.start()
        try:
            for _ in range(5):  # a frame decoded before the server died may still come first
                after = cam.read()  # blocks until the camera is back
                if cam.stats.reconnects:
                    break
        finally:
            back.join(30)
        assert cam.stats.reconnects == 1
    assert after.index > before.index


def test_an_unreachable_camera_is_a_clear_error_without_the_password() -> None:
    config = CameraConfig(
        kind="rtsp",
        source=f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/cam",
        reconnect=False,
        timeout_s=2,
    )
    camera = open_camera(config)
    with pytest.raises(CameraUnavailableError) as info:
        camera.start()
    message = str(info.value)
    assert "cannot open the stream" in message and "s3cret" not in message
    assert "admin:***@127.0.0.1" in message


def test_a_stream_that_stops_sending_is_unavailable_after_the_timeout(server: RtspServer) -> None:
    config = CameraConfig(kind="rtsp", source=server.url(), reconnect=False, timeout_s=1.5)
    with open_camera(config) as cam:
        cam.read()
        assert server.proc is not None
        server.proc.send_signal(19)  # SIGSTOP: the connection stays open, nothing comes
        try:
            began = time.monotonic()
            with pytest.raises(CameraUnavailableError):
                for _ in range(200):
                    cam.read()
            assert time.monotonic() - began < 30
        finally:
            server.proc.send_signal(18)  # SIGCONT so that the fixture can stop it
