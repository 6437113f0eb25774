"""agent.watchdog against a real unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.watchdog import Notifier, Watchdog, watchdog_interval


class NotifySocket:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = "\0" + path[1:] if path.startswith("@") else path
        self.sock.bind(address)
        self.sock.settimeout(0.5)

    def messages(self, wait: float = 0.05) -> list[str]:
        out: list[str] = []
        self.sock.settimeout(wait)
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return out


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(str(tmp_path / "notify"))
    yield s
    s.sock.close()


class Probe:
    """Controllable health inputs and clock."""

    def __init__(self) -> None:
        self.now = 100.0
        self.last_frame: float | None = None
        self.writable = True

    def frame(self) -> None:
        self.last_frame = self.now


def make(notify: NotifySocket, probe: Probe, **kwargs: float) -> Watchdog:
    return Watchdog(
        Notifier(notify.path),
        last_frame_at=lambda: probe.last_frame,
        outbox_writable=lambda: probe.writable,
        max_frame_age=5.0,
        clock=lambda: probe.now,
        **kwargs,
    )


def test_ready_only_after_first_healthy_check(notify_socket: NotifySocket) -> None:
    probe = Probe()
    dog = make(notify_socket, probe)
    assert not dog.tick().ok
    assert notify_socket.messages() == ["STATUS=unhealthy: no frame redacted yet"]
    probe.frame()
    assert dog.tick().ok
    (first,) = notify_socket.messages()
    assert first.splitlines()[:2] == ["READY=1", "WATCHDOG=1"]
    dog.tick()
    (second,) = notify_socket.messages()
    assert second.startswith("WATCHDOG=1\nSTATUS=running")  # READY only once


def test_stalled_frames_stop_the_pings(notify_socket: NotifySocket) -> None:
    probe = Probe()
    dog = make(notify_socket, probe)
    probe.frame()
    dog.tick()
    probe.now += 4.0
    dog.tick()
    assert sum("WATCHDOG=1" in m for m in notify_socket.messages()) == 2
    probe.now += 2.0  # the last frame is now 6 s old: stalled
    health = dog.tick()
    assert not health.ok
    assert notify_socket.messages() == ["STATUS=unhealthy: no frame redacted for 6 s"]
    probe.frame()  # frames flow again: pings resume
    assert dog.tick().ok
    assert "WATCHDOG=1" in notify_socket.messages()[0]


def test_unwritable_outbox_stops_the_pings(notify_socket: NotifySocket) -> None:
    probe = Probe()
    probe.frame()
    probe.writable = False
    dog = make(notify_socket, probe)
    assert dog.tick().status == "unhealthy: outbox not writable"
    assert all("WATCHDOG" not in m for m in notify_socket.messages())


def test_failing_probe_is_unhealthy_not_a_crash(notify_socket: NotifySocket) -> None:
    def broken() -> bool:
        raise OSError("disk gone")

    dog = Watchdog(Notifier(notify_socket.path), last_frame_at=lambda: 1.0, outbox_writable=broken)
    assert "probe failed (OSError)" in dog.tick().status


def test_background_thread_pings_until_stalled(notify_socket: NotifySocket) -> None:
    probe = Probe()
    probe.frame()
    dog = make(notify_socket, probe, interval=0.02)
    with dog:
        time.sleep(0.2)
        assert sum("WATCHDOG=1" in m for m in notify_socket.messages(0.01)) >= 3
        probe.now += 60  # redaction stalls
        time.sleep(0.1)
        notify_socket.messages(0.01)  # drain what was sent before the stall was seen
        time.sleep(0.2)
        late = notify_socket.messages(0.01)
        assert late and all("WATCHDOG=1" not in m for m in late)
    assert notify_socket.messages()[-1] == "STOPPING=1"


def test_abstract_socket_address() -> None:
    name = f"@camveil-test-{os.getpid()}"
    s = NotifySocket(name)
    try:
        assert Notifier(name).notify("READY=1")
        assert s.messages() == ["READY=1"]
    finally:
        s.sock.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.notify("READY=1")


def test_missing_socket_is_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "absent"))
    assert not notifier.notify("WATCHDOG=1")
    assert not notifier.notify("WATCHDOG=1")
    assert len(caplog.records) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "42"}, 10.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "7"}, None),
        ({}, None),
        ({"WATCHDOG_USEC": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, 42) == expected


def test_failing_publisher_stops_the_pings(notify_socket: NotifySocket) -> None:
    probe = Probe()
    publishing = [True]
    dog = Watchdog(
        Notifier(notify_socket.path),
        last_frame_at=lambda: probe.last_frame,
        outbox_writable=lambda: probe.writable,
        publishing_ok=lambda: publishing[0],
        max_frame_age=5.0,
        clock=lambda: probe.now,
    )
    probe.frame()
    assert dog.tick().ok
    publishing[0] = False  # frames flow, the outbox takes writes, nothing leaves it
    health = dog.tick()
    assert not health.ok
    assert health.status == "unhealthy: publishing from the outbox keeps failing"
    messages = notify_socket.messages()
    assert not any("WATCHDOG=1" in m for m in messages[1:])
    assert messages[-1] == "STATUS=unhealthy: publishing from the outbox keeps failing"
    publishing[0] = True
    assert dog.tick().ok
