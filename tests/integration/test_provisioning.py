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
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from serial_rig import (
    BAUD,
    S2U,
    U2S,
    FaultProxy,
    Faults,
    Pty,
    Rig,
    assert_clean,
    crash_point,
    verify_provisioned,
)

from contract.envelope.keys import load_identity
from contract.errors import LinkTimeoutError, ProvisioningError, RefusedError
from contract.statedir import Bundle
from hw.serial_link import PySerialLink
from provisioning import cobs, pki
from provisioning.inventory import Inventory
from provisioning.serial_proto import (
    Channel,
)
from provisioning.station import Station, StationPaths, init_station
from provisioning.unit import UnitStore, listen


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
        bundle = Bundle(
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
