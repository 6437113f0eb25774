"""The provisioning rig: pty pairs, a fault-injecting proxy between station and unit, a unit
listener in a thread with power-loss crash points, and checks of the state a run leaves
(test_provisioning, test_provision_to_broker).

Topology: the station opens pty A's slave with pyserial, the unit opens pty B's slave with
pyserial, and :class:`FaultProxy` copies bytes between the two masters. The proxy sees whole
frames (it splits the stream at 0x00) so it can cut the cable, flip and drop bytes, add garbage,
and drop chosen message types in one direction; it records all traffic for the key scan.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import select
import shutil
import threading
import time
import tty
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.unitstate import UnitState
from contract.envelope.keys import load_identity, load_peers
from hw.serial_link import PySerialLink
from provisioning import pki, unit_store
from provisioning.inventory import Inventory
from provisioning.proof import proof_message, verify_proof
from provisioning.serial_proto import (
    Channel,
    FrameReader,
)
from provisioning.station import ProvisionResult, Station, StationPaths
from provisioning.unit import UnitStore, listen

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
    real_write, real_fsync = unit_store._write, unit_store.fsync_dir

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

    monkeypatch.setattr(unit_store, "_write", write)
    monkeypatch.setattr(unit_store, "fsync_dir", fsync_dir)
    yield
    monkeypatch.setattr(unit_store, "_write", real_write)
    monkeypatch.setattr(unit_store, "fsync_dir", real_fsync)


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
    sig = unit.keys.identity.signing_key.sign(proof_message(unit.bundle_bytes))
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
