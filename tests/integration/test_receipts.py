"""End-to-end delivery (docs/PROTOCOL.md, "Receipts"): the outbox keeps an envelope until the
backend's signed receipt names it; forged, replayed, cross-device, expired and malformed receipts
delete nothing; the broker's ACL lets only the backend publish receipts and only the unit read
its own; a real agent's outbox empties through receipts from the real listener."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from broker import Mosquitto, TestClient, TestPki
from harness import DEVICE, Harness

from agent.outbox import Outbox
from agent.receipts import ReceiptProcessor
from contract.envelope import Identity, SealedEnvelope, seal
from contract.envelope.keys import PeerKeys
from contract.errors import MalformedEnvelopeError
from contract.receipts import (
    MAX_RANGES,
    RECEIPT_LIFETIME_S,
    ReceiptCounter,
    check_ranges,
    receipt_ranges,
    seal_receipt,
)
from contract.topics import event_topic, receipt_topic
from hw.clock import FakeClock

UNIT = "cv-rc-0001"
OTHER = "cv-rc-0002"
_unit = Identity.generate(UNIT)
_other = Identity.generate(OTHER)
_backend = Identity.generate("backend-rc")
_operator = Identity.generate("operator-rc")
T0 = 1_765_000_000.0


def sealed(seq: int) -> SealedEnvelope:
    return seal(
        {"type": "presence", "n": seq},
        sender=_unit,
        recipient=_backend.public(),
        topic=event_topic(UNIT, "presence"),
        seq=seq,
        device=UNIT,
    )


def receipt(
    ranges: list[tuple[int, int]],
    *,
    signer: Identity = _backend,
    device: Identity = _unit,
    seq: int | None = None,
    expires_at: int | None = None,
) -> tuple[str, bytes]:
    envelope = seal_receipt(
        ranges,
        backend=signer,
        device=device.public(),
        seq=seq if seq is not None else ReceiptCounter(lambda: T0).next(),
        expires_at=expires_at if expires_at is not None else int(T0) + RECEIPT_LIFETIME_S,
    )
    return envelope.topic, bytes(envelope.data)


def filled(box: Outbox, n: int) -> None:
    """n envelopes (seq 1..n) published: PUBACK seen, awaiting a receipt."""
    ids = [box.enqueue(sealed(seq)) for seq in range(1, n + 1)]
    for mid, item_id in enumerate(ids, start=1):
        assert box.mark_in_flight(item_id, mid)
        assert box.ack(item_id)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(epoch=T0)


@pytest.fixture
def box(tmp_path: Path, clock: FakeClock) -> Outbox:
    outbox = Outbox(tmp_path / "o.db", signer=_unit.public(), clock=clock.time)
    outbox.open()
    yield outbox  # type: ignore[misc]
    outbox.close()


def test_a_puback_keeps_the_envelope_until_a_receipt_names_it(box: Outbox) -> None:
    filled(box, 5)
    stats = box.stats()
    assert (stats.depth, stats.awaiting_receipt, stats.in_flight) == (5, 5, 0)
    assert box.next_batch(10) == []  # published: not offered again before the timeout
    assert box.ack(1) is False  # a duplicate PUBACK changes nothing
    assert box.receipt([(1, 3)]) == 3
    assert box.receipt([(1, 3)]) == 0  # a repeated receipt deletes nothing more
    stats = box.stats()
    assert (stats.depth, stats.awaiting_receipt, stats.receipted) == (2, 2, 3)
    assert box.receipt([(5, 9)]) == 1 and box.stats().depth == 1


def test_a_receipt_also_covers_envelopes_still_queued_or_in_flight(box: Outbox) -> None:
    queued = box.enqueue(sealed(1))
    flying = box.enqueue(sealed(2))
    box.mark_in_flight(flying, 7)
    assert box.receipt([(1, 2)]) == 2  # e.g. a republish the backend had stored already
    assert box.stats().depth == 0 and box.ack(flying) is False and queued


def test_no_receipt_within_the_timeout_publishes_again_in_order(
    box: Outbox, clock: FakeClock
) -> None:
    filled(box, 3)
    clock.advance(59.0)
    assert box.next_batch(10) == []
    clock.advance(2.0)
    assert [item.seq for item in box.next_batch(10)] == [1, 2, 3]
    assert box.stats().republished == 3


def test_a_clock_stepped_back_does_not_hold_envelopes_for_ever(
    box: Outbox, clock: FakeClock
) -> None:
    filled(box, 2)
    clock.set_time(T0 - 3600)  # NTP steps the clock back an hour
    assert [item.seq for item in box.next_batch(10)] == [1, 2]


def test_puback_mode_forgets_on_the_puback(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", signer=_unit.public(), delete_on="puback") as box:
        item = box.enqueue(sealed(1))
        box.mark_in_flight(item, 1)
        assert box.ack(item) and box.stats().depth == 0
        assert box.stats().delete_on == "puback"


_V1_SCHEMA = """
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
  seq INTEGER NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, mid INTEGER, sent_at REAL, payload BLOB NOT NULL);
CREATE INDEX outbox_created ON outbox(created);
CREATE INDEX outbox_queued ON outbox(id) WHERE mid IS NULL;
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""


def test_a_version_1_outbox_is_migrated_with_its_envelopes(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(_V1_SCHEMA)
    for seq in (1, 2):
        envelope = sealed(seq)
        conn.execute(
            "INSERT INTO outbox (topic, seq, size, created, payload, mid) VALUES (?,?,?,?,?,?)",
            (envelope.topic, seq, len(envelope.data), time.time(), bytes(envelope.data), 9),
        )
    conn.execute("PRAGMA user_version=1")
    conn.close()
    with Outbox(path, signer=_unit.public()) as box:
        assert [item.seq for item in box.next_batch(10)] == [1, 2]  # in flight: requeued
        assert box.receipt([(1, 1)]) == 1 and box.stats().depth == 1
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (2,)


# --- the unit's receipt processor ------------------------------------------------------------


def processor(box: Outbox, clock: FakeClock) -> ReceiptProcessor:
    return ReceiptProcessor(_unit, _backend.public(), box, clock=clock.time)


def test_a_backend_receipt_deletes_and_its_replay_does_nothing(
    box: Outbox, clock: FakeClock
) -> None:
    filled(box, 4)
    proc = processor(box, clock)
    topic, payload = receipt([(1, 2), (4, 4)])
    assert proc.handle(topic, payload) == 3
    filled_again = box.enqueue(sealed(5))
    assert proc.handle(topic, payload) == 0  # the same receipt again
    assert proc.stats.rejected == {"ReplayError": 1}
    assert box.stats().depth == 2 and filled_again


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("operator-signed", {"UnknownKeyError"}),
        ("for-another-unit", {"BadSignatureError", "BindingMismatchError", "DecryptError"}),
        ("expired", {"ExpiredError"}),
        ("garbage", {"MalformedEnvelopeError"}),
        ("truncated", {"MalformedEnvelopeError"}),
    ],
)
def test_receipts_that_do_not_open_delete_nothing(
    box: Outbox, clock: FakeClock, case: str, reason: set[str]
) -> None:
    filled(box, 3)
    proc = processor(box, clock)
    topic, payload = receipt([(1, 3)])
    if case == "operator-signed":  # only the backend's key may receipt
        topic, payload = receipt([(1, 3)], signer=_operator)
    elif case == "for-another-unit":  # a receipt sealed to another unit, moved to our topic
        _, payload = receipt([(1, 3)], device=_other)
    elif case == "expired":
        topic, payload = receipt([(1, 3)], expires_at=int(T0) - 1)
    elif case == "garbage":
        payload = b"\xa1\x01\x02"
    elif case == "truncated":
        payload = payload[: len(payload) // 2]
    assert proc.handle(topic, payload) == 0
    assert box.stats().depth == 3
    assert len(proc.stats.rejected) == 1 and set(proc.stats.rejected) <= reason


@pytest.mark.parametrize(
    "ranges",
    [[], [[3, 1]], [[1, 2], [2, 3]], [[5, 6], [1, 2]], [[-1, 2]], [[True, 2]], [[1]], "x",
     [[0, 1]] * (MAX_RANGES + 1)],
)  # fmt: skip
def test_malformed_ranges_are_refused(ranges: object) -> None:
    with pytest.raises(MalformedEnvelopeError):
        check_ranges(ranges)


def test_ranges_and_the_receipt_counter() -> None:
    assert receipt_ranges([5, 1, 2, 3, 9, 5]) == [(1, 3), (5, 5), (9, 9)]
    counter = ReceiptCounter(lambda: T0)  # a frozen clock: still strictly increasing
    values = [counter.next() for _ in range(100)]
    assert values == sorted(set(values))
    assert len({v & 0xFF for v in values}) == 1  # the process tag stays in the low byte


# --- against the real broker -------------------------------------------------------------------


def test_only_the_backend_may_publish_receipts_and_only_the_unit_read_them(
    mosquitto: Mosquitto, mqtt_pki: TestPki
) -> None:
    """mosquitto 2.0 grants a SUBSCRIBE it will not serve and checks read access on every
    delivery (test_broker_isolation): what matters is what arrives."""
    with (
        TestClient(mqtt_pki.device(UNIT), mosquitto.port) as unit,
        TestClient(mqtt_pki.device(OTHER), mosquitto.port) as spy,
        TestClient(mqtt_pki.operator("console"), mosquitto.port) as operator,
        TestClient(mqtt_pki.backend("dashboard"), mosquitto.port) as backend,
    ):
        assert not unit.subscribe(receipt_topic(UNIT)).is_failure
        spy.subscribe(receipt_topic(UNIT))
        spy.subscribe(receipt_topic("+"))
        forged = receipt([(1, 1)], signer=_operator)
        assert operator.publish(*forged).is_failure  # an operator may not publish receipts
        assert unit.expect(0.5) is None
        topic, payload = receipt([(1, 1)])
        assert not backend.publish(topic, payload).is_failure
        got = unit.expect()
        assert got is not None and bytes(got.payload) == payload
        assert spy.expect(0.5) is None  # another unit never reads it


def test_the_agents_outbox_empties_through_the_backends_receipts(harness: Harness) -> None:
    daemon = harness.start_agent()
    harness.wait_for(lambda r: r.type == "health")
    harness.wait_for(lambda r: r.type == "presence")
    deadline = time.monotonic() + 20
    receipts = daemon.receipts
    assert receipts is not None
    while time.monotonic() < deadline and receipts.stats.deleted < 3:
        time.sleep(0.1)
    assert receipts.stats.deleted >= 3, "no envelope was receipted"
    assert harness.receipter.stats.sent >= 1
    online = harness.wait_for(lambda r: r.type == "status")
    assert online.message["body"] == {"state": "online", "delivery": "receipt"}
    summary = harness.stop_agent()
    assert summary is not None
    assert DEVICE


def test_command_acks_go_on_the_puback_since_no_backend_can_receipt_them(box: Outbox) -> None:
    from contract.topics import ack_topic

    ack = seal(
        {"type": "cmd_ack", "n": 1},
        sender=_unit,
        recipient=_operator.public(),
        topic=ack_topic(UNIT),
        seq=50,
        device=UNIT,
    )
    item = box.enqueue(ack)
    box.mark_in_flight(item, 3)
    assert box.ack(item)
    assert box.stats().depth == 0


def test_the_backend_stores_a_late_republish_instead_of_refusing_it_as_a_replay() -> None:
    """Found by `camveil chaos --seed 15`: with a 1024-wide replay window the listener refused
    an envelope published again after 1024 newer ones (never stored) as a "replay" and receipted
    it; the unit forgot it: 54 of 2011 lost. Exact de-duplication decides instead."""
    from dashboard.listener import MemoryDedupe, Opener

    opener = Opener(_backend, PeerKeys([_unit.public()]), MemoryDedupe())
    stored: list[int] = []
    opener.on_duplicate = lambda device, seq: stored.append(-seq)
    assert opener.open(event_topic(UNIT, "presence"), bytes(sealed(5000).data)) is not None
    late = sealed(3)
    assert opener.open(late.topic, bytes(late.data)) is not None  # 4997 behind: still stored
    assert opener.open(late.topic, bytes(late.data)) is None  # a true duplicate
    assert stored == [-3]  # ... which is receipted again, being stored


def test_while_no_receipt_comes_republishing_backs_off_and_a_receipt_resets_it(
    box: Outbox, clock: FakeClock
) -> None:
    """A backend down for hours: the unit keeps everything but does not flood the broker with
    the same envelopes every minute (60, 120, 240 ... 900 s); the first receipt resets it."""

    def republished() -> list[int]:
        items = box.next_batch(10)
        for mid, item in enumerate(items, start=1):
            box.mark_in_flight(item.id, mid)
            box.ack(item.id)
        return [item.seq for item in items]

    filled(box, 2)
    clock.advance(61)
    assert republished() == [1, 2]  # after 60 s
    clock.advance(61)
    assert republished() == []  # the next round waits 120 s
    clock.advance(60)
    assert republished() == [1, 2]
    clock.advance(200)
    assert republished() == []  # then 240 s
    assert box.receipt([(2, 2)]) == 1  # the backend is back
    clock.advance(61)
    assert republished() == [1]  # 60 s again
