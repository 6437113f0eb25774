"""The backend's Receipter: one receipt per unit per round, at most one per ``min_gap_s`` (the
seqs of a unit receipted less than that ago wait, none is dropped); ``flush`` sends everything."""

from __future__ import annotations

from contract.envelope import Identity, PeerKeys, ReplayGuard, SealedEnvelope, open_envelope
from contract.receipts import parse_receipt
from dashboard.receipts import Receipter

BACKEND = Identity.generate("backend-1")
UNITS = [Identity.generate("cv-0001"), Identity.generate("cv-0002")]
NOW = 1_764_115_200.0


class Rig:
    def __init__(self) -> None:
        self.sent: list[SealedEnvelope] = []
        self.t = 100.0
        devices = PeerKeys(u.public() for u in UNITS)
        self.receipter = Receipter(
            BACKEND,
            lambda: devices,
            self._publish,
            min_gap_s=1.0,
            clock=lambda: NOW,
            monotonic=lambda: self.t,
        )

    def _publish(self, envelope: SealedEnvelope) -> bool:
        self.sent.append(envelope)
        return True

    def ranges(self) -> dict[str, list[tuple[int, int]]]:
        """What the receipts sent since the last call say, per unit (opened as the unit does)."""
        out: dict[str, list[tuple[int, int]]] = {}
        for envelope in self.sent:
            unit = next(u for u in UNITS if u.kid == envelope.device)
            opened = open_envelope(
                envelope.data,
                topic=envelope.topic,
                trusted_senders=PeerKeys([BACKEND.public()]),
                recipient=unit,
                replay_guard=ReplayGuard(),
                clock=lambda: NOW,
            )
            out.setdefault(unit.kid, []).extend(parse_receipt(opened.message))
        self.sent.clear()
        return out


def test_a_unit_gets_at_most_one_receipt_per_gap_and_loses_no_seq() -> None:
    rig = Rig()
    r = rig.receipter
    r.stored("cv-0001", 1)
    r.stored("cv-0001", 2)
    assert r.round() == 1 and rig.ranges() == {"cv-0001": [(1, 2)]}
    r.stored("cv-0001", 3)
    r.stored("cv-0002", 7)  # another unit is not held back by the first one's gap
    assert r.round() == 1 and rig.ranges() == {"cv-0002": [(7, 7)]}
    rig.t += 0.5
    r.stored("cv-0001", 4)
    assert r.round() == 0 and rig.ranges() == {}
    rig.t += 0.5
    assert r.round() == 1 and rig.ranges() == {"cv-0001": [(3, 4)]}
    assert r.round() == 0


def test_flush_sends_what_waits_whatever_the_gap() -> None:
    rig = Rig()
    r = rig.receipter
    r.stored("cv-0001", 1)
    r.round()
    r.stored("cv-0001", 5)
    r.stored("cv-0002", 9)
    assert r.round() == 1
    assert r.flush() == 1
    assert rig.ranges() == {"cv-0001": [(1, 1), (5, 5)], "cv-0002": [(9, 9)]}
    assert r.stats.sent == 3 and r.stats.seqs == 3


def test_a_unit_removed_meanwhile_gets_nothing() -> None:
    rig = Rig()
    rig.receipter.stored("cv-9999", 1)
    assert rig.receipter.round() == 0 and rig.receipter.stats.unknown_device == 1
