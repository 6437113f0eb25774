"""Provisioning end to end over real pty pairs through pyserial, with faults injected in between.

Topology: the station opens pty A's slave with pyserial, the unit opens pty B's slave with
pyserial, and :class:`FaultProxy` copies bytes between the two masters. The proxy sees whole
frames (it splits the stream at 0x00) so it can cut the cable, flip and drop bytes, add garbage,
and drop chosen message types in one direction; it records all traffic for the key scan.
Unit "power loss" snapshots the state directory at a crash point (what the disk would hold:
every write before it was fsynced) and aborts the unit; a new unit then boots on the snapshot.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import tty
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.unitstate import UnitState
from contract.envelope.keys import load_identity, load_peers
from contract.errors import LinkTimeoutError, ProvisioningError, RefusedError
from hw.serial_link import PySerialLink
from provisioning import cobs, pki
from provisioning import unit as unit_module
from provisioning.inventory import Inventory
from provisioning.serial_proto import (
    Channel,
    FrameReader,
)
from provisioning.station import ProvisionResult, Station, StationPaths, init_station
from provisioning.unit import UnitStore, listen, verify_proof

BAUD = 115200
S2U, U2S = "station->unit", "unit->station"


# --- harness -------------------------------------------------------------------------------------


class Pty:
    """A pty whose slave is raw from the start (no echo before pyserial configures it)."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)  # kept open: the master never sees EIO

    def close(self) -> None:
        os.close(self.master)
        os.close(self._slave)


@dataclass
class Faults:
    """What the proxy does to the traffic; change it at any time from the test."""

    cut: bool = False
    flip: float = 0.0  # probability per byte
    drop: float = 0.0  # probability per byte
    garbage: float = 0.0  # probability per frame of random bytes before it (between frames)
    damage: int = 0  # damage this many whole frames: one byte flipped or dropped in each
    damage_kind: str = "flip"
    drop_types: dict[str, set[str]] = field(default_factory=dict)  # direction -> message types
    baud: int | None = None  # throttle to this line rate
    echo: bool = False  # also send every frame back to its sender (a tty not in raw mode)


class FaultProxy:
    """Copies frames between two pty masters, applying :class:`Faults`; records everything."""

    def __init__(self, a: Pty, b: Pty, seed: int = 0) -> None:
        self._fds = {a.master: (b.master, S2U), b.master: (a.master, U2S)}
        self.faults = Faults()
        self.rng = random.Random(seed)
        self.captured = bytearray()
        self.injected: Counter[str] = Counter()
        self.seen: dict[str, list[str]] = {S2U: [], U2S: []}
        self._pending = {S2U: bytearray(), U2S: bytearray()}
        self._last = {S2U: 0.0, U2S: 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def saw(self, direction: str, t: str) -> bool:
        with self._lock:
            return t in self.seen[direction]

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(list(self._fds), [], [], 0.01)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                out_fd, direction = self._fds[fd]
                if self.faults.echo:
                    with contextlib.suppress(OSError):
                        os.write(fd, data)
                with self._lock:
                    self.captured += data
                buf = self._pending[direction]
                buf += data
                self._last[direction] = time.monotonic()
                while (zero := buf.find(0)) >= 0:
                    chunk = bytes(buf[: zero + 1])
                    del buf[: zero + 1]
                    self._forward(out_fd, direction, chunk)
            # flush garbage that has no delimiter once the line is quiet
            for out_fd, direction in self._fds.values():
                if self._pending[direction] and time.monotonic() - self._last[direction] > 0.05:
                    chunk = bytes(self._pending[direction])
                    self._pending[direction].clear()
                    self._forward(out_fd, direction, chunk)

    def _forward(self, out_fd: int, direction: str, chunk: bytes) -> None:
        f, rng = self.faults, self.rng
        messages = FrameReader().feed(b"\x00" + chunk)
        with self._lock:
            self.seen[direction] += [m.t for m in messages]
        if f.cut or any(m.t in f.drop_types.get(direction, ()) for m in messages):
            return
        data = bytearray()
        if chunk == b"\x00" and f.garbage and rng.random() < f.garbage:  # between two frames
            data += bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 80)))
            self.injected["garbage"] += 1
        for byte in chunk:
            if f.drop and rng.random() < f.drop:
                self.injected["drop"] += 1
                continue
            if f.flip and rng.random() < f.flip:
                self.injected["flip"] += 1
                byte ^= 1 << rng.randrange(8)
            data.append(byte)
        if f.damage and len(data) > 8:
            f.damage -= 1
            i = rng.randrange(len(data) - 1)
            self.injected[f.damage_kind] += 1
            if f.damage_kind == "drop":
                del data[i]
            else:
                data[i] ^= 1 << rng.randrange(8)
        if f.baud:
            time.sleep(len(data) * 10 / f.baud)
        with contextlib.suppress(OSError):
            os.write(out_fd, bytes(data))


class PowerLoss(BaseException):
    """Raised at a crash point: the unit stops dead (no cleanup code may run)."""


class Unit:
    """A unit listener in a thread on a pty slave; ``crash_at`` simulates a power loss."""

    def __init__(self, state_dir: Path, port: str) -> None:
        self.state_dir = state_dir
        self.port = port
        self.image: Path | None = None  # the disk after the power loss
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Unit:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with contextlib.suppress(PowerLoss):
            listen(
                UnitStore(self.state_dir),
                lambda: PySerialLink(self.port, BAUD),
                stop=self._stop,
                linger=1e9,
                poll=0.02,
            )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def dead(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()


@contextlib.contextmanager
def crash_point(
    monkeypatch: pytest.MonkeyPatch, unit: Unit, where: str, image: Path
) -> Iterator[None]:
    """Arm a power loss in ``unit``'s commit of the provisioned state.

    What this proves: that a unit rebooting on the state directory as it stood at each crash
    point recovers (clean "unprovisioned" or "provisioned", and provisioning completes). It
    copies the directory's *contents* at that point, so it cannot notice a missing fsync; that
    the commit really fsyncs each file and directory before and after each rename is proved on
    the real system calls in ``test_durability.py``.
    ``write``: in the middle of writing the files (after the first one);
    ``before-rename``: everything written and fsynced, the directory not yet renamed;
    ``after-rename``: renamed, the state directory not yet fsynced.
    """
    real_write, real_fsync = unit_module._write, unit_module.fsync_dir

    def die() -> None:
        shutil.copytree(unit.state_dir, image, symlinks=True)
        unit.image = image
        raise PowerLoss

    def write(path: Path, data: bytes, mode: int) -> None:
        real_write(path, data, mode)
        if where == "write" and path.parent.name.startswith(".tmp-provisioned"):
            die()

    def fsync_dir(path: Path) -> None:
        if where == "before-rename" and path.name.startswith(".tmp-provisioned"):
            real_fsync(path)
            die()
        real_fsync(path)
        if where == "after-rename" and path == unit.state_dir and (path / "provisioned").exists():
            die()

    monkeypatch.setattr(unit_module, "_write", write)
    monkeypatch.setattr(unit_module, "fsync_dir", fsync_dir)
    yield
    monkeypatch.setattr(unit_module, "_write", real_write)
    monkeypatch.setattr(unit_module, "fsync_dir", real_fsync)


@dataclass
class Rig:
    station_dir: StationPaths
    a: Pty
    b: Pty
    proxy: FaultProxy
    tmp: Path
    units: list[Unit] = field(default_factory=list)

    def unit(self, state_dir: Path | None = None) -> Unit:
        u = Unit(state_dir or self.tmp / f"unit{len(self.units)}", self.b.path).start()
        self.units.append(u)
        return u

    def provision(self, timeout: float = 0.3, attempts: int = 8, **kwargs: str) -> ProvisionResult:
        with PySerialLink(self.a.path, BAUD) as link:
            station = Station(self.station_dir, Channel(link), timeout=timeout, attempts=attempts)
            return station.provision(**kwargs)


@pytest.fixture
def station_paths(tmp_path: Path) -> StationPaths:
    return init_station(tmp_path / "station")


@pytest.fixture
def rig(station_paths: StationPaths, tmp_path: Path) -> Iterator[Rig]:
    a, b = Pty(), Pty()
    with FaultProxy(a, b, seed=1) as proxy:
        r = Rig(station_paths, a, b, proxy, tmp_path)
        yield r
        for u in r.units:
            u.stop()
    a.close()
    b.close()


# --- verification --------------------------------------------------------------------------------


def verify_provisioned(state_dir: Path, station: StationPaths) -> str:
    """The unit holds a complete, consistent provisioned state that the station trusts."""
    store = UnitStore(state_dir)
    assert store.is_provisioned()
    unit = store.load_provisioned()
    ca = pki.load_cert_pem((station.ca_dir / "ca.crt").read_bytes())
    cert = pki.load_cert_pem((state_dir / "provisioned" / "tls.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert pki.common_name(cert) == unit.device == unit.keys.identity.kid
    assert cert.public_key() == unit.keys.tls_key.public_key()
    assert unit.bundle.ca_pem == pki.cert_pem(ca)
    for path in (state_dir / "provisioned").iterdir():
        if path.suffix in {".key", ".cbor"}:
            assert path.stat().st_mode & 0o077 == 0, path
    sig = unit.keys.identity.signing_key.sign(unit_module.proof_message(unit.bundle_bytes))
    assert verify_proof(unit.keys.ed25519, unit.bundle_bytes, sig.signature)
    devices = json.loads(station.devices.read_text())["devices"]
    entry = devices[unit.device]
    assert base64.b64decode(entry["ed25519"]) == unit.keys.ed25519
    assert base64.b64decode(entry["x25519"]) == unit.keys.x25519
    peer = load_peers(station.peers).require(unit.device)  # what `camveil listen` trusts
    assert bytes(peer.verify_key) == unit.keys.ed25519
    assert bytes(peer.encryption_key) == unit.keys.x25519
    agent_view = UnitState.load(state_dir)  # what the daemon loads
    assert agent_view.device_id == unit.device
    assert agent_view.backend.kid == "backend"
    assert bytes(agent_view.backend.encryption_key) == bytes(
        load_identity(station.backend_key).encryption_key.public_key
    )
    with Inventory(station.inventory) as inventory:
        record = inventory.by_device(unit.device)
        assert record is not None
        assert record.state == "provisioned"
        assert record.bundle == unit.bundle_bytes
    return unit.device


def assert_clean(state_dir: Path) -> str:
    """Either fully provisioned (loadable, consistent) or not provisioned at all: never half."""
    store = UnitStore(state_dir)
    store.recover()
    assert not list(state_dir.glob(".tmp-*"))
    if not store.is_provisioned():
        return "unprovisioned"
    unit = store.load_provisioned()
    cert = pki.load_cert_pem(unit.bundle.cert_pem)
    cert.verify_directly_issued_by(pki.load_cert_pem(unit.bundle.ca_pem))
    assert cert.public_key() == unit.keys.tls_key.public_key()
    assert unit.keys.identity.kid == unit.device
    return "provisioned"


# --- tests ---------------------------------------------------------------------------------------


def test_happy_path_at_115200_baud(rig: Rig) -> None:
    rig.proxy.faults.baud = BAUD  # the proxy delivers no faster than a real 115200 line
    state = rig.tmp / "unit"
    rig.unit(state)
    start = time.monotonic()
    result = rig.provision(timeout=2.0, attempts=3, site="lab")
    elapsed = time.monotonic() - start
    assert elapsed < 5.0
    device = verify_provisioned(state, rig.station_dir)
    assert result.device == device
    traffic = len(rig.proxy.captured)
    print(f"\nprovisioned over pty at {BAUD} baud in {elapsed:.2f} s ({traffic} bytes on the wire)")
    assert rig.proxy.seen[S2U] == ["hello", "csr", "bundle"]
    assert rig.proxy.seen[U2S] == ["hello.ok", "csr.ok", "bundle.ok"]


def test_provisioned_unit_refuses_a_new_bundle_until_factory_reset(rig: Rig) -> None:
    state = rig.tmp / "unit"
    first = rig.unit(state)
    rig.provision()
    device = verify_provisioned(state, rig.station_dir)
    # same station again: confirmed, not re-provisioned
    assert rig.provision().outcome == "confirmed"
    # another station (another CA) is refused
    other = init_station(rig.tmp / "other-station")
    with PySerialLink(rig.a.path, BAUD) as link, pytest.raises(ProvisioningError, match="factory"):
        Station(other, Channel(link), timeout=0.3, attempts=3).provision()
    first.stop()
    from camveil.cli import factory_reset

    assert factory_reset.run(_ns(state=state, yes=False)) == 2
    assert UnitStore(state).is_provisioned()
    assert factory_reset.run(_ns(state=state, yes=True)) == 0
    assert not state.joinpath("provisioned").exists()
    assert not state.joinpath("pending").exists()
    rig.unit(state)
    with PySerialLink(rig.a.path, BAUD) as link:
        result = Station(other, Channel(link), timeout=0.3, attempts=3).provision()
    assert result.device != device  # a factory reset gives the unit a new identity
    verify_provisioned(state, other)


def _ns(**kwargs: object) -> argparse.Namespace:
    return argparse.Namespace(**kwargs)


def test_unit_refuses_a_forged_bundle(rig: Rig) -> None:
    state = rig.tmp / "unit"
    rig.unit(state)
    with PySerialLink(rig.a.path, BAUD) as link:
        channel = Channel(link)
        channel.request("hello", {"proto": 1}, timeout=1, attempts=2)
        ca = pki.make_ca()
        forged = pki.make_device_cert(ca, "cv-forged")  # a cert for a key that is not the unit's
        bundle = unit_module.Bundle(
            "cv-forged", pki.cert_pem(forged.cert), pki.cert_pem(ca.cert), "mqtts://x",
            b"\x01" * 32, b"\x02" * 32, {"name": "x"}, 0,
        ).encode()  # fmt: skip
        with pytest.raises(RefusedError, match="not for this unit's TLS key"):
            channel.request("bundle", {"bundle": bundle}, timeout=1, attempts=2)
        with pytest.raises(RefusedError) as info:
            channel.request("bundle", {"bundle": b"\xa0"}, timeout=1, attempts=2)
        assert info.value.code == "bad-request"
    assert not UnitStore(state).is_provisioned()


def test_cable_cut_mid_transfer_is_retried(rig: Rig) -> None:
    state = rig.tmp / "unit"
    rig.unit(state)
    rig.proxy.faults.drop_types = {S2U: {"bundle"}}  # the cable goes as the bundle is sent

    def reconnect() -> None:
        while not rig.proxy.saw(S2U, "bundle"):
            time.sleep(0.01)
        rig.proxy.faults.cut = True
        rig.proxy.faults.drop_types = {}
        time.sleep(0.5)
        rig.proxy.faults.cut = False

    threading.Thread(target=reconnect, daemon=True).start()
    result = rig.provision(timeout=0.2, attempts=10)
    assert result.retries >= 2
    verify_provisioned(state, rig.station_dir)


def test_long_cable_cut_fails_cleanly_and_rerun_resumes(rig: Rig) -> None:
    state = rig.tmp / "unit"
    rig.unit(state)
    rig.proxy.faults.drop_types = {U2S: {"bundle.ok"}}  # the unit stores, the answer is lost
    with pytest.raises(LinkTimeoutError, match="provision-listen"):
        rig.provision(timeout=0.1, attempts=3)
    assert assert_clean(state) == "provisioned"
    with Inventory(rig.station_dir.inventory) as inventory:
        assert [u.state for u in inventory.units()] == ["pending"]
    rig.proxy.faults.drop_types = {}
    assert rig.provision().outcome == "confirmed"
    verify_provisioned(state, rig.station_dir)


@pytest.mark.parametrize(
    "faults",
    [
        Faults(flip=0.0003, damage=4),
        Faults(drop=0.0003, damage=4, damage_kind="drop"),
        Faults(garbage=0.5),
        Faults(flip=0.0003, drop=0.0003, garbage=0.3, damage=3),
    ],
    ids=["flipped-bytes", "dropped-bytes", "garbage", "all"],
)
def test_corruption_is_survived(rig: Rig, faults: Faults) -> None:
    state = rig.tmp / "unit"
    rig.unit(state)
    rig.proxy.faults = faults
    result = rig.provision(timeout=0.15, attempts=30)
    verify_provisioned(state, rig.station_dir)
    assert sum(rig.proxy.injected.values()) >= 3
    if faults.damage:
        assert result.retries >= 1


def test_echoing_tty_on_both_ends(rig: Rig) -> None:
    """Each end also reads its own frames back (echo on): requests and replies are told apart."""
    state = rig.tmp / "unit"
    unit = rig.unit(state)
    rig.proxy.faults.echo = True
    rig.provision(timeout=0.5, attempts=3)
    verify_provisioned(state, rig.station_dir)
    assert not unit.dead


def test_rerun_with_other_settings_rebuilds_the_pending_bundle(rig: Rig) -> None:
    state = rig.tmp / "unit"
    rig.unit(state)
    rig.proxy.faults.drop_types = {S2U: {"bundle"}}
    with pytest.raises(LinkTimeoutError):
        rig.provision(timeout=0.1, attempts=2, site="old")
    rig.proxy.faults.drop_types = {}
    result = rig.provision(site="new", device_id="lab-cam-1")
    assert result.device == verify_provisioned(state, rig.station_dir) == "lab-cam-1"
    assert UnitStore(state).load_provisioned().bundle.site == {"name": "new"}
    with Inventory(rig.station_dir.inventory) as inventory:
        assert [(u.device, u.state) for u in inventory.units()] == [("lab-cam-1", "provisioned")]


def test_damaged_pending_keys_are_replaced(rig: Rig) -> None:
    state = rig.tmp / "unit"
    pending = UnitStore(state).pending_keys()
    (state / "pending" / "tls.key").write_bytes(b"not a key")
    rig.unit(state)
    rig.provision()
    device = verify_provisioned(state, rig.station_dir)
    assert UnitStore(state).load_provisioned().keys.ed25519 != pending.ed25519
    assert device


def test_listener_reopens_a_failing_port(rig: Rig) -> None:
    """The gadget port is absent at first (USB host not there yet): the listener keeps trying."""
    state = rig.tmp / "unit"
    opened: list[str] = []

    def open_link() -> PySerialLink:
        path = rig.b.path if len(opened) >= 2 else str(rig.tmp / "no-such-tty")
        opened.append(path)
        return PySerialLink(path, BAUD)

    stop = threading.Event()
    thread = threading.Thread(
        target=listen,
        args=(UnitStore(state), open_link),
        kwargs={"stop": stop, "linger": 0.0, "reopen_delay": 0.05, "poll": 0.02},
    )
    thread.start()
    try:
        rig.provision(timeout=0.3, attempts=10)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()  # linger 0: the listener returned once provisioned
    assert opened[:2] == [str(rig.tmp / "no-such-tty")] * 2
    verify_provisioned(state, rig.station_dir)


def test_garbage_before_and_between_frames(rig: Rig) -> None:
    state = rig.tmp / "unit"
    rig.unit(state)
    noise = bytes(random.Random(3).randrange(256) for _ in range(3000))
    os.write(rig.a.master, noise)  # line noise towards the station before it starts
    os.write(rig.b.master, noise)  # ... and towards the unit
    rig.proxy.faults.garbage = 1.0  # and garbage before every frame
    rig.provision(timeout=0.3, attempts=10)
    verify_provisioned(state, rig.station_dir)


_STATION_MAIN = (
    "import argparse, sys; from camveil.cli import provision as m; "
    "p = argparse.ArgumentParser(); m.add_arguments(p); sys.exit(m.run(p.parse_args()))"
)


@pytest.mark.parametrize("blocked", [(S2U, "bundle"), (U2S, "bundle.ok")])
def test_station_killed_mid_run_then_restarted(rig: Rig, blocked: tuple[str, str]) -> None:
    state = rig.tmp / "unit"
    rig.unit(state)
    direction, t = blocked
    rig.proxy.faults.drop_types = {direction: {t}}
    proc = subprocess.Popen(
        [sys.executable, "-c", _STATION_MAIN, "--port", rig.a.path,
         "--station", str(rig.station_dir.root), "--timeout", "0.2", "--attempts", "100"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not rig.proxy.saw(direction, t):
            assert time.monotonic() < deadline, "the station never got to the bundle"
            assert proc.poll() is None
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    expected = "provisioned" if direction == U2S else "unprovisioned"
    assert assert_clean(state) == expected
    rig.proxy.faults.drop_types = {}
    result = rig.provision()
    assert result.outcome == ("confirmed" if direction == U2S else "provisioned")
    verify_provisioned(state, rig.station_dir)


@pytest.mark.parametrize("where", ["write", "before-rename", "after-rename"])
def test_unit_power_loss_during_commit(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    state = rig.tmp / "unit"
    unit = rig.unit(state)
    with crash_point(monkeypatch, unit, where, rig.tmp / "disk"), pytest.raises(LinkTimeoutError):
        rig.provision(timeout=0.2, attempts=3)
    assert unit.dead and unit.image is not None
    outcome = assert_clean(unit.image)  # what the disk holds after the power loss
    assert outcome == ("provisioned" if where == "after-rename" else "unprovisioned")
    rig.unit(unit.image)  # reboot on what the disk held
    rig.provision()
    verify_provisioned(unit.image, rig.station_dir)


# --- soak ----------------------------------------------------------------------------------------


def _random_faults(rng: random.Random) -> tuple[Faults, str | None]:
    faults = Faults(
        flip=rng.choice([0.0, 0.0, 0.0003, 0.002]),
        drop=rng.choice([0.0, 0.0, 0.0003, 0.002]),
        garbage=rng.choice([0.0, 0.2, 0.8]),
        damage=rng.choice([0, 0, 1, 3]),
        damage_kind=rng.choice(["flip", "drop"]),
    )
    if rng.random() < 0.3:
        direction = rng.choice([S2U, U2S])
        types = {S2U: ["hello", "csr", "bundle"], U2S: ["hello.ok", "csr.ok", "bundle.ok"]}
        faults.drop_types = {direction: {rng.choice(types[direction])}}
    if rng.random() < 0.1:
        faults.cut = True
    crash = rng.choice([None] * 7 + ["write", "before-rename", "after-rename"])
    return faults, crash


@pytest.mark.slow
def test_soak_100_runs_with_random_faults(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(20261126)
    rig.proxy.rng = random.Random(7)
    outcomes: dict[str, int] = {}
    start = time.monotonic()
    for run in range(100):
        faults, crash = _random_faults(rng)
        state = rig.tmp / f"soak{run}"
        unit = rig.unit(state)
        rig.proxy.faults = faults
        with contextlib.ExitStack() as stack:
            if crash:
                stack.enter_context(crash_point(monkeypatch, unit, crash, rig.tmp / f"disk{run}"))
            try:
                rig.provision(timeout=0.08, attempts=3)
                first = "ok"
            except ProvisioningError:
                first = "failed"
        rig.proxy.faults = Faults()
        unit.stop()
        if unit.image is not None:
            state = unit.image  # the unit lost power: it reboots on what its disk held
            first += "+power-loss"
        after = assert_clean(state)  # never half-provisioned
        outcomes[f"{first}/{after}"] = outcomes.get(f"{first}/{after}", 0) + 1
        unit = rig.unit(state)
        if first == "ok":
            verify_provisioned(state, rig.station_dir)
        else:  # a clean, retryable state: a fault-free retry completes it
            rig.provision(timeout=0.3, attempts=5)
            verify_provisioned(state, rig.station_dir)
        unit.stop()
    elapsed = time.monotonic() - start
    with capsys.disabled():
        print(f"\nsoak: 100 runs in {elapsed:.1f} s: {dict(sorted(outcomes.items()))}")
    assert elapsed < 60


# --- no private key material anywhere ------------------------------------------------------------


def _key_forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), base64.b64encode(secret), base64.b64encode(secret)[:40]]


def test_no_private_key_material_on_the_wire_in_the_station_or_logs(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    units = [rig.tmp / "u1", rig.tmp / "u2"]
    rig.proxy.faults = Faults(flip=0.0003, garbage=0.3)
    for state in units:
        u = rig.unit(state)
        rig.provision(timeout=0.15, attempts=30)
        u.stop()
    secrets_: list[bytes] = []
    for state in units:
        keys = UnitStore(state).load_provisioned().keys
        tls = keys.tls_key.private_numbers().private_value.to_bytes(32, "big")
        tls_der = keys.tls_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        secrets_ += [bytes(keys.identity.signing_key), bytes(keys.identity.encryption_key), tls]
        secrets_.append(tls_der[-40:])
    wire = bytes(rig.proxy.captured)
    # the wire carries COBS-stuffed frames: scan both the raw stream and the unstuffed frames
    unstuffed = b"".join(cobs.decode(chunk) for chunk in wire.split(b"\x00") if _is_cobs(chunk))
    station_files = b"".join(p.read_bytes() for p in rig.station_dir.root.rglob("*") if p.is_file())
    logs = caplog.text.encode()
    for haystack in (wire, unstuffed, station_files, logs):
        for secret in secrets_:
            for form in _key_forms(secret):
                assert form not in haystack
    assert b"PRIVATE KEY" not in wire + unstuffed + logs
    # the station's own private keys stay in their key files
    allowed = {"ca.key", "operator.key", "backend.key", "server.key"}
    for path in rig.station_dir.root.rglob("*"):
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes():
            assert path.name in allowed or path.parent.name == "clients", path
            assert path.stat().st_mode & 0o077 == 0, path
    for name in ("operator.key", "backend.key"):
        identity = load_identity(rig.station_dir.root / name)
        for secret in (bytes(identity.signing_key), bytes(identity.encryption_key)):
            for form in _key_forms(secret):
                assert form not in wire + unstuffed + logs
                assert form not in rig.station_dir.devices.read_bytes()


def _is_cobs(chunk: bytes) -> bool:
    try:
        cobs.decode(chunk)
    except cobs.CobsDecodeError:
        return False
    return bool(chunk)


def test_cli_end_to_end_over_pty(rig: Rig, tmp_path: Path) -> None:
    """`camveil provision-listen` and `camveil provision` as processes, as an operator runs them."""
    state = tmp_path / "cli-unit"
    main = (
        "import argparse, sys, importlib; m = importlib.import_module(sys.argv[1]); "
        "p = argparse.ArgumentParser(); m.add_arguments(p); "
        "sys.exit(m.run(p.parse_args(sys.argv[2:])))"
    )
    unit = subprocess.Popen(
        [sys.executable, "-c", main, "camveil.cli.provision_listen", "--port", rig.b.path,
         "--state", str(state), "--linger", "0.5"],
    )  # fmt: skip
    try:
        out = subprocess.run(
            [sys.executable, "-c", main, "camveil.cli.provision", "--port", rig.a.path,
             "--station", str(rig.station_dir.root), "--site", "cli"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert "unit provisioned cv-" in out.stdout
        assert unit.wait(timeout=10) == 0  # the listener exits after --linger
    finally:
        if unit.poll() is None:
            unit.kill()
            unit.wait()
    verify_provisioned(state, rig.station_dir)


COMMANDS = {  # the lines for agent/__main__.py
    "station": ("camveil.cli.station", "create a provisioning station or list its units"),
    "provision": ("camveil.cli.provision", "provision a unit over USB serial (station side)"),
    "provision-listen": ("camveil.cli.provision_listen", "answer the station (unit side)"),
    "factory-reset": ("camveil.cli.factory_reset", "delete the unit's keys and identity"),
}


def test_subcommands_plug_into_the_camveil_cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import camveil.__main__ as cli

    for name, entry in COMMANDS.items():
        monkeypatch.setitem(cli.COMMANDS, name, entry)
    assert cli.main(["station", "init", str(tmp_path / "st")]) == 0
    assert "station ready" in capsys.readouterr().out
    assert cli.main(["station", "init", str(tmp_path / "st")]) == 2  # refuses to overwrite a CA
    assert "already a station directory" in capsys.readouterr().err
    assert cli.main(["station", "list", str(tmp_path / "st")]) == 0
    assert cli.main(["factory-reset", "--state", str(tmp_path / "u")]) == 2
    assert cli.main(["factory-reset", "--state", str(tmp_path / "u"), "--yes"]) == 0
    capsys.readouterr()
    assert cli.main(["provision", "--port", str(tmp_path / "no-tty"), "--station", "x"]) == 2
    assert "x: no such folder" in capsys.readouterr().err  # the station is checked first
    st = str(tmp_path / "st")
    assert cli.main(["provision", "--port", str(tmp_path / "no-tty"), "--station", st]) == 2
    assert "cannot open serial port" in capsys.readouterr().err


def test_station_files_are_private_but_for_the_broker_folder(rig: Rig) -> None:
    """Local users may reach the broker's folder (mosquitto runs as its own user) and nothing
    else of the station: devices.json, station.json, the inventory, keys and certificates."""
    rig.unit(rig.tmp / "unit")
    rig.provision(timeout=2.0, attempts=3, site="lab")  # rewrites devices.json/.cbor, the ACL
    root = rig.station_dir.root
    assert root.stat().st_mode & 0o777 == 0o711
    broker_dir = rig.station_dir.broker_dir
    checked = []
    for path in sorted(root.rglob("*")):
        if path == broker_dir or broker_dir in path.parents:
            continue
        # readable by others only if its own mode and every folder between it and root allow it
        folders = [p for p in path.parents if root in p.parents]
        hidden = any(p.stat().st_mode & 0o011 == 0 for p in folders)
        mode = path.stat().st_mode & 0o777
        assert hidden or mode & 0o077 == 0, f"{path.relative_to(root)} is {oct(mode)}"
        checked.append(path.name)
    assert {"devices.json", "devices.cbor", "station.json", "inventory.sqlite"} <= set(checked)
    assert {"operator.key", "backend.key", "ca.key"} <= set(checked)
    # the broker can still get to its configuration
    assert broker_dir.stat().st_mode & 0o005 == 0o005 or broker_dir.owner() != root.owner()
    assert (broker_dir / "mosquitto.conf").is_file()
