"""What the outbox counts and reports: the names in its ``counters`` table and
:class:`OutboxStats`, which ``health`` events carry.

Every eviction and every refused envelope is counted in the ``counters`` table of the outbox's
own database, in the same transaction as the change it counts, so the totals survive restarts
(:class:`agent.outbox.storage.OutboxStorage` writes them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

DeleteOn = Literal["receipt", "puback"]

# Counter names (the ``counters`` table). Evictions by reason, refusals by reason.
EVICTED_BYTES: Final = "evicted.bytes"
EVICTED_AGE: Final = "evicted.age"
EVICTED_DISK_FULL: Final = "evicted.disk_full"
EVICTED_INVALID: Final = "evicted.invalid"
REPUBLISHED: Final = "republished"
"""Envelopes published again because no receipt came within the receipt timeout."""
RECEIPTED: Final = "receipted"
REJECTED_FULL: Final = "rejected.full"
REJECTED_TOO_LARGE: Final = "rejected.too_large"
CORRUPT_RECOVERED: Final = "corrupt_recovered"


@dataclass(frozen=True)
class OutboxStats:
    """What ``health`` events report about the outbox."""

    depth: int
    bytes: int
    in_flight: int
    oldest_age_s: float | None
    evicted_total: Mapping[str, int]
    """Evicted envelopes by reason: ``bytes``, ``age``, ``disk_full``, ``invalid``."""
    rejected_total: Mapping[str, int]
    """Envelopes refused at enqueue by reason: ``full``, ``too_large``."""
    corrupt_recovered: int
    """How many times a corrupt database file was moved aside and replaced."""
    awaiting_receipt: int = 0
    """Published (PUBACK seen), kept until the backend's receipt names them."""
    receipted: int = 0
    """Envelopes deleted because a receipt named them."""
    republished: int = 0
    """Envelopes published again: no receipt within the receipt timeout."""
    delete_on: DeleteOn = "receipt"


def with_prefix(counts: Mapping[str, int], prefix: str) -> dict[str, int]:
    """The counters named ``<prefix><reason>``, by reason."""
    return {k[len(prefix) :]: int(v) for k, v in counts.items() if k.startswith(prefix)}
