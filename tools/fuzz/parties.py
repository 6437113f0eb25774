"""The parties of a fuzz run and their genuine messages: the keys of the device, backend and
operator (and impostors), the three targets under test (:class:`Parties`), and the originals
that mutations start from (:func:`make_event`, :func:`make_command`, :func:`make_receipt`).

Targets, unchanged production code:

- the unit's command path, :meth:`agent.commands.CommandProcessor.handle` (open with the
  operator keys, persisted replay window, command checks, handler dispatch);
- the backend's event path, :meth:`dashboard.listener.Opener.open` (open with the device keys,
  replay window, (device, seq) de-duplication);
- the unit's receipt path, :meth:`agent.receipts.ReceiptProcessor.handle` (open with the
  backend's key, exact replay memory, range checks) in front of a real outbox whose published
  envelopes a receipt would delete.

Originals: events built by :class:`~agent.events.EventBuilder` and sealed by the device key,
commands sealed by the operator key (:func:`~contract.commands.seal_command`), receipts sealed by
the backend's key for an event published from the unit's outbox.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agent.commands import Command, CommandProcessor
from agent.events import EventBuilder, seal_event, to_map
from agent.outbox import Outbox
from agent.receipts import ReceiptProcessor
from agent.sequence import CountingSequence
from agent.tamper import TamperKind
from contract.commands import Ack, seal_command
from contract.envelope.keys import Identity, PeerKeys
from contract.envelope.seal import SealedEnvelope, seal
from contract.receipts import RECEIPT_LIFETIME_S, ReceiptCounter, seal_receipt
from contract.topics import receipt_topic
from dashboard.listener import MemoryDedupe, Opener

DEVICE: Final = "cv-fuzz-0001"
OTHER_DEVICE: Final = "cv-fuzz-0002"
COMMAND_NAMES: Final = ("snapshot", "restart_pipeline")


@dataclass(frozen=True)
class Case:
    """One input: which opener, on which topic, what bytes, made how."""

    target: str  # "event" | "command" | "receipt"
    kind: str
    topic: str
    data: bytes


class Parties:
    """Keys of the device, backend and operator, and the two targets under test."""

    def __init__(self, state_dir: Path) -> None:
        self.device = Identity.generate(DEVICE)
        self.other_device = Identity.generate(OTHER_DEVICE)
        self.backend = Identity.generate("backend")
        self.operator = Identity.generate("operator")
        self.impostor_operator = Identity.generate("operator")  # right kid, wrong key
        self.impostor_device = Identity.generate(DEVICE)
        self.stranger = Identity.generate("intruder")
        self.wrong_backend = Identity.generate("backend")  # right kid, wrong X25519 key
        self.device_seqs = CountingSequence()
        self.operator_seq = 0
        self.builder = EventBuilder(DEVICE, "fuzzboot", self.device_seqs)
        self.handled: list[Command] = []
        self.processor = CommandProcessor(
            device=self.device,
            operators=PeerKeys([self.operator.public()]),
            replay_path=state_dir / "cmd-replay.cbor",
            handlers={name: self._handler for name in COMMAND_NAMES},
            send_ack=self._ack,
        )
        self.opener = Opener(self.backend, PeerKeys([self.device.public()]), MemoryDedupe())
        self.outbox = Outbox(state_dir / "outbox.db", signer=self.device.public())
        self.outbox.open()
        self.receipts = ReceiptProcessor(self.device, self.backend.public(), self.outbox)
        self.receipt_counter = ReceiptCounter()

    def _handler(self, command: Command) -> str:
        self.handled.append(command)
        return "ok"

    def _ack(self, ack: Ack) -> None:
        """Acks are not published here; rejections are counted by the processor."""

    def next_operator_seq(self) -> int:
        self.operator_seq += 1
        return self.operator_seq

    def feed(self, case: Case) -> bool:
        """True if ``case`` was accepted. Exceptions propagate: they are crashes."""
        if case.target == "receipt":
            before, depth = self.receipts.stats.accepted, self.outbox.stats().depth
            self.receipts.handle(case.topic, case.data)
            return self.receipts.stats.accepted != before or self.outbox.stats().depth != depth
        if case.target == "command":
            before = len(self.handled)
            ack = self.processor.handle(case.topic, case.data)
            return ack.accepted or len(self.handled) != before
        return self.opener.open(case.topic, case.data) is not None

    def rejections(self) -> dict[str, int]:
        # from the processor's counters: acks of forged commands are rate-limited
        out = {f"command.{k}": v for k, v in self.processor.rejected.items()}
        out.update({f"event.{k}": v for k, v in self.opener.stats.bad.items()})
        out.update({f"receipt.{k}": v for k, v in self.receipts.stats.rejected.items()})
        out["event.duplicate"] = self.opener.stats.duplicates
        return out


@dataclass(frozen=True)
class Original:
    target: str
    envelope: SealedEnvelope
    plaintext: dict[str, Any]
    exp: int | None


def make_event(p: Parties, rng: random.Random) -> Original:
    now = time.time()
    if rng.random() < 0.5:
        event: Any = p.builder.presence(now - 10, now, {"door": (rng.randint(0, 9), 0)})
    else:
        event = p.builder.tamper(rng.choice(list(TamperKind)), rng.random())
    env = seal_event(event, sender=p.device, recipient=p.backend.public())
    return Original("event", env, to_map(event), None)


def make_command(p: Parties, rng: random.Random) -> Original:
    exp = int(time.time()) + 600
    name = rng.choice(COMMAND_NAMES)
    cid = f"c-{p.operator_seq + 1}"
    env = seal_command(
        name,
        command_id=cid,
        device=p.device.public(),
        operator=p.operator,
        seq=p.next_operator_seq(),
        expires_at=exp,
    )
    return Original("command", env, {"id": cid, "cmd": name}, exp)


def make_receipt(p: Parties, rng: random.Random) -> Original:
    """An event stored in the unit's outbox and published (PUBACK seen), and the backend's
    genuine receipt for it: the control deletes it; no mutation may delete anything."""
    now = time.time()
    event = p.builder.presence(now - 10, now, {"door": (rng.randint(0, 9), 0)})
    item = p.outbox.enqueue(seal_event(event, sender=p.device, recipient=p.backend.public()))
    p.outbox.mark_in_flight(item, 1)
    p.outbox.ack(item)
    seq = event.header.seq
    exp = int(now) + RECEIPT_LIFETIME_S
    env = seal_receipt([(seq, seq)], backend=p.backend, device=p.device.public(),
                       seq=p.receipt_counter.next(), expires_at=exp)  # fmt: skip
    return Original("receipt", env, {"type": "receipt", "ranges": [[0, 2**62]]}, exp)


def sealed_receipt(p: Parties, signer: Identity, plaintext: dict[str, Any], device: str) -> Any:
    return seal(plaintext, sender=signer, recipient=(p.device if device == DEVICE
                else p.other_device).public(), topic=receipt_topic(device),
                seq=p.receipt_counter.next(), device=device,
                expires_at=int(time.time()) + 60)  # fmt: skip
