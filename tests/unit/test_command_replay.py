"""The unit's command replay memory: exact (every accepted command until its expiry), so an
operator whose clock is behind is not locked out; bounded; persisted; fail-closed."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import cbor2
import pytest

from agent.commands import Command, CommandProcessor
from contract.commands import Ack, seal_command
from contract.envelope.keys import Identity, PeerKeys, write_private_file
from contract.envelope.replay import CommandReplayGuard
from contract.topics import command_topic
from hw.clock import FakeClock

DEVICE = "unit-replay"
NOW = 1_764_115_200.0


class Rig:
    def __init__(self, tmp_path: Path, max_commands: int = 4096) -> None:
        self.device = Identity.generate(DEVICE)
        self.operator = Identity.generate("operator")
        self.clock = FakeClock(epoch=NOW)
        self.path = tmp_path / "cmd-replay.cbor"
        self.max_commands = max_commands
        self.ran: list[str] = []
        self.processor = self.restart()

    def restart(self) -> CommandProcessor:
        def handler(command: Command) -> str:
            self.ran.append(command.id)
            return "ok"

        self.guard = CommandReplayGuard(self.max_commands, clock=self.clock.time)
        processor = CommandProcessor(
            device=self.device,
            operators=PeerKeys([self.operator.public()]),
            replay_path=self.path,
            handlers={"snapshot": handler},
            send_ack=lambda ack: None,
            replay_guard=self.guard,
            clock=self.clock.time,
        )
        processor.load()
        self.processor = processor
        return processor

    def command(self, command_id: str, operator_clock: float, lifetime: int = 300) -> bytes:
        """A command as `camveil cmd` makes it on a machine whose clock reads operator_clock."""
        return seal_command(
            "snapshot",
            command_id=command_id,
            device=self.device.public(),
            operator=self.operator,
            seq=int(operator_clock * 1000),
            expires_at=int(operator_clock) + lifetime,
        ).data

    def send(self, data: bytes) -> Ack:
        return self.processor.handle(command_topic(DEVICE), data)


def test_an_operator_5_s_behind_is_accepted_and_replays_are_not(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    first = rig.command("on-time", rig.clock.time())
    assert rig.send(first).accepted
    rig.clock.advance(1.0)
    behind = rig.command("behind-5s", rig.clock.time() - 5.0)  # 6 s below the last seq
    ack = rig.send(behind)
    assert ack.accepted, ack.reason
    for data in (first, behind):
        ack = rig.send(data)
        assert not ack.accepted and ack.reason == "replay"
    # across a restart: the memory is read back, replays still refused, skew still fine
    rig.restart()
    for data in (first, behind):
        assert rig.send(data).reason == "replay"
    rig.clock.advance(1.0)
    assert rig.send(rig.command("behind-again", rig.clock.time() - 5.0)).accepted
    assert rig.ran == ["on-time", "behind-5s", "behind-again"]


def test_forgotten_commands_stay_refused_when_the_clock_goes_back(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_commands=2)
    old = rig.command("old", rig.clock.time(), lifetime=60)
    assert rig.send(old).accepted
    rig.clock.advance(120)  # "old" has expired
    assert rig.send(rig.command("a", rig.clock.time())).accepted
    assert rig.send(rig.command("b", rig.clock.time() + 0.001)).accepted  # full: "old" forgotten
    assert len(rig.guard) == 2  # the bound held
    rig.clock.set_time(
        rig.clock.time() - 120
    )  # NTP steps the clock back: "old" looks unexpired again
    ack = rig.send(old)
    assert not ack.accepted and ack.reason == "replay"


def test_at_the_bound_new_commands_are_refused_until_some_expire(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_commands=3)
    for i in range(3):
        assert rig.send(rig.command(f"c{i}", rig.clock.time() + i / 1000, lifetime=60)).accepted
    late = rig.command("late", rig.clock.time() + 0.5, lifetime=600)
    ack = rig.send(late)
    assert not ack.accepted and ack.reason == "replay_memory_full"
    assert rig.processor.rejected["replay_memory_full"] == 1
    rig.clock.advance(61)  # the three expire: room again, and the same command now opens
    assert rig.send(late).accepted
    assert rig.ran == ["c0", "c1", "c2", "late"]


def test_persisted_memory_holds_only_unexpired_commands(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    assert rig.send(rig.command("short", rig.clock.time(), lifetime=10)).accepted
    rig.clock.advance(20)
    assert rig.send(rig.command("long", rig.clock.time(), lifetime=300)).accepted
    saved = cbor2.loads(rig.path.read_bytes())
    assert saved["v"] == 2 and [e[3] for e in saved["seen"]] == [int(rig.clock.time()) + 300]
    assert saved["floor"] == int(NOW) + 10
    assert os.stat(rig.path).st_mode & 0o077 == 0


def test_a_version_1_window_file_is_read_safely(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    window = {"v": 1, "window": 1024, "streams": [["operator", command_topic(DEVICE), 5, b"\x01"]]}
    write_private_file(rig.path, cbor2.dumps(window, canonical=True))
    mtime = int(rig.path.stat().st_mtime)
    rig.clock.set_time(mtime + 1)
    rig.restart()
    # anything the old window accepted expired by mtime + 24 h at the latest: refused until then
    assert rig.send(rig.command("short", rig.clock.time(), lifetime=300)).reason == "replay"
    assert rig.send(rig.command("long", rig.clock.time(), lifetime=24 * 3600)).accepted


def test_a_damaged_memory_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    from contract.errors import KeyFileError

    rig = Rig(tmp_path)
    write_private_file(rig.path, b"\xa1\x61v\x02")  # {"v": 2} without the rest
    with pytest.raises(KeyFileError, match="damaged"):
        rig.restart()


def test_a_4mib_command_is_refused_before_any_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit side of the pre-check: commands are capped at 64 KiB, and a hostile frame is
    refused by its first bytes (no CBOR walk, no decoder)."""
    rig = Rig(tmp_path)
    cose_module = importlib.import_module("contract.envelope.cose")
    calls: list[Any] = []
    monkeypatch.setattr(cose_module, "check_wellformed", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(cose_module.cbor2, "loads", lambda *a, **k: calls.append(a))
    n = 4 * 1024 * 1024
    hostile = b"\x9a" + n.to_bytes(4, "big") + bytes(n)
    ack = rig.send(hostile)
    assert not ack.accepted and ack.reason == "malformed" and ack.command_seq is None
    big = b"\xd2\x84\x41\xa0\xa0\x5a" + (70_000).to_bytes(4, "big") + bytes(70_000)
    big += b"\x58\x40" + bytes(64)
    assert rig.send(big).reason == "malformed"
    assert calls == []
