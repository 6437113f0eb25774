"""The unit side of receipts (docs/PROTOCOL.md, "Receipts"): open what the backend sends on
``camveil/v1/<device>/receipt`` and delete the envelopes it names from the outbox.

A receipt is accepted only if it opens under the backend's key (not an operator's: the two roles
are kept apart by whom each processor trusts), is bound to this unit's topic, is encrypted to
this unit, has not expired and has not been seen before (exact memory until its expiry). Anything
else is refused and counted (``receipt_rejected.<reason>``) and deletes nothing. A receipt can
only ever delete envelopes: a forged one could not make the unit send or keep anything, and a
replayed one (after the unit's memory of it is gone with a restart) names seqs the backend had
stored, which the unit's counter never reuses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from agent.outbox import Outbox
from contract.envelope.keys import Identity, PeerKeys, PublicIdentity
from contract.envelope.replay import CommandReplayGuard
from contract.envelope.seal import open_envelope
from contract.errors import EnvelopeError, OutboxError
from contract.receipts import RECEIPT_LIFETIME_S, Range, parse_receipt

logger = logging.getLogger(__name__)

RECEIPT_MEMORY: Final = 16384
"""Unexpired receipts remembered (120 s each: 136 per second sustained)."""


@dataclass
class ReceiptStats:
    accepted: int = 0
    deleted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class ReceiptProcessor:
    """Opens receipts from ``backend`` for ``identity`` and applies them to ``outbox``.

    ``on_receipted(ranges, now)`` is told what a receipt named (for latency numbers)."""

    def __init__(
        self,
        identity: Identity,
        backend: PublicIdentity,
        outbox: Outbox,
        *,
        clock: Callable[[], float] = time.time,
        on_receipted: Callable[[list[Range], float], None] | None = None,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        self._identity = identity
        self._trusted = PeerKeys([backend])
        self._outbox = outbox
        self._clock = clock
        self._guard = CommandReplayGuard(max_commands=RECEIPT_MEMORY, clock=clock)
        self._on_receipted = on_receipted
        self._on_rejected = on_rejected
        self._lock = threading.Lock()
        self.stats = ReceiptStats()

    def handle(self, topic: str, payload: bytes) -> int:
        """Apply one receipt; the number of envelopes it deleted (0 when refused)."""
        with self._lock:
            try:
                opened = open_envelope(
                    payload,
                    topic=topic,
                    trusted_senders=self._trusted,
                    recipient=self._identity,
                    replay_guard=self._guard,
                    clock=self._clock,
                    max_command_lifetime_s=RECEIPT_LIFETIME_S + 60,
                )
                if opened.device != self._identity.kid:
                    raise EnvelopeError(
                        f"receipt for {opened.device!r}, this is {self._identity.kid!r}"
                    )
                ranges = parse_receipt(opened.message)
            except EnvelopeError as exc:
                self._reject(type(exc).__name__, exc)
                return 0
            try:
                deleted = self._outbox.receipt(ranges)
            except OutboxError as exc:  # kept: the next receipt or a republish catches up
                self._reject("outbox", exc)
                return 0
            self.stats.accepted += 1
            self.stats.deleted += deleted
        if self._on_receipted is not None:
            self._on_receipted(ranges, self._clock())
        return deleted

    def _reject(self, reason: str, exc: Exception) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        level = logging.DEBUG if reason == "ReplayError" else logging.WARNING  # a redelivery
        logger.log(level, "receipt refused (%s): %s", reason, exc)
        if self._on_rejected is not None:
            self._on_rejected(reason)
