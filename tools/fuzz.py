"""`camveil fuzz`: mutated envelopes and commands against the real openers; count crashes and
acceptances.

Targets, unchanged production code:

- the unit's command path, :meth:`agent.commands.CommandProcessor.handle` (open with the
  operator keys, persisted replay window, command checks, handler dispatch);
- the backend's event path, :meth:`dashboard.listener.Opener.open` (open with the device keys,
  replay window, (device, seq) de-duplication);
- the unit's receipt path, :meth:`agent.receipts.ReceiptProcessor.handle` (open with the
  backend's key, exact replay memory, range checks) in front of a real outbox whose published
  envelopes a receipt would delete.

Inputs are made from genuine originals: events built by :class:`~agent.events.EventBuilder`
and sealed by the device key, commands sealed by the operator key
(:func:`~contract.commands.seal_command`).
Each round makes one original of each, feeds mutations of them, then the originals themselves
(the controls, which must be accepted: a mutation that had burnt the original's seq would show
here), then replays. Mutations (:data:`MUTATIONS`): truncations, bit flips, byte edits,
splices of two envelopes, random CBOR, envelopes re-signed with the right key around corrupt
inner parts (random or tampered ciphertext, ciphertext for another seq or recipient, plaintext
that disagrees with the binding, bad protected or unprotected headers, wrong tags), commands
that open but are not commands, expired commands and events, commands too far in the future,
wrong or unknown signer kids, another device's command, replays on the same and other topics.

A **crash** is any exception escaping a target (both turn every
:class:`~contract.errors.EnvelopeError` into a counted rejection, so anything else escaping is a
bug); an **acceptance** is a mutated input reaching a command handler, coming out of the
listener as a message, or being taken as a receipt (or deleting anything from the outbox).
Both must stay at zero.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import cbor2

from agent.commands import Command, CommandProcessor
from agent.events import EventBuilder, seal_event, to_map
from agent.outbox import Outbox
from agent.receipts import ReceiptProcessor
from agent.sequence import CountingSequence
from agent.tamper import TamperKind
from contract.commands import Ack, seal_command
from contract.envelope import cose
from contract.envelope.keys import Identity, PeerKeys
from contract.envelope.seal import SealedEnvelope, _encrypt, seal
from contract.envelope.wire import HDR_EXP, HDR_SEQ, external_aad, parse_sign1
from contract.receipts import RECEIPT_LIFETIME_S, ReceiptCounter, seal_receipt
from contract.topics import ack_topic, command_topic, event_topic, receipt_topic, status_topic
from dashboard.listener import MemoryDedupe, Opener

logger = logging.getLogger(__name__)

DEVICE: Final = "cv-fuzz-0001"
OTHER_DEVICE: Final = "cv-fuzz-0002"
COMMAND_NAMES: Final = ("snapshot", "restart_pipeline")
MUTATIONS_PER_ROUND: Final = 24
WRONG_EVENT_TOPICS: Final = (
    command_topic(DEVICE),
    ack_topic(DEVICE),
    status_topic(DEVICE),
    event_topic(DEVICE, "Bad"),
    event_topic("+", "x"),
    "camveil/v2/x/event/y",
    "",
)


@dataclass(frozen=True)
class Case:
    """One input: which opener, on which topic, what bytes, made how."""

    target: str  # "event" | "command" | "receipt"
    kind: str
    topic: str
    data: bytes


@dataclass
class FuzzReport:
    cases: int = 0
    crashes: int = 0
    acceptances: int = 0
    controls: int = 0
    controls_accepted: int = 0
    seed: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    """Why inputs were refused: command ack reasons and listener error classes."""
    crash_samples: list[str] = field(default_factory=list)
    accepted_samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.crashes == 0
            and self.acceptances == 0
            and self.controls_accepted == self.controls > 0
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


# --- the parties ----------------------------------------------------------------------------


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


def _sealed_receipt(p: Parties, signer: Identity, plaintext: dict[str, Any], device: str) -> Any:
    return seal(plaintext, sender=signer, recipient=(p.device if device == DEVICE
                else p.other_device).public(), topic=receipt_topic(device),
                seq=p.receipt_counter.next(), device=device,
                expires_at=int(time.time()) + 60)  # fmt: skip


# --- building blocks of mutations -------------------------------------------------------------


def _protected(kid: str, seq: int, exp: int | None) -> dict[int, Any]:
    header: dict[int, Any] = {
        cose.HDR_ALG: cose.ALG_EDDSA,
        cose.HDR_CONTENT_TYPE: cose.CONTENT_FORMAT_COSE_ENCRYPT,
        cose.HDR_KID: kid.encode(),
        HDR_SEQ: seq,
    }
    if exp is not None:
        header[HDR_EXP] = exp
    return header


def sign1(
    signer: Identity,
    protected: dict[int, Any] | bytes,
    payload: bytes,
    aad: bytes,
    *,
    unprotected: dict[int, Any] | None = None,
    tag: int | None = cose.TAG_COSE_SIGN1,
    extra: tuple[Any, ...] = (),
) -> bytes:
    """A COSE_Sign1 correctly signed by ``signer`` over whatever it is given."""
    pb = protected if isinstance(protected, bytes) else cose.dumps(protected)
    signature = signer.signing_key.sign(cose.sig_structure1(pb, aad, payload)).signature
    body = [pb, unprotected or {}, payload, signature, *extra]
    return cbor2.dumps(cbor2.CBORTag(tag, body) if tag is not None else body, canonical=True)


def random_cbor(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(9 if depth < 4 else 6)
    if choice == 0:
        return rng.randint(-(2**64) + 1, 2**64 - 1)
    if choice == 1:
        return rng.randbytes(rng.randrange(80))
    if choice == 2:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(20)))
    if choice == 3:
        return rng.choice([None, True, False, 1.5, float("nan"), -0.0])
    if choice == 4:
        return rng.randint(-30, 30)
    if choice == 5:
        return cbor2.CBORSimpleValue(rng.choice([0, 19, 23, 32, 255]))
    if choice == 6:
        return [random_cbor(rng, depth + 1) for _ in range(rng.randrange(6))]
    if choice == 7:
        return {
            rng.randint(-70000, 10): random_cbor(rng, depth + 1) for _ in range(rng.randrange(5))
        }
    return cbor2.CBORTag(rng.choice([18, 96, 98, 1, 24, 55799]), random_cbor(rng, depth + 1))


def _flip(data: bytes, rng: random.Random, bits: int) -> bytes:
    buf = bytearray(data)
    for _ in range(bits):
        i = rng.randrange(len(buf) * 8)
        buf[i // 8] ^= 1 << (i % 8)
    return bytes(buf)


# --- mutations: each returns (topic, bytes) from an original ----------------------------------

Mutator = Callable[["Fuzzer", Original], tuple[str, bytes]]


class Fuzzer:
    """Makes originals and their mutations, feeds them, keeps the score."""

    def __init__(self, parties: Parties, rng: random.Random) -> None:
        self.p = parties
        self.rng = rng
        self.pool: list[Original] = []

    def signer_of(self, o: Original) -> Identity:
        if o.target == "receipt":
            return self.p.backend
        return self.p.device if o.target == "event" else self.p.operator

    def recipient_of(self, o: Original) -> Identity:
        return self.p.backend if o.target == "event" else self.p.device

    def aad(self, o: Original, seq: int | None = None) -> bytes:
        env = o.envelope
        return external_aad(env.device, env.topic, env.seq if seq is None else seq)

    def resign(self, o: Original, payload: bytes, **kwargs: Any) -> tuple[str, bytes]:
        """The original's header and seq, signed by the right key, around ``payload``."""
        env = o.envelope
        header = _protected(env.sender_kid, env.seq, o.exp)
        return env.topic, sign1(self.signer_of(o), header, payload, self.aad(o), **kwargs)

    def encrypt(self, o: Original, plaintext: bytes, seq: int | None = None) -> bytes:
        return _encrypt(plaintext, self.aad(o, seq), self.recipient_of(o).public())

    def bound(self, o: Original) -> dict[str, Any]:
        env = o.envelope
        m = {**o.plaintext, "v": 1, "device": env.device, "topic": env.topic, "seq": env.seq}
        if o.exp is not None:
            m["exp"] = o.exp
        return m


def m_truncate(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    data = o.envelope.data
    return o.envelope.topic, data[: f.rng.randrange(len(data))]


def m_bitflip(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    return o.envelope.topic, _flip(o.envelope.data, f.rng, f.rng.choice([1, 1, 2, 3, 8]))


def m_bytes(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    buf = bytearray(o.envelope.data)
    for _ in range(f.rng.randint(1, 4)):
        i = f.rng.randrange(len(buf))
        op = f.rng.randrange(4)
        if op == 0:
            buf[i] = f.rng.randrange(256)
        elif op == 1:
            buf.insert(i, f.rng.randrange(256))
        elif op == 2 and len(buf) > 1:
            del buf[i]
        else:
            buf[i:i] = buf[i : i + f.rng.randint(1, 16)]
    return o.envelope.topic, bytes(buf)


def m_splice(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    other = f.rng.choice(f.pool or [o]).envelope.data
    a, b = o.envelope.data, other
    cut_a, cut_b = f.rng.randrange(len(a) + 1), f.rng.randrange(len(b) + 1)
    joined = a[:cut_a] + b[cut_b:] if f.rng.random() < 0.8 else a + b
    return o.envelope.topic, joined


def m_random_cbor(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    rng = f.rng
    if rng.random() < 0.5:
        value: Any = random_cbor(rng)
    else:  # the right shape, random contents
        value = cbor2.CBORTag(18, [random_cbor(rng) for _ in range(rng.choice([3, 4, 4, 5]))])
    try:
        data = cbor2.dumps(value)
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        data = rng.randbytes(rng.randrange(200))
    return o.envelope.topic, data


def m_random_bytes(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    rng = f.rng
    if rng.random() < 0.01:
        return o.envelope.topic, bytes([0xD2]) + bytes(4 * 1024 * 1024)  # over the size limit
    return o.envelope.topic, rng.randbytes(rng.randrange(300))


def m_resigned_garbage(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Right key, right header, inner COSE_Encrypt corrupt in one of many ways."""
    rng = f.rng
    inner = parse_sign1(o.envelope.data).payload
    variant = rng.randrange(6)
    if variant == 0:
        payload = rng.randbytes(rng.randrange(200))
    elif variant == 1:
        payload = _flip(inner, rng, rng.choice([1, 2, 5]))
    elif variant == 2:  # ciphertext made for another seq (external AAD differs)
        payload = f.encrypt(o, cose.dumps(f.bound(o)), seq=o.envelope.seq + rng.randint(1, 9))
    elif variant == 3:  # encrypted to the right kid but the wrong key
        aad = f.aad(o)
        wrong = f.p.wrong_backend if o.target == "event" else f.p.impostor_device
        payload = _encrypt(cose.dumps(f.bound(o)), aad, wrong.public())
    elif variant == 4:  # random CBOR inside a valid encryption
        try:
            plain = cbor2.dumps(random_cbor(rng))
        except (ValueError, TypeError, cbor2.CBOREncodeError):
            plain = b"\xff"
        payload = f.encrypt(o, plain)
    else:  # a well-encrypted plaintext that disagrees with the signed binding
        m = f.bound(o)
        key = rng.choice(["v", "device", "topic", "seq", "exp", "drop"])
        if key == "drop":
            m.pop(rng.choice(["v", "device", "topic", "seq"]))
        elif key == "exp":
            m["exp"] = int(time.time()) + 60 if o.exp is None else o.exp + 1
        else:
            m[key] = rng.choice([2, "x", None, -1, o.envelope.seq + 1, 1.0, b"", [1]])
            if m[key] == f.bound(o)[key] and type(m[key]) is type(f.bound(o)[key]):
                m[key] = "different"
        payload = f.encrypt(o, cose.dumps(m))
    return f.resign(o, payload)


def m_bad_header(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Right key and a valid inner part, but a protected/unprotected header or structure that
    the profile forbids (signed correctly over it)."""
    rng, env = f.rng, o.envelope
    inner = parse_sign1(env.data).payload
    header = _protected(env.sender_kid, env.seq, o.exp)
    variant = rng.randrange(11)
    if variant == 0:
        header[cose.HDR_ALG] = rng.choice([-7, -35, 24, "EdDSA"])
    elif variant == 1:
        header[cose.HDR_CONTENT_TYPE] = rng.choice([0, 97, "application/cose"])
    elif variant == 2:
        header[rng.choice([2, 6, 99, -65539])] = 1
    elif variant == 3:
        del header[HDR_SEQ]
    elif variant == 4:
        header[HDR_SEQ] = rng.choice([-1, 2**63, b"\x01", 1.0])
    elif variant == 5:
        header[cose.HDR_KID] = env.sender_kid  # tstr instead of bstr
    elif variant == 6:
        header[HDR_EXP] = rng.choice([-5, "soon", 2**64 - 1])
    elif variant == 7:
        return f.resign(o, inner, unprotected={cose.HDR_KID: env.sender_kid.encode()})
    elif variant == 8:
        return f.resign(o, inner, tag=rng.choice([None, 98, 96, 17]))
    elif variant == 9:
        return f.resign(o, inner, extra=(b"",))
    else:  # the same header, encoded non-deterministically (indefinite-length map)
        pb = bytearray(cose.dumps(header))
        pb[0] = 0xBF
        pb.append(0xFF)
        return env.topic, sign1(f.signer_of(o), bytes(pb), inner, f.aad(o))
    return env.topic, sign1(f.signer_of(o), header, inner, f.aad(o))


def m_wrong_signer(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Genuine-looking messages from a key that is not trusted for this topic."""
    p, rng, env = f.p, f.rng, o.envelope
    seq = env.seq
    if o.target == "receipt":  # everyone but the backend, the backend's kid with another key
        signer = rng.choice([p.operator, p.device, p.stranger, p.wrong_backend])
        return env.topic, _sealed_receipt(p, signer, o.plaintext, DEVICE).data
    if o.target == "command":
        signer = rng.choice([p.impostor_operator, p.stranger, p.device])
        sealed = seal(o.plaintext, sender=signer, recipient=p.device.public(),
                      topic=env.topic, seq=seq, device=DEVICE, expires_at=o.exp)  # fmt: skip
        return env.topic, sealed.data
    variant = rng.randrange(3)
    if variant == 0:  # the device's kid, another key
        sealed = seal(o.plaintext, sender=p.impostor_device, recipient=p.backend.public(),
                      topic=env.topic, seq=seq, device=DEVICE)  # fmt: skip
        return env.topic, sealed.data
    if variant == 1:  # another device, unknown to the backend, on our topic
        other_topic = env.topic.replace(DEVICE, OTHER_DEVICE)
        sealed = seal({**o.plaintext, "device": OTHER_DEVICE}, sender=p.other_device,
                      recipient=p.backend.public(), topic=other_topic, seq=seq,
                      device=OTHER_DEVICE)  # fmt: skip
        return rng.choice([env.topic, other_topic]), sealed.data
    # the operator (trusted on the unit, not at the backend) signing a device topic
    header = _protected(p.operator.kid, seq, None)
    return env.topic, sign1(p.operator, header, parse_sign1(env.data).payload, f.aad(o))


def m_expired(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Correctly signed and fresh seq, but expired (or, for commands, too far ahead)."""
    p, rng = f.p, f.rng
    now = int(time.time())
    if o.target == "command":
        exp = rng.choice([now - rng.randint(2, 10**6), now + 2 * 24 * 3600, 0])
        sealed = seal_command(str(o.plaintext["cmd"]), command_id="expired",
                              device=p.device.public(), operator=p.operator,
                              seq=p.next_operator_seq(), expires_at=exp)  # fmt: skip
        return sealed.topic, sealed.data
    header = p.builder.header()
    topic = o.envelope.topic
    sealed = seal({"type": "tamper", "ts": header.ts, "boot": header.boot, "body": {}},
                  sender=p.device, recipient=p.backend.public(), topic=topic, seq=header.seq,
                  device=DEVICE, expires_at=now - rng.randint(2, 10**6))  # fmt: skip
    return topic, sealed.data


def m_not_a_command(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Commands: opens (right key, fresh seq) but is no valid command. Events: the original
    on a topic of another kind."""
    p, rng = f.p, f.rng
    if o.target == "event":
        topic = rng.choice(WRONG_EVENT_TOPICS)
        return topic, o.envelope.data
    if o.target == "receipt":  # the backend's key and a fresh seq, but not a valid receipt
        bad: list[Any] = [[], [[2, 1]], [[-1, 5]], "x", [[1, 2], [2, 3]], [[5, 6], [1, 2]],
                          [[0, 1]] * 4097, [[True, 3]], [[1, 2, 3]], None]  # fmt: skip
        body = rng.choice(
            [
                {"type": "receipt", "ranges": rng.choice(bad)},
                {"type": "cmd_ack", "ranges": [[0, 2**62]]},
                {"ranges": [[0, 9]]},
            ]
        )
        return receipt_topic(DEVICE), _sealed_receipt(p, p.backend, body, DEVICE).data
    bodies: list[dict[str, Any]] = [
        {"cmd": "snapshot"},
        {"id": "", "cmd": "snapshot"},
        {"id": "has space", "cmd": "snapshot"},
        {"id": "x" * 65, "cmd": "snapshot"},
        {"id": 7, "cmd": "snapshot"},
        {"id": "ok-1", "cmd": "format_disk"},
        {"id": "ok-2", "cmd": 1},
        {"id": "ok-3"},
        {"id": "ok-4", "cmd": "snapshot", "args": [1, 2]},
        {"id": "ok-5", "cmd": "snapshot", "args": "x"},
    ]
    body = rng.choice(bodies)
    sealed = seal(body, sender=p.operator, recipient=p.device.public(), topic=command_topic(DEVICE),
                  seq=p.next_operator_seq(), device=DEVICE,
                  expires_at=int(time.time()) + 600)  # fmt: skip
    return sealed.topic, sealed.data


def m_other_device_command(f: Fuzzer, o: Original) -> tuple[str, bytes]:
    """Commands: a genuine command for another unit, on its topic or ours. Events: the
    original moved to another event type's topic."""
    p, rng = f.p, f.rng
    if o.target == "event":
        return event_topic(DEVICE, rng.choice(["presence", "tamper", "x"]) + "x"), o.envelope.data
    if o.target == "receipt":  # a genuine receipt for another unit, on its topic or ours
        other = _sealed_receipt(p, p.backend, o.plaintext, OTHER_DEVICE)
        return rng.choice([other.topic, receipt_topic(DEVICE)]), other.data
    sealed = seal_command("snapshot", command_id="other", device=p.other_device.public(),
                          operator=p.operator, seq=p.next_operator_seq(),
                          expires_at=int(time.time()) + 600)  # fmt: skip
    return rng.choice([sealed.topic, command_topic(DEVICE)]), sealed.data


MUTATIONS: Final[dict[str, Mutator]] = {
    "truncate": m_truncate,
    "bitflip": m_bitflip,
    "bytes": m_bytes,
    "splice": m_splice,
    "random_cbor": m_random_cbor,
    "random_bytes": m_random_bytes,
    "resigned_garbage": m_resigned_garbage,
    "bad_header": m_bad_header,
    "wrong_signer": m_wrong_signer,
    "expired": m_expired,
    "not_a_command_or_wrong_topic": m_not_a_command,
    "other_device_or_topic": m_other_device_command,
}


# --- the run ----------------------------------------------------------------------------------


def _replays(f: Fuzzer, o: Original) -> list[Case]:
    """After the control: the original again, on another topic, and an older original."""
    env = o.envelope
    other = {"event": event_topic(DEVICE, "other"), "receipt": receipt_topic(OTHER_DEVICE)}.get(
        o.target, ack_topic(DEVICE)
    )
    cases = [
        Case(o.target, "replay", env.topic, env.data),
        Case(o.target, "replay", other, env.data),
    ]
    older = [x for x in f.pool if x.target == o.target and x is not o]
    if older:
        old = f.rng.choice(older).envelope
        cases.append(Case(o.target, "replay", old.topic, old.data))
    return cases


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Rejections are expected by the thousand: keep the openers' warnings out of the log."""
    names = ("agent.commands", "dashboard.listener", "agent.receipts")
    saved = [(n, logging.getLogger(n).level) for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, level in saved:
            logging.getLogger(n).setLevel(level)


def run_fuzz(
    cases: int,
    *,
    seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> FuzzReport:
    """Feed ``cases`` mutated inputs (plus the controls) to both targets."""
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)  # noqa: S311 - reproducible choice of mutations, not cryptography
    report = FuzzReport(seed=seed)
    kinds: Counter[str] = Counter()
    names = list(MUTATIONS)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="camveil-fuzz-") as tmp, _quiet():
        parties = Parties(Path(tmp))
        fuzzer = Fuzzer(parties, rng)

        def run_case(case: Case) -> bool:
            try:
                return parties.feed(case)
            except Exception as exc:  # a crash: anything the targets let escape
                report.crashes += 1
                if len(report.crash_samples) < 20:
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    report.crash_samples.append(
                        f"{case.target}/{case.kind}: {type(exc).__name__}: {exc} "
                        f"({where.filename}:{where.lineno})"
                    )
                return False

        while report.cases < cases:
            originals = [
                make_event(parties, rng),
                make_command(parties, rng),
                make_receipt(parties, rng),
            ]
            batch: list[Case] = []
            for _ in range(MUTATIONS_PER_ROUND):
                o = rng.choice(originals)
                kind = rng.choice(names)
                topic, data = MUTATIONS[kind](fuzzer, o)
                if (topic, data) == (o.envelope.topic, o.envelope.data):
                    continue  # e.g. two bit flips that cancel: not a mutation
                batch.append(Case(o.target, kind, topic, data))
            for o in originals:  # controls last: no mutation may have burnt their seq
                batch.append(Case(o.target, "control", o.envelope.topic, o.envelope.data))
            for o in originals:
                batch.extend(_replays(fuzzer, o))
            for case in batch:
                if case.kind != "control" and report.cases >= cases:
                    continue
                accepted = run_case(case)
                if case.kind == "control":
                    report.controls += 1
                    report.controls_accepted += int(accepted)
                    continue
                report.cases += 1
                kinds[case.kind] += 1
                if accepted:
                    report.acceptances += 1
                    if len(report.accepted_samples) < 20:
                        report.accepted_samples.append(
                            f"{case.target}/{case.kind} on {case.topic}: {case.data.hex()[:200]}"
                        )
                if progress is not None and report.cases % 1000 == 0:
                    progress(report.cases)
            fuzzer.pool = (fuzzer.pool + originals)[-32:]
        report.rejections = parties.rejections()
        parties.outbox.close()
    report.by_kind = dict(sorted(kinds.items()))
    report.seconds = round(time.perf_counter() - t0, 2)
    return report
