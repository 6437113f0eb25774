"""What a chaos run counts: the listener's application (:class:`Collector`, deliveries per seq),
and the comparison with the unit's log (:func:`tally`) into a :class:`ChaosReport`.

Counting: ``sent`` = the seqs the unit logged as enqueued (events and "online" statuses), plus
the rare seq received but not logged (the unit was killed between the enqueue and the log
line); ``lost`` = sent but never delivered to the application; ``duplicated`` = extra
deliveries to the application after the listener's de-duplication (must be 0);
``raw_duplicates`` = redeliveries the listener saw and dropped. Last wills are counted apart:
the broker publishes them only when a connection ends, so most sealed wills are never sent.
Each lost seq is attributed to the last fault before its event was logged (``lost_by_fault``).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from dashboard.listener import Received


@dataclass
class ChaosReport:
    sent: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    raw_duplicates: int = 0
    events: int = 0
    statuses: int = 0
    sent_unlogged: int = 0
    wills_sealed: int = 0
    wills_received: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    broker_restarts: int = 0
    broker_kills: int = 0
    broker_wipes: int = 0
    backend_kills: int = 0
    agent_kills: int = 0
    delivery: str = "receipt"
    receipts_sent: int = 0
    lost_by_fault: dict[str, int] = field(default_factory=dict)
    """Lost seqs attributed to the last fault before them (by kind), to see which fault loses."""
    lost_seqs: list[int] = field(default_factory=list)
    broker_drop_notices: int | None = None
    """Our mosquitto's "Outgoing messages are being dropped" log lines: it dropped messages
    for a subscriber whose queue was full (``max_queued_messages``), after PUBACKing them to
    the unit. None when the broker is not ours."""
    timings: dict[str, float | None] = field(default_factory=dict)
    seed: int = 0

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class Collector:
    """The application behind the listener: counts deliveries per (device, seq)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.deliveries: Counter[int] = Counter()
        self.kinds: dict[int, str] = {}
        self.changed = threading.Event()

    def __call__(self, received: Received) -> None:
        state = received.message.get("body", {})
        offline = received.type == "status" and isinstance(state, dict)
        offline = offline and state.get("state") == "offline"
        with self._lock:
            self.deliveries[received.seq] += 1
            self.kinds[received.seq] = "will" if offline else received.type
        self.changed.set()

    def seqs(self) -> set[int]:
        with self._lock:
            return set(self.deliveries)


def tally(
    report: ChaosReport,
    logged: list[tuple[int, str]],
    collector: Collector,
    marks: list[tuple[int, str]],
) -> None:
    """Compare the unit's log with what the application received: sent, received, lost (and by
    which fault), duplicated, wills (module docstring). ``marks``: (events logged, fault)."""
    sent = {s for s, kind in logged if kind in ("event", "status")}
    wills = {s for s, kind in logged if kind == "will"}
    first_seq = min(s for s, _ in logged)
    got = collector.seqs()
    # enqueued (the commit reached the WAL) but killed before the log line was written
    unlogged = {
        s for s in got - sent - wills if s >= first_seq and collector.kinds.get(s) != "will"
    }
    sent |= unlogged
    lost = sorted(sent - got)
    report.sent = len(sent)
    report.events = sum(1 for _, kind in logged if kind == "event")
    report.statuses = sum(1 for _, kind in logged if kind == "status")
    report.sent_unlogged = len(unlogged)
    report.received = len(sent & got)
    report.lost = len(lost)
    report.lost_seqs = lost[:50]
    report.lost_by_fault = attribute(lost, logged, marks)
    report.duplicated = sum(n - 1 for n in collector.deliveries.values() if n > 1)
    report.wills_sealed = len(wills)
    report.wills_received = len(got & wills)


def attribute(
    lost: list[int], logged: list[tuple[int, str]], marks: list[tuple[int, str]]
) -> dict[str, int]:
    """Each lost seq, counted under the last fault before its event was logged ("none" if it
    came before every fault)."""
    events_before: dict[int, int] = {}
    n = 0
    for seq, kind in logged:
        if kind == "event":
            n += 1
        events_before[seq] = n
    out: dict[str, int] = {}
    for seq in lost:
        at = events_before.get(seq, 0)
        fault = "none"
        for mark, kind in marks:
            if mark <= at:
                fault = kind
        out[fault] = out.get(fault, 0) + 1
    return out
