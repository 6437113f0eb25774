"""Acks of commands that do not open are rate-limited; acks of authenticated ones never are."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.commands import AckBudget, Command, CommandProcessor
from contract.commands import Ack, seal_command
from contract.envelope.keys import Identity, PeerKeys, PublicIdentity
from contract.topics import command_topic
from hw.clock import FakeClock

DEVICE = "unit-ack"


def _processor(
    tmp_path: Path, budget: AckBudget
) -> tuple[CommandProcessor, list[Ack], Identity, PublicIdentity]:
    device = Identity.generate(DEVICE)
    operator = Identity.generate("operator")
    sent: list[Ack] = []

    def handler(command: Command) -> str:
        return "ok"

    processor = CommandProcessor(
        device=device,
        operators=PeerKeys([operator.public()]),
        replay_path=tmp_path / "cmd-replay.cbor",
        handlers={"snapshot": handler},
        send_ack=sent.append,
        ack_budget=budget,
    )
    return processor, sent, operator, device.public()


def test_budget_bursts_then_refills() -> None:
    clock = FakeClock(start=1000.0)
    budget = AckBudget(burst=3, rate=0.5, clock=clock.monotonic)
    assert [budget.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(1.0)  # half a token
    assert not budget.take()
    clock.advance(1.0)  # one token
    assert budget.take() and not budget.take()
    clock.advance(100.0)  # refill is capped at the burst
    assert [budget.take() for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize(("burst", "rate"), [(0, 1.0), (5, 0.0)])
def test_budget_rejects_nonsense(burst: int, rate: float) -> None:
    with pytest.raises(ValueError, match="burst >= 1 and rate > 0"):
        AckBudget(burst=burst, rate=rate)


def test_forged_flood_is_counted_but_acks_are_capped(tmp_path: Path) -> None:
    clock = FakeClock(start=1000.0)
    budget = AckBudget(burst=5, rate=1.0, clock=clock.monotonic)
    processor, sent, operator, device = _processor(tmp_path, budget)
    forger = Identity.generate("operator")  # the right kid, the wrong key

    def send(name: str, command_id: str, signer: Identity, seq: int) -> Ack:
        envelope = seal_command(
            name,
            command_id=command_id,
            device=device,
            operator=signer,
            seq=seq,
            expires_at=int(time.time()) + 60,
        )
        return processor.handle(command_topic(DEVICE), envelope.data)

    for seq in range(1, 101):
        assert not send("snapshot", f"f{seq}", forger, seq).accepted
    processor.handle(command_topic(DEVICE), b"\xa0garbage")
    assert sum(processor.rejected.values()) == 101  # every rejection is counted
    assert len(sent) == 5 and processor.acks_suppressed == 96  # only the burst was acked
    assert all(not a.accepted and a.command_id is None for a in sent)

    # a genuine command during the flood is still answered
    ack = send("snapshot", "real-1", operator, 1)
    assert ack.accepted and sent[-1] == ack and processor.accepted == 1

    # an authenticated command that fails validation is answered too
    ack = send("format_disk", "real-2", operator, 2)
    assert not ack.accepted and ack.reason.startswith("unknown_command") and sent[-1] == ack

    clock.advance(2.0)  # two tokens later, forged commands are acked again
    processor.handle(command_topic(DEVICE), b"junk")
    processor.handle(command_topic(DEVICE), b"junk")
    processor.handle(command_topic(DEVICE), b"junk")
    assert len(sent) == 9 and processor.acks_suppressed == 97


def test_acks_are_sealed_to_the_operator_never_the_backend() -> None:
    """The ack of a command goes to its signer's X25519 form of the Ed25519 key; a command that
    did not open, or names a kid the unit does not trust, is answered to the first operator."""
    from agent.commands import ack_recipient
    from contract.envelope.keys import ack_reader

    alice, bob = Identity.generate("operator-a"), Identity.generate("operator-b")
    operators = PeerKeys([alice.public(), bob.public()])
    to_bob = ack_recipient(Ack("c1", 1, True, "ok", "operator-b"), operators)
    assert to_bob.kid == "operator-b"
    assert bytes(to_bob.encryption_key) == bytes(ack_reader(bob).encryption_key.public_key)
    assert bytes(to_bob.encryption_key) != bytes(bob.encryption_key.public_key)
    for unknown in (None, "operator-x"):
        assert ack_recipient(Ack(None, None, False, "malformed", unknown), operators).kid == (
            "operator-a"
        )
    with pytest.raises(ValueError, match="no operator"):
        ack_recipient(Ack(None, None, False, "malformed"), PeerKeys())
