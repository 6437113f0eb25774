"""`camveil ha-bridge` as a subprocess against a real mosquitto (a password file, as Home
Assistant's broker usually has; plus a TLS listener), over a real dashboard store filled through
the Store API while the bridge reads it. A subscriber checks what Home Assistant would see."""

from __future__ import annotations

import json
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from camveil.__main__ import main
from dashboard.store import Store
from provisioning import pki
from tests.integration.broker import HOST, free_port, mosquitto_binary

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "camveil-bridge", "a long broker password"
NODES = ("connectivity", "people", "faces", "fps", "status")
HA_KEYS = {"name", "unique_id", "state_topic", "availability_topic", "device", "value_template"}


@dataclass
class Broker:
    """mosquitto with a plain listener (and a TLS one), both behind one password file."""

    directory: Path
    port: int
    tls_port: int
    ca_file: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.directory / "mosquitto.log").open("ab") as log:
            self.process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.directory / "mosquitto.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.directory / "mosquitto.log").read_text()
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                socket.create_connection((HOST, self.tls_port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("mosquitto did not listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def make_broker(directory: Path) -> Broker:
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca("ha test CA")
    ca_file = directory / "ca.crt"
    pki.write_cert(ca_file, ca.cert)
    server = pki.write_issued(directory, "server", pki.make_server_cert(ca, loopback=True))
    passwords = directory / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), USER, PASSWORD],
        check=True,
        capture_output=True,
    )
    passwords.chmod(0o600)
    port, tls_port = free_port(), free_port()
    (directory / "mosquitto.conf").write_text(
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        "persistence false\n"
        "allow_anonymous false\n"
        f"password_file {passwords}\n"
        f"listener {port} {HOST}\n"
        f"listener {tls_port} {HOST}\n"
        f"cafile {ca_file}\ncertfile {server.cert}\nkeyfile {server.key}\n"
        "log_dest stdout\n"
    )
    return Broker(directory, port, tls_port, ca_file)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = make_broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Watcher:
    """What Home Assistant would receive: every message under the discovery prefix and the
    bridge's topic root, with the time it arrived."""

    def __init__(self, port: int) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.seen: list[tuple[str, bytes, bool]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{id(self):x}")
        self.client.username_pw_set(USER, PASSWORD)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.client.connect(HOST, port)
        self.client.subscribe([("homeassistant/#", 1), ("camveil/#", 1)])
        self.client.loop_start()

    def drain(self, seconds: float) -> list[tuple[str, bytes, bool]]:
        got: list[tuple[str, bytes, bool]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        self.seen += got
        return got

    def wait(self, pred: Callable[[str, bytes], bool], timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload, retain = self.messages.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append((topic, payload, retain))
            if pred(topic, payload):
                return payload
        raise AssertionError(f"not received; saw {[t for t, _, _ in self.seen][-20:]}")

    def latest(self, topic: str) -> bytes | None:
        found = [p for t, p, _ in self.seen if t == topic]
        return found[-1] if found else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def add(store: Store, device: str, seq: int, kind: str, body: Any) -> None:
    message = {"v": 1, "type": kind, "boot": "b1", "ts": int(time.time() * 1000), "body": body}
    assert store.add_event(device, seq, f"camveil/v1/{device}/event/{kind}", message)


def presence(people: int, faces: int, eps: float = 0.5) -> Any:
    now = int(time.time() * 1000)
    return {
        "start": now - 1000,
        "end": now,
        "zones": [{"zone": "all", "people": people, "faces": faces}],
        "dp": {"eps": eps, "min": 0},
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "dashboard.sqlite") as s:
        s.set_site("cv-1", "lobby")
        add(s, "cv-1", 1, "status", {"state": "online"})
        add(s, "cv-1", 2, "health", {"fps": 9.5})
        add(s, "cv-1", 3, "presence", presence(3, 1))
        add(s, "cv-1", 4, "snapshot", {"jpeg": b"\xff\xd8secret pixels", "w": 8, "h": 8})
        add(s, "cv-2", 1, "status", {"state": "offline"})
        yield s


def bridge(
    tmp_path: Path,
    port: int,
    *extra: str,
    store: Path | None = None,
    name: str = "bridge",
    url: str = "",
) -> subprocess.Popen[bytes]:
    password = tmp_path / "ha-password"
    password.write_text(PASSWORD + "\n")
    args = [
        sys.executable, "-m", "camveil", "ha-bridge",
        "--store", str(store or tmp_path / "dashboard.sqlite"),
        "--broker", url or f"mqtt://{HOST}:{port}",
        "--username", USER, "--password-file", str(password),
        "--interval", "0.2",
        *extra,
    ]  # fmt: skip
    with (tmp_path / f"{name}.stderr").open("wb") as err:
        return subprocess.Popen(
            args,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(15)


def states(watcher: Watcher, device: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p, _ in watcher.seen if t == f"camveil/{device}/state" and p]


def test_discovery_states_changes_removal_and_last_will(
    tmp_path: Path, broker: Broker, store: Store
) -> None:
    watcher = Watcher(broker.port)
    proc = bridge(tmp_path, broker.port)
    try:
        watcher.wait(lambda t, p: t == "camveil/bridge/availability" and p == b"online")
        watcher.wait(lambda t, p: t == "camveil/cv-2/state")
        watcher.drain(1.5)  # seven more rounds: nothing changed, nothing more is sent
        for device in ("cv-1", "cv-2"):
            for node in NODES:
                component = "binary_sensor" if node == "connectivity" else "sensor"
                topic = f"homeassistant/{component}/camveil_{device}/{node}/config"
                configs = [p for t, p, _ in watcher.seen if t == topic]
                assert len(configs) == 1, topic
                config = json.loads(configs[0])
                assert set(config) >= HA_KEYS, topic
                assert config["device"]["identifiers"] == [f"camveil_{device}"]
                assert config["availability_topic"] == "camveil/bridge/availability"
            assert len(states(watcher, device)) == 1  # change-only
        one = states(watcher, "cv-1")[0]
        assert one["online"] is True and one["status"] == "online"
        assert (one["people"], one["faces"], one["noised"], one["epsilon"]) == (3, 1, True, 0.5)
        assert one["fps"] == 9.5
        assert states(watcher, "cv-2")[0]["online"] is False
        lobby = json.loads(watcher.latest("homeassistant/sensor/camveil_cv-1/people/config") or b"")
        assert lobby["device"]["suggested_area"] == "lobby"
        everything = b"".join(p for _, p, _ in watcher.seen)
        assert b"secret pixels" not in everything and b"jpeg" not in everything

        # a new presence window: one new state for cv-1, none for cv-2
        add(store, "cv-1", 5, "presence", presence(5, 2))
        changed = json.loads(watcher.wait(lambda t, p: t == "camveil/cv-1/state"))
        assert (changed["people"], changed["faces"]) == (5, 2)
        watcher.drain(0.6)
        assert len(states(watcher, "cv-2")) == 1

        # cv-2 leaves the store: its entities are removed (empty retained payloads)
        with store.transaction() as conn:
            conn.execute("DELETE FROM units WHERE device = 'cv-2'")
        watcher.wait(lambda t, p: t == "camveil/cv-2/state" and p == b"")
        watcher.drain(0.6)
        for node in NODES:
            component = "binary_sensor" if node == "connectivity" else "sensor"
            assert watcher.latest(f"homeassistant/{component}/camveil_cv-2/{node}/config") == b""
        assert watcher.latest("homeassistant/sensor/camveil_cv-1/people/config")

        # killed: the broker publishes the bridge's last will
        proc.kill()
        proc.wait(10)
        watcher.wait(lambda t, p: t == "camveil/bridge/availability" and p == b"offline")

        # cv-1 leaves while no bridge runs: the next bridge learns of it from the retained
        # state and removes its entities
        with store.transaction() as conn:
            conn.execute("DELETE FROM units WHERE device = 'cv-1'")
        proc = bridge(tmp_path, broker.port, name="bridge-2")
        watcher.wait(lambda t, p: t == "camveil/cv-1/state" and p == b"")
        assert watcher.latest("homeassistant/sensor/camveil_cv-1/fps/config") == b""
        assert stop(proc) == 0
        watcher.wait(lambda t, p: t == "camveil/bridge/availability" and p == b"offline")
    finally:
        stop(proc, signal.SIGKILL)
        watcher.close()
    assert b"Traceback" not in (tmp_path / "bridge.stderr").read_bytes()


def test_broker_and_store_outages_are_waited_out_and_said_once(tmp_path: Path) -> None:
    """Started before its broker and before the dashboard made the store: the bridge waits for
    both, says so once each, and publishes when they are there; a broker restart is one more
    line, not a crash."""
    b = make_broker(tmp_path / "broker")
    late_store = tmp_path / "late" / "dashboard.sqlite"
    proc = bridge(tmp_path, b.port, store=late_store)
    try:
        time.sleep(2.5)  # several reconnect attempts and store reads fail
        assert proc.poll() is None
        b.start()
        watcher = Watcher(b.port)
        watcher.wait(lambda t, p: t == "camveil/bridge/availability" and p == b"online")
        with Store(late_store) as s:
            add(s, "cv-9", 1, "status", {"state": "online"})
            watcher.wait(lambda t, p: t == "camveil/cv-9/state", timeout=15)
            b.stop()
            time.sleep(1.5)
            add(s, "cv-9", 2, "status", {"state": "offline"})
            b.start()
            watcher.close()
            watcher = Watcher(b.port)  # a new broker without persistence: all again
            watcher.wait(
                lambda t, p: t == "camveil/cv-9/state" and json.loads(p)["online"] is False,
                timeout=15,
            )
        watcher.close()
        assert stop(proc) == 0
    finally:
        stop(proc, signal.SIGKILL)
        b.stop()
    log = (tmp_path / "bridge.stderr").read_text()
    assert log.count("cannot connect; retrying with backoff") == 1, log
    assert log.count("lost the connection") == 1, log
    assert log.count("cannot read the dashboard store") == 1, log
    assert "Traceback" not in log


def test_tls_broker_with_the_ca_file(tmp_path: Path, broker: Broker, store: Store) -> None:
    watcher = Watcher(broker.port)
    url = f"mqtts://localhost:{broker.tls_port}"
    proc = bridge(tmp_path, 0, "--ca-file", str(broker.ca_file), url=url)
    try:
        watcher.wait(lambda t, p: t == "camveil/cv-1/state" and json.loads(p)["people"] == 3)
    finally:
        assert stop(proc) == 0
        watcher.close()
    assert b"Traceback" not in (tmp_path / "bridge.stderr").read_bytes()
    # the same broker refuses a client that does not trust its certificate
    context = ssl.create_default_context()
    with pytest.raises(ssl.SSLError), socket.create_connection((HOST, broker.tls_port)) as raw:
        context.wrap_socket(raw, server_hostname="localhost")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "http://ha:1883"], "use mqtt://host:port or mqtts://host:port"),
        (["--broker", "mqtt://ha:99999"], "the port is not a number"),
        (["--broker", "mqtt://u:p@ha"], "no credentials in the URL"),
        (["--password-file", "/nonexistent/pw"], "cannot read the password file"),
        (["--ca-file", "/etc/hostname"], "--ca-file goes with an mqtts:// broker"),
        (["--prefix", "home/#"], "no MQTT wildcards"),
        (["--interval", "0"], "above 0"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = {
        "--broker": "mqtt://127.0.0.1:1",
        "--store": str(tmp_path / "s.sqlite"),
        "--username": "u",
    }
    for option, value in zip(args[::2], args[1::2], strict=True):
        base[option] = value
    argv = ["ha-bridge", *(x for kv in base.items() for x in kv)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert err.startswith("camveil ha-bridge: error: ")


def test_help_says_what_leaves(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ha-bridge", "--help"])
    out = capsys.readouterr().out
    assert "never: snapshots" in out and "epsilon" in out and "revoked" in out


def test_a_locked_store_is_waited_out(tmp_path: Path, broker: Broker) -> None:
    """Another process holds the store's lock longer than the bridge's busy timeout (2 s): the
    bridge says so once, keeps running, and publishes what changed once it can read. (A WAL
    reader is blocked only in rare moments, such as a recovery; the store is switched to a
    rollback journal here so that a writer's exclusive lock blocks the reader on demand.)"""
    path = tmp_path / "dashboard.sqlite"
    with Store(path) as s:
        add(s, "cv-1", 1, "status", {"state": "online"})
    sqlite3.connect(path, isolation_level=None).execute("PRAGMA journal_mode = DELETE").close()
    watcher = Watcher(broker.port)
    proc = bridge(tmp_path, broker.port)
    try:
        watcher.wait(lambda t, p: t == "camveil/cv-1/state")
        locker = sqlite3.connect(path, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            locker.execute("UPDATE units SET site = 'hall' WHERE device = 'cv-1'")
            time.sleep(3.5)
            assert proc.poll() is None
            locker.execute("COMMIT")
        finally:
            locker.close()
        config = watcher.wait(
            lambda t, p: t == "homeassistant/sensor/camveil_cv-1/fps/config" and b"hall" in p
        )
        assert json.loads(config)["device"]["suggested_area"] == "hall"
        assert stop(proc) == 0
    finally:
        stop(proc, signal.SIGKILL)
        watcher.close()
    log = (tmp_path / "bridge.stderr").read_text()
    assert log.count("database is locked") == 1, log
    assert "Traceback" not in log


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    """deploy/dashboard/camveil-ha-bridge.service through systemd's own tools, rendered with
    this checkout's console script (as tests/integration/test_systemd_units.py does)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: apt install systemd (`make setup` does)"
    unit = REPO / "deploy" / "dashboard" / "camveil-ha-bridge.service"
    camveil = Path(sys.executable).parent / "camveil"
    assert camveil.exists(), "the camveil console script is missing: pip install -e ."
    (tmp_path / unit.name).write_text(
        unit.read_text().replace("/opt/camveil/venv/bin/camveil", str(camveil))
    )
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="", LC_ALL="C.UTF-8")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [analyze, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
        )

    verify = run("verify", "--man=no", unit.name)
    assert verify.returncode == 0, verify.stderr
    assert [line for line in verify.stderr.splitlines() if "camveil" in line] == []
    security = run("security", "--offline=true", unit.name)
    pattern = rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d)"
    found = re.search(pattern, security.stdout)
    assert found, security.stdout + security.stderr
    assert float(found.group(1)) <= 2.0
    text = unit.read_text()
    for line in ["User=camveil-dashboard", "ProtectSystem=strict", "CapabilityBoundingSet=",
                 "ReadOnlyPaths=/var/lib/camveil-dashboard", "--password-file %d/ha-password",
                 "LoadCredential=ha-password:"]:  # fmt: skip
        assert line in text, line
    assert "ReadWritePaths" not in text


def test_a_refused_login_is_said_once_and_retried(
    tmp_path: Path, broker: Broker, store: Store
) -> None:
    password = tmp_path / "wrong"
    password.write_text("not the password\n")
    proc = bridge(tmp_path, broker.port, "--password-file", str(password))
    try:
        time.sleep(3.5)  # attempts at about 0, 1 and 3 s
        assert proc.poll() is None
        assert stop(proc) == 0
    finally:
        stop(proc, signal.SIGKILL)
    log = (tmp_path / "bridge.stderr").read_text()
    assert log.count("refused the bridge: Not authorized") == 1, log
    assert log.count("\n") == 1, log
    broker.stop()  # mosquitto writes its log out as it stops
    broker_log = (broker.directory / "mosquitto.log").read_text()
    assert broker_log.count("not authorised") >= 2  # retried
