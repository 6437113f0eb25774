"""Signed commands to the unit and the unit's sealed answers.

A command is an envelope on ``camveil/v1/<device>/cmd``, signed by an operator key, encrypted
to the device, with an expiry (docs/PROTOCOL.md, "Envelope"; the format both sides share, with
:class:`~contract.commands.Ack` and :func:`~contract.commands.seal_command`, is in
:mod:`contract.commands`). Its plaintext carries, besides the envelope's own keys::

    {"id": tstr,            ; the operator's command id (1-64 of A-Z a-z 0-9 _ . : / -)
     "cmd": tstr,           ; "snapshot" | "set_config" | "restart_pipeline"
     ? "args": {* tstr => any}}

``set_config`` takes ``args = {"config": {<section>: {<key>: value}}}`` (only the sections in
:data:`~contract.commands.REMOTE_SECTIONS`): validated with the typed config loader over the
whole configuration, applied by building the new pipeline first, and kept in ``remote.toml`` in
the state directory, which is merged over ``/etc/camveil/camveil.toml`` at every start
(:func:`agent.config.load_with_remote`; the ``/etc`` file is root-owned and read-only for the
agent). Every command, also one that does not open, is answered on
``camveil/v1/<device>/cmd/ack`` with a sealed message of the device, encrypted to the operator
(:func:`ack_recipient`: the X25519 form of its Ed25519 key, so that `camveil cmd` needs no
backend key and the backend cannot read acks)::

    {"v": 1, "device", "boot", "seq", "ts", "type": "cmd_ack", "body": {
       "id": tstr / null,           ; the command id (null when the command did not open)
       "cmd_seq": uint / null,      ; the seq header of the command (unauthenticated when the
                                    ; command did not open: it is for correlation only)
       "status": "accepted" / "rejected",
       "reason": tstr}}             ; "ok", or why: bad_signature, replay, expired, ...

Replay protection is exact and survives restarts: the unit remembers every accepted command until
its expiry (:class:`~contract.envelope.replay.CommandReplayGuard`), so operators with skewed clocks
are never locked out, and saves that memory to ``cmd-replay.cbor`` in the state directory after
each accepted command and *before* it runs, so a crash can lose a command but never run one
twice. Rejections are counted by reason
(``rejected``), and the daemon reports them in health.

Acks of commands that did not open (bad signature, replay, expired, garbage) are rate-limited by
a token bucket (:class:`AckBudget`, default a burst of 20 then one per second): every ack goes
through the durable outbox, so an unlimited flood of forged commands could otherwise fill it and
evict real events. Suppressed acks are counted (``acks_suppressed``); acks of authenticated
commands are never suppressed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import cbor2

from agent.events import Header
from contract.commands import ACK_TYPE, COMMAND_ID, MAX_RESULT_BYTES, Ack
from contract.envelope.keys import (
    Identity,
    PeerKeys,
    PublicIdentity,
    read_private_file,
    write_private_file,
)
from contract.envelope.keys import ack_recipient as operator_ack_key
from contract.envelope.replay import CommandReplayGuard
from contract.envelope.seal import MAX_COMMAND_LIFETIME_S, SealedEnvelope, open_envelope, seal
from contract.envelope.wire import MAX_COMMAND_BYTES, parse_sign1
from contract.errors import (
    BadSignatureError,
    BindingMismatchError,
    CamveilError,
    DecryptError,
    EnvelopeError,
    ExpiredError,
    KeyFileError,
    MalformedEnvelopeError,
    ReplayError,
    ReplayMemoryFullError,
    UnknownKeyError,
)
from contract.topics import ack_topic, command_topic

logger = logging.getLogger(__name__)

REPLAY_STATE_VERSION: Final = 2
_WINDOW_STATE_VERSION: Final = 1  # the sliding window of earlier releases

_REASONS: Final[tuple[tuple[type[EnvelopeError], str], ...]] = (
    (BadSignatureError, "bad_signature"),
    (ReplayMemoryFullError, "replay_memory_full"),
    (ReplayError, "replay"),
    (ExpiredError, "expired"),
    (UnknownKeyError, "unknown_key"),
    (DecryptError, "decrypt"),
    (BindingMismatchError, "binding"),
    (MalformedEnvelopeError, "malformed"),
)


class CommandRejectedError(CamveilError):
    """A handler refuses a command; the message is the reason sent in the ack."""


@dataclass(frozen=True)
class Command:
    """An opened, fresh, operator-signed command."""

    id: str
    name: str
    args: Mapping[str, Any]
    seq: int
    signer: str


def ack_recipient(ack: Ack, operators: PeerKeys) -> PublicIdentity:
    """The key an ack is sealed to: the ack's operator if trusted, else the first operator (by
    kid). Never the backend: acks are for the operator who sent the command."""
    if not operators:
        raise ValueError("no operator key to seal the ack to")
    kid = ack.operator
    if kid is None or kid not in operators:
        kid = sorted(operators)[0]
    return operator_ack_key(operators[kid])


def seal_ack(
    ack: Ack, header: Header, *, sender: Identity, recipient: PublicIdentity
) -> SealedEnvelope:
    """The unit's answer, stamped with an event header (one seq counter for everything)."""
    message = {
        "v": header.v,
        "device": header.device,
        "boot": header.boot,
        "seq": header.seq,
        "ts": header.ts,
        "type": ACK_TYPE,
        "body": ack.body(),
    }
    return seal(
        message,
        sender=sender,
        recipient=recipient,
        topic=ack_topic(header.device),
        seq=header.seq,
        device=header.device,
    )


def rejection_reason(exc: EnvelopeError) -> str:
    for cls, reason in _REASONS:
        if isinstance(exc, cls):
            return reason
    return "invalid"


# --- persisted replay state -----------------------------------------------------------------


def save_replay_state(path: Path, guard: CommandReplayGuard) -> None:
    """``{"v": 2, "floor": int, "seen": [[kid, topic, seq, exp], ...]}``, written atomically."""
    floor, seen = guard.snapshot()
    data = {"v": REPLAY_STATE_VERSION, "floor": floor, "seen": [list(e) for e in seen]}
    write_private_file(path, cbor2.dumps(data, canonical=True))


def load_replay_state(path: Path, guard: CommandReplayGuard) -> None:
    """Restore a saved memory; a missing file is a fresh start. A damaged file is an error: the
    unit would otherwise accept replays of commands it already ran.

    A version 1 file (the sliding window of earlier releases) cannot say which commands it
    accepted, only that each did before the file was last written, with an expiry at most 24 h
    after that: the floor becomes the file's mtime + 24 h, so until then only commands that
    expire later than that are accepted (``camveil cmd --expires 86400``).
    """
    if not path.exists():
        return
    raw = read_private_file(path)
    try:
        m = cbor2.loads(raw)
        if isinstance(m, dict) and m.get("v") == _WINDOW_STATE_VERSION:
            floor = int(path.stat().st_mtime) + MAX_COMMAND_LIFETIME_S
            guard.restore(floor, [])
            logger.warning(
                "command replay state %s is a version 1 window: commands expiring before %d "
                "are refused",
                path,
                floor,
            )
            return
        if not isinstance(m, dict) or m.get("v") != REPLAY_STATE_VERSION:
            raise ValueError(f"not a version {REPLAY_STATE_VERSION} replay state")
        seen = [(str(k), str(t), int(q), int(e)) for k, t, q, e in m["seen"]]
        guard.restore(int(m["floor"]), seen)
    except Exception as exc:  # cbor2 / unpacking / ValueError: all mean "damaged"
        raise KeyFileError(
            f"command replay state {path} is damaged ({exc}); delete it only if no command "
            "issued before now may still arrive (they expire within 24 h)"
        ) from None


# --- the processor --------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a handler returns when its ack carries more than a note: ``result`` goes into the
    ack body (``renew_cert``: the CSR), at most ``MAX_RESULT_BYTES`` of CBOR."""

    note: str
    result: Mapping[str, Any]


Handler = Callable[[Command], "str | Outcome"]
"""Runs a command and returns the ack reason ("ok" or a note), or an :class:`Outcome`;
CommandRejectedError refuses."""


class AckBudget:
    """Token bucket for acks of commands that did not open: ``burst`` at once, then ``rate``/s."""

    def __init__(
        self, burst: int = 20, rate: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if burst < 1 or rate <= 0:
            raise ValueError(f"AckBudget needs burst >= 1 and rate > 0, got {burst}, {rate}")
        self._burst = float(burst)
        self._rate = rate
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class CommandProcessor:
    """Opens, checks and runs commands; answers each through ``send_ack``. Thread-safe (one
    command at a time)."""

    def __init__(
        self,
        *,
        device: Identity,
        operators: PeerKeys,
        replay_path: Path,
        handlers: Mapping[str, Handler],
        send_ack: Callable[[Ack], None],
        replay_guard: CommandReplayGuard | None = None,
        clock: Callable[[], float] = time.time,
        ack_budget: AckBudget | None = None,
    ) -> None:
        self._device = device
        self._operators = operators
        self._replay_path = replay_path
        self._handlers = dict(handlers)
        self._send_ack = send_ack
        self._guard = replay_guard if replay_guard is not None else CommandReplayGuard(clock=clock)
        self._clock = clock
        self._lock = threading.Lock()
        self._budget = ack_budget or AckBudget()
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.acks_suppressed = 0

    def load(self) -> None:
        """Restore the persisted replay window (call once at start)."""
        load_replay_state(self._replay_path, self._guard)

    def handle(self, topic: str, payload: bytes) -> Ack:
        with self._lock:
            ack = self._handle(topic, payload)
            if ack.accepted:
                self.accepted += 1
            else:
                self.rejected[ack.reason.split(":", 1)[0]] += 1
            if ack.command_id is None and not self._budget.take():
                self.acks_suppressed += 1
                return ack
        try:
            self._send_ack(ack)
        except Exception:  # the command's effect stands; a lost ack is logged, not fatal
            logger.exception("could not send the ack of command %s", ack.command_id)
        return ack

    def _handle(self, topic: str, payload: bytes) -> Ack:
        ack = self._verdict(topic, payload)
        if ack.operator is None:
            return replace(ack, operator=_unauthenticated_kid(payload))
        return ack

    def _verdict(self, topic: str, payload: bytes) -> Ack:
        cmd_seq = _unauthenticated_seq(payload)
        if topic != command_topic(self._device.kid):
            return Ack(None, cmd_seq, False, "binding: not this unit's command topic")
        try:
            opened = open_envelope(
                payload,
                topic=topic,
                trusted_senders=self._operators,
                recipient=self._device,
                replay_guard=self._guard,
                clock=self._clock,
                max_size=MAX_COMMAND_BYTES,
            )
        except EnvelopeError as exc:
            reason = rejection_reason(exc)
            logger.warning("command rejected: %s (%s)", reason, type(exc).__name__)
            return Ack(None, cmd_seq, False, reason)
        # accepted by the envelope layer: persist the window before anything runs
        save_replay_state(self._replay_path, self._guard)
        message = opened.message
        command_id = message.get("id")
        name = message.get("cmd")
        args = message.get("args", {})
        signer = opened.sender_kid
        if not isinstance(command_id, str) or not COMMAND_ID.fullmatch(command_id):
            return Ack(None, opened.seq, False, "malformed: id missing or not a label", signer)
        if not isinstance(name, str) or not isinstance(args, Mapping):
            return Ack(command_id, opened.seq, False, "malformed: cmd or args", signer)
        handler = self._handlers.get(name)
        if handler is None:
            return Ack(command_id, opened.seq, False, f"unknown_command: {name[:64]!r}", signer)
        command = Command(command_id, name, args, opened.seq, signer)
        logger.info("command %s (%s) from %s", command_id, name, signer)
        try:
            done = handler(command)
        except CommandRejectedError as exc:
            return Ack(command_id, opened.seq, False, f"invalid: {exc}", signer)
        except CamveilError as exc:
            return Ack(command_id, opened.seq, False, f"failed: {exc}", signer)
        if isinstance(done, Outcome):
            if len(cbor2.dumps(dict(done.result))) > MAX_RESULT_BYTES:
                return Ack(command_id, opened.seq, False, "failed: result too large", signer)
            return Ack(command_id, opened.seq, True, done.note or "ok", signer, dict(done.result))
        return Ack(command_id, opened.seq, True, done or "ok", signer)


def _unauthenticated_seq(payload: bytes) -> int | None:
    try:
        return parse_sign1(bytes(payload), MAX_COMMAND_BYTES).seq
    except Exception:  # any parse failure: no seq to report
        return None


def _unauthenticated_kid(payload: bytes) -> str | None:
    """The signer kid a command that did not open names (only to pick which trusted operator
    its rejection is sealed to; :func:`ack_recipient` ignores kids it does not trust)."""
    try:
        return parse_sign1(bytes(payload), MAX_COMMAND_BYTES).kid
    except Exception:  # any parse failure: the default operator
        return None
