"""Provisioning wire format: CBOR messages in CRC32-checked, COBS-stuffed, 0x00-delimited frames.

One frame on the byte stream::

    0x00 | COBS( CBOR(message) || CRC32(CBOR(message)) as 4 bytes big-endian ) | 0x00

The leading 0x00 is optional for a receiver (empty frames are skipped); senders emit it so that a
receiver holding half a frame of line noise resynchronises before our frame, not after it.
A message is a CBOR map ``{"t": tstr, "id": uint, "b": map}``: type, request id, body. A reply
carries the id of its request. Message types: docs/PROTOCOL.md, "Provisioning over USB serial".

:class:`FrameReader` never raises on its input: every rejected frame is counted in
:class:`ReaderStats` by cause (bad COBS, bad CRC, oversize, undecodable CBOR, not a message).

Errors (all :class:`contract.errors.CamveilError`)::

    ProvisioningError               provisioning failed; the message says what to do
    ├── LinkTimeoutError            no valid answer after every retry (cable, port, no listener)
    ├── RefusedError                the unit answered with an error (e.g. already provisioned)
    └── ProtocolViolationError      a well-formed frame with content we cannot accept
"""

from __future__ import annotations

import logging
import secrets
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

import cbor2

from contract.envelope.cose import StrictCBORError
from contract.envelope.cose import loads as cbor_loads
from contract.errors import (
    LinkTimeoutError,
    RefusedError,
)
from provisioning import cobs

logger = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = 1
_BIGNUM_TAGS: Final = frozenset({2, 3})  # integers beyond 64 bits are the only tags we carry
MAX_FRAME: Final = 64 * 1024
"""Largest accepted decoded frame (CBOR + CRC), in bytes; larger ones are dropped and counted."""


@dataclass(frozen=True)
class Message:
    """One protocol message: type ``t``, request id ``id`` and a body map ``b``."""

    t: str
    id: int
    b: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.t, "id": self.id, "b": dict(self.b)}


def new_request_id() -> int:
    """A random 63-bit request id: unique across station restarts without shared state."""
    return secrets.randbits(63)


def encode_frame(message: Message) -> bytes:
    """The bytes to put on the wire for ``message`` (both delimiters included)."""
    payload = cbor2.dumps(message.to_wire(), canonical=True)
    body = payload + struct.pack(">I", zlib.crc32(payload))
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame cap")
    return b"\x00" + cobs.encode(body) + b"\x00"


@dataclass
class ReaderStats:
    """What a :class:`FrameReader` accepted and dropped, by cause (nothing is dropped silently)."""

    frames: int = 0
    bad_cobs: int = 0
    bad_crc: int = 0
    oversize: int = 0
    bad_cbor: int = 0
    not_a_message: int = 0
    dropped_bytes: int = 0

    @property
    def rejected(self) -> int:
        return self.bad_cobs + self.bad_crc + self.oversize + self.bad_cbor + self.not_a_message


class FrameReader:
    """Turns a byte stream into :class:`Message` values; resynchronises on 0x00; never raises."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._max_encoded = max_frame + max_frame // 254 + 2
        self._max_frame = max_frame
        self._buf = bytearray()
        self._skipping = False
        self.stats = ReaderStats()

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data``; return the messages completed by it, in order."""
        out: list[Message] = []
        start = 0
        while True:
            zero = data.find(b"\x00", start)
            if zero < 0:
                self._append(data[start:])
                return out
            self._append(data[start:zero])
            message = self._finish()
            if message is not None:
                out.append(message)
            start = zero + 1

    def _append(self, chunk: bytes) -> None:
        if self._skipping:
            self.stats.dropped_bytes += len(chunk)
            return
        self._buf += chunk
        if len(self._buf) > self._max_encoded:
            self.stats.oversize += 1
            self.stats.dropped_bytes += len(self._buf)
            self._buf.clear()
            self._skipping = True

    def _finish(self) -> Message | None:
        if self._skipping:
            self._skipping = False
            return None
        if not self._buf:
            return None
        raw = bytes(self._buf)
        self._buf.clear()
        message = self._parse(raw)
        if message is None:
            self.stats.dropped_bytes += len(raw) + 1
        else:
            self.stats.frames += 1
        return message

    def _parse(self, raw: bytes) -> Message | None:
        try:
            body = cobs.decode(raw)
        except cobs.CobsDecodeError:
            self.stats.bad_cobs += 1
            return None
        if len(body) > self._max_frame:
            self.stats.oversize += 1
            return None
        if len(body) < 5 or zlib.crc32(body[:-4]) != struct.unpack(">I", body[-4:])[0]:
            self.stats.bad_crc += 1
            return None
        try:  # exactly one well-formed item, no tags (cbor2 alone accepts a lone break byte)
            decoded = cbor_loads(body[:-4], allowed_tags=_BIGNUM_TAGS)
        except StrictCBORError:
            self.stats.bad_cbor += 1
            return None
        message = _as_message(decoded)
        if message is None:
            self.stats.not_a_message += 1
        return message


def _as_message(decoded: object) -> Message | None:
    if not isinstance(decoded, dict):
        return None
    t, rid, body = decoded.get("t"), decoded.get("id"), decoded.get("b", {})
    if not isinstance(t, str) or not isinstance(rid, int) or isinstance(rid, bool):
        return None
    if not 0 <= rid < 2**64 or not isinstance(body, dict):
        return None
    if not all(isinstance(k, str) for k in body):
        return None
    return Message(t=t, id=rid, b=body)


# --- links ---------------------------------------------------------------------------------------


@runtime_checkable
class SerialLink(Protocol):
    """A byte pipe to the peer: the pyserial port (hw.serial_link) or :class:`MemoryLink`."""

    def read(self, timeout: float) -> bytes:
        """Bytes that arrived within ``timeout`` seconds (as soon as any did); b"" if none."""
        ...

    def write(self, data: bytes) -> None:
        """Send ``data`` (may block until it is handed to the driver)."""
        ...


class MemoryLink:
    """In-memory :class:`SerialLink`; :meth:`pair` gives two connected ends."""

    def __init__(self, inbox: deque[bytes], outbox: deque[bytes], cond: threading.Condition):
        self._inbox = inbox
        self._outbox = outbox
        self._cond = cond

    @classmethod
    def pair(cls) -> tuple[MemoryLink, MemoryLink]:
        a_to_b: deque[bytes] = deque()
        b_to_a: deque[bytes] = deque()
        cond = threading.Condition()
        return cls(b_to_a, a_to_b, cond), cls(a_to_b, b_to_a, cond)

    def read(self, timeout: float) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._inbox), timeout=max(timeout, 0.0))
            data = b"".join(self._inbox)
            self._inbox.clear()
            return data

    def write(self, data: bytes) -> None:
        with self._cond:
            self._outbox.append(bytes(data))
            self._cond.notify_all()


# --- request / reply over a link -----------------------------------------------------------------


class Channel:
    """Messages over a :class:`SerialLink`: send, receive with a deadline, request with retries."""

    def __init__(
        self,
        link: SerialLink,
        *,
        max_frame: int = MAX_FRAME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self._reader = FrameReader(max_frame)
        self._inbox: deque[Message] = deque()
        self._clock = clock
        self.stale_replies = 0
        self.retries = 0

    @property
    def stats(self) -> ReaderStats:
        return self._reader.stats

    def send(self, message: Message) -> None:
        self._link.write(encode_frame(message))

    def receive(self, timeout: float) -> Message | None:
        """The next message, waiting at most ``timeout`` seconds; None if none arrived."""
        deadline = self._clock() + timeout
        while not self._inbox:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            self._inbox.extend(self._reader.feed(self._link.read(remaining)))
        return self._inbox.popleft()

    def request(self, t: str, body: Mapping[str, Any], *, timeout: float, attempts: int) -> Message:
        """Send a request and return the reply with its id, resending the same id on timeout.

        The reply type is ``t + ".ok"``. Raises :class:`RefusedError` for an ``error`` reply
        and :class:`LinkTimeoutError` when no reply came after ``attempts`` sends. Anything else
        (late answers to earlier requests, our own frames echoed by a tty that is not raw yet)
        is counted in :attr:`stale_replies` and skipped.
        """
        message = Message(t=t, id=new_request_id(), b=body)
        for attempt in range(attempts):
            if attempt:
                self.retries += 1
                logger.info("no reply to %s (attempt %d of %d), resending", t, attempt, attempts)
            self.send(message)
            deadline = self._clock() + timeout
            while (remaining := deadline - self._clock()) > 0:
                reply = self.receive(remaining)
                if reply is None:
                    break
                if reply.id != message.id or reply.t not in (f"{t}.ok", "error"):
                    self.stale_replies += 1
                    continue
                if reply.t == "error":
                    code = reply.b.get("code")
                    text = reply.b.get("message")
                    raise RefusedError(
                        code if isinstance(code, str) else "unknown",
                        f"the unit refused {t!r}: {text if isinstance(text, str) else code}",
                    )
                return reply
        raise LinkTimeoutError(
            f"no answer to {t!r} after {attempts} attempts of {timeout:g} s; check the cable and "
            "that the unit runs `camveil provision-listen` (camveil-provision.service)"
        )


def is_reply(message: Message) -> bool:
    """Replies are ``<t>.ok`` or ``error``; a peer never answers them (no echo loops)."""
    return message.t == "error" or message.t.endswith(".ok")


def reply_to(request: Message, t: str, body: Mapping[str, Any]) -> Message:
    """A reply of type ``t`` to ``request`` (same id)."""
    return Message(t=t, id=request.id, b=body)


def error_reply(request: Message, code: str, message: str) -> Message:
    """An ``error`` reply: ``{"code": code, "message": message}``."""
    return Message(t="error", id=request.id, b={"code": code, "message": message})
