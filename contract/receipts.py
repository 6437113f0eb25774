"""The receipt wire format both sides share (docs/PROTOCOL.md, "Receipts").

A PUBACK only says that the broker took a message. A **receipt** says that the backend verified
it and stored it durably, and only a receipt lets a unit forget an envelope (in the default
``[outbox] delete_on = "receipt"`` mode). The backend seals receipts to the unit with its own key
on ``camveil/v1/<device>/receipt``; the envelope binds them to the device and topic, and carries
a fresh sequence number and an expiry, so a receipt can neither be moved to another unit nor
replayed after its expiry (the unit remembers the ones it accepted until then).

Receipt plaintext, besides the envelope's own keys::

    {"type": "receipt",
     "ranges": [+ [uint, uint]]}   ; inclusive seq ranges, sorted, disjoint, at most MAX_RANGES

A seq names one envelope of the device for good: the unit's counter never repeats a number,
across boots and restarts (docs/PROTOCOL.md, "Sequence numbers"), so ranges of seqs need no boot.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from contract.envelope.keys import Identity, PublicIdentity
from contract.envelope.seal import SealedEnvelope, seal
from contract.errors import MalformedEnvelopeError
from contract.ranges import seq_ranges
from contract.topics import receipt_topic

RECEIPT_TYPE: Final = "receipt"
MAX_RANGES: Final = 4096
"""Ranges per receipt (a receipt stays far below the envelope size limit)."""
RECEIPT_LIFETIME_S: Final = 120
"""A receipt expires this long after it was sealed; the unit remembers it until then."""
MAX_SEQ: Final = 2**63 - 1

Range = tuple[int, int]


def receipt_ranges(seqs: Iterable[int]) -> list[Range]:
    """Sorted, disjoint, inclusive ranges of ``seqs``."""
    return [(lo, hi) for lo, hi in seq_ranges(seqs)]


def seal_receipt(
    ranges: Sequence[Range],
    *,
    backend: Identity,
    device: PublicIdentity,
    seq: int,
    expires_at: int,
) -> SealedEnvelope:
    """The backend side: a receipt for ``device`` naming the seqs in ``ranges``."""
    check_ranges(ranges)
    return seal(
        {"type": RECEIPT_TYPE, "ranges": [list(r) for r in ranges]},
        sender=backend,
        recipient=device,
        topic=receipt_topic(device.kid),
        seq=seq,
        device=device.kid,
        expires_at=expires_at,
    )


def check_ranges(ranges: Any) -> list[Range]:
    """``ranges`` as a list of (lo, hi), or MalformedEnvelopeError: 1..MAX_RANGES pairs of
    ints 0 <= lo <= hi < 2**63, sorted and disjoint."""
    if not isinstance(ranges, list | tuple) or not 1 <= len(ranges) <= MAX_RANGES:
        raise MalformedEnvelopeError(f"receipt needs 1..{MAX_RANGES} ranges")
    out: list[Range] = []
    previous = -1
    for pair in ranges:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise MalformedEnvelopeError("receipt range is not a [lo, hi] pair")
        lo, hi = pair
        if not all(type(v) is int for v in (lo, hi)) or not 0 <= lo <= hi <= MAX_SEQ:
            raise MalformedEnvelopeError(f"receipt range {pair!r} is not 0 <= lo <= hi < 2**63")
        if lo <= previous:
            raise MalformedEnvelopeError("receipt ranges are not sorted and disjoint")
        previous = hi
        out.append((lo, hi))
    return out


def parse_receipt(message: Mapping[str, Any]) -> list[Range]:
    """The ranges of an opened receipt's plaintext (MalformedEnvelopeError if it is not one)."""
    if message.get("type") != RECEIPT_TYPE:
        raise MalformedEnvelopeError("not a receipt")
    return check_ranges(message.get("ranges"))


class ReceiptCounter:
    """Fresh receipt sequence numbers for one backend process: microseconds since the epoch,
    shifted left by 8 bits, with a random low byte per process, strictly increasing. Several
    ingest processes share one backend key; this keeps their numbers apart, and a restarted
    process never reuses a number that a unit may still remember."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tag = secrets.randbelow(256)
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            now = (int(self._clock() * 1_000_000) << 8) | self._tag
            self._last = max(now, self._last + 256)
            return self._last
