"""The durable outbox on real SQLite files: order, acks, requeue, bounds, counters, disk full,
corruption, threads, and kill -9 in the middle of writes."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import TestPki
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agent.outbox import Outbox
from contract.envelope import Identity, SealedEnvelope, seal
from contract.errors import OutboxCorruptError, OutboxError, OutboxFullError, UnredactedDataError
from contract.topics import event_topic, status_topic
from hw.clock import FakeClock

DEVICE = "cv-test-0001"
TOPIC = event_topic(DEVICE, "presence")

_device = Identity.generate(DEVICE)
_backend = Identity.generate("backend-test").public()
SIGNER = _device.public()


def sealed(seq: int, pad: int = 0, topic: str = TOPIC) -> SealedEnvelope:
    body: dict[str, Any] = {"type": "presence", "n": seq}
    if pad:
        body["pad"] = b"\x00" * pad
    return seal(body, sender=_device, recipient=_backend, topic=topic, seq=seq, device=DEVICE)


def test_batches_are_oldest_first_and_skip_in_flight(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box:
        ids = [box.enqueue(sealed(seq)) for seq in range(5)]
        assert ids == sorted(ids)
        batch = box.next_batch(3)
        assert [item.id for item in batch] == ids[:3]
        assert [item.seq for item in batch] == [0, 1, 2]
        assert all(item.topic == TOPIC for item in batch)
        assert batch[0].payload == sealed_payload(box, ids[0])
        assert box.mark_in_flight(ids[0], mid=17)
        assert box.mark_in_flight(ids[1], mid=18)
        assert [item.id for item in box.next_batch(10)] == ids[2:]
        assert box.stats().in_flight == 2


def sealed_payload(box: Outbox, item_id: int) -> bytes:
    with sqlite3.connect(box.path) as conn:
        row = conn.execute("SELECT payload FROM outbox WHERE id = ?", (item_id,)).fetchone()
    conn.close()
    return bytes(row[0])


def test_payload_is_exactly_the_sealed_bytes(tmp_path: Path) -> None:
    env = sealed(3)
    with Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box:
        box.enqueue(env, TOPIC)
        (item,) = box.next_batch(1)
    assert item.payload == env.data
    assert item.size == len(env.data)
    assert item.attempts == 0


def test_ack_deletes_and_is_idempotent(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box:
        a, b = box.enqueue(sealed(1)), box.enqueue(sealed(2))
        size_b = box.next_batch(2)[1].size
        box.mark_in_flight(a, mid=1)
        assert box.ack(a) is True
        assert box.ack(a) is False  # a duplicate PUBACK, or already evicted
        assert [item.id for item in box.next_batch(10)] == [b]
        stats = box.stats()
        assert (stats.depth, stats.bytes, stats.in_flight) == (1, size_b, 0)
    with Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box:
        assert [item.id for item in box.next_batch(10)] == [b]


def test_ids_are_never_reused_after_the_newest_row_is_acked(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box:
        first = box.enqueue(sealed(1))
        box.ack(first)
    with Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box:
        second = box.enqueue(sealed(2))
        assert second > first
        assert box.ack(first) is False  # a stale PUBACK for the old id deletes nothing
        assert box.stats().depth == 1


def test_in_flight_is_requeued_on_reconnect_and_on_restart(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        ids = [box.enqueue(sealed(seq)) for seq in range(3)]
        for mid, item in enumerate(box.next_batch(10), start=1):
            box.mark_in_flight(item.id, mid)
        assert box.next_batch(10) == []
        assert box.requeue_in_flight() == 3  # reconnect: everything unacked goes again
        again = box.next_batch(10)
        assert [item.id for item in again] == ids
        assert all(item.attempts == 1 for item in again)
        box.mark_in_flight(ids[1], mid=9)
    with Outbox(
        path, signer=SIGNER, delete_on="puback"
    ) as box:  # restart: in-flight rows are queued again at open
        items = box.next_batch(10)
        assert [item.id for item in items] == ids
        assert items[1].attempts == 2
        assert box.stats().in_flight == 0


def test_release_makes_a_refused_row_eligible_again(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box:
        a = box.enqueue(sealed(1))
        box.mark_in_flight(a, mid=5)
        assert box.next_batch(1) == []
        assert box.release(a)  # PUBACK with a failure reason: the broker did not take it
        assert [item.id for item in box.next_batch(1)] == [a]
        assert box.release(12345) is False


def test_items_carry_verified_sealed_envelopes(tmp_path: Path) -> None:
    env = sealed(7)
    path = tmp_path / "o.db"
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        box.enqueue(env)
    with Outbox(
        path, signer=SIGNER, delete_on="puback"
    ) as box:  # after a restart: rebuilt from the row
        (item,) = box.next_batch(1)
    assert isinstance(item.envelope, SealedEnvelope)
    assert (item.envelope.data, item.envelope.topic, item.envelope.seq) == (env.data, TOPIC, 7)


def test_a_row_damaged_on_disk_is_evicted_as_invalid_not_published(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        bad, good = box.enqueue(sealed(1)), box.enqueue(sealed(2))
    conn = sqlite3.connect(path)
    with conn:
        (payload,) = conn.execute("SELECT payload FROM outbox WHERE id = ?", (bad,)).fetchone()
        flipped = bytes(payload[:-1]) + bytes([payload[-1] ^ 1])  # one bit of the signature
        conn.execute("UPDATE outbox SET payload = ? WHERE id = ?", (flipped, bad))
    conn.close()
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        assert [item.id for item in box.next_batch(10)] == [good]
        stats = box.stats()
        assert stats.evicted_total == {"invalid": 1}
        assert stats.depth == 1


def test_rows_of_other_keys_are_refused_in_and_evicted_out(tmp_path: Path) -> None:
    other = Identity.generate(DEVICE)  # same id, re-provisioned keys
    path = tmp_path / "o.db"
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        box.enqueue(sealed(1))
        stranger = seal(
            {},
            sender=Identity.generate("cv-other"),
            recipient=_backend,
            topic=status_topic("cv-other"),
            seq=1,
            device="cv-other",
        )
        with pytest.raises(ValueError, match="signed by"):
            box.enqueue(stranger)
    with Outbox(path, signer=other.public(), delete_on="puback") as box:
        assert box.next_batch(10) == []
        assert box.stats().evicted_total == {"invalid": 1}


def test_byte_bound_evicts_oldest_first_and_counts(tmp_path: Path) -> None:
    size = len(sealed(0).data)
    with Outbox(
        tmp_path / "o.db", max_bytes=int(size * 3.5), signer=SIGNER, delete_on="puback"
    ) as box:
        ids = [box.enqueue(sealed(seq)) for seq in range(6)]
        assert [item.id for item in box.next_batch(10)] == ids[3:]
        stats = box.stats()
        assert stats.depth == 3
        assert stats.bytes == 3 * size <= int(size * 3.5)
        assert stats.evicted_total == {"bytes": 3}


def test_an_envelope_larger_than_the_bound_is_refused_and_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=1000, signer=SIGNER, delete_on="puback") as box:
        keep = box.enqueue(sealed(1))
        with pytest.raises(OutboxFullError, match="exceeds the whole outbox bound"):
            box.enqueue(sealed(2, pad=2000))
        assert [item.id for item in box.next_batch(10)] == [keep]
        assert box.stats().rejected_total == {"too_large": 1}


def test_age_bound_evicts_and_counts(tmp_path: Path) -> None:
    clock = FakeClock(epoch=1_764_000_000.0)
    with Outbox(
        tmp_path / "o.db", max_age_s=60.0, clock=clock.time, signer=SIGNER, delete_on="puback"
    ) as box:
        old = [box.enqueue(sealed(seq)) for seq in range(3)]
        clock.advance(30)
        young = box.enqueue(sealed(3))
        assert box.stats().oldest_age_s == pytest.approx(30.0)
        clock.advance(40)  # the first three are 70 s old now
        assert [item.id for item in box.next_batch(10)] == [young]
        stats = box.stats()
        assert stats.evicted_total == {"age": 3}
        assert stats.depth == 1
        assert stats.oldest_age_s == pytest.approx(40.0)
        assert not set(old) & {item.id for item in box.next_batch(10)}
        clock.advance(100)
        box.enqueue(sealed(4))  # enqueue prunes too
        assert box.stats().evicted_total == {"age": 4}


def test_counters_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    size = len(sealed(0).data)
    clock = FakeClock(epoch=1_764_000_000.0)
    with Outbox(
        path, max_bytes=size * 2, max_age_s=10, clock=clock.time, signer=SIGNER, delete_on="puback"
    ) as box:
        for seq in range(4):
            box.enqueue(sealed(seq))
        clock.advance(11)
        assert box.prune() == 2
    with Outbox(
        path, max_bytes=size * 2, clock=clock.time, signer=SIGNER, delete_on="puback"
    ) as box:
        stats = box.stats()
        assert stats.evicted_total == {"bytes": 2, "age": 2}
        assert stats.depth == 0


@pytest.mark.parametrize(
    "bad",
    [
        b"\xd2\x84raw cose bytes",
        bytearray(b"raw"),
        {"type": "presence", "body": {}},
        "a string",
        None,
    ],
)
def test_refuses_anything_but_a_sealed_envelope(tmp_path: Path, bad: object) -> None:
    with Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box:
        with pytest.raises(UnredactedDataError, match="only SealedEnvelope"):
            box.enqueue(bad)  # type: ignore[arg-type]
        assert box.stats().depth == 0


def test_refuses_a_look_alike_and_a_forged_envelope(tmp_path: Path) -> None:
    class LookAlike:
        data = b"bytes"
        topic = TOPIC
        seq = 1

    with pytest.raises(TypeError):  # only seal() / restore_sealed() can make one
        SealedEnvelope(data=b"x", topic=TOPIC, device=DEVICE, sender_kid=DEVICE, seq=1)
    with (
        Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box,
        pytest.raises(UnredactedDataError),
    ):
        box.enqueue(LookAlike())  # type: ignore[arg-type]


def test_topic_must_match_the_envelope(tmp_path: Path) -> None:
    with (
        Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box,
        pytest.raises(ValueError, match="differs"),
    ):
        box.enqueue(sealed(1), event_topic(DEVICE, "tamper"))


def test_disk_full_evicts_oldest_counts_and_keeps_going(tmp_path: Path) -> None:
    """``max_db_bytes`` sets PRAGMA max_page_count: SQLite then reports 'database or disk is
    full' exactly as on a full filesystem."""
    path = tmp_path / "o.db"
    with Outbox(path, max_db_bytes=96 * 1024, signer=SIGNER, delete_on="puback") as box:
        ids = [box.enqueue(sealed(seq, pad=6000)) for seq in range(40)]
        stats = box.stats()
        assert stats.evicted_total.get("disk_full", 0) > 0
        assert stats.depth + stats.evicted_total["disk_full"] == 40
        remaining = [item.id for item in box.next_batch(100)]
        assert remaining == ids[-len(remaining) :]  # the oldest went first
        full_depth = box.stats().depth
        box.enqueue(sealed(40, pad=6000))  # at the cap: evicts what the new one needs, no more
        assert box.stats().depth >= full_depth - 1
        assert path.stat().st_size <= 96 * 1024
        with pytest.raises(OutboxFullError, match="full"):
            box.enqueue(sealed(99, pad=200_000))  # fits max_bytes, never fits the database
        assert box.stats().rejected_total == {"full": 1}
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        stats = box.stats()
        assert stats.rejected_total == {"full": 1}
        assert stats.evicted_total["disk_full"] >= 1


def test_a_real_sqlite_full_error_becomes_outbox_full_error(tmp_path: Path) -> None:
    # One page short of holding anything: even the first insert cannot be stored.
    with Outbox(tmp_path / "o.db", max_db_bytes=8 * 4096, signer=SIGNER, delete_on="puback") as box:
        with pytest.raises(OutboxFullError):
            box.enqueue(sealed(1, pad=60_000))
        assert box.stats().depth == 0


def test_garbage_file_is_detected_at_open(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(OutboxCorruptError, match=r"move .* aside"):
        Outbox(path, signer=SIGNER, delete_on="puback").open()


def _corrupt_a_btree_page(path: Path) -> None:
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        for seq in range(50):
            box.enqueue(sealed(seq, pad=1500))
    raw = bytearray(path.read_bytes())
    page = 4096
    for n in range(2, len(raw) // page):  # wreck the b-tree page headers, keep the file header
        raw[n * page : n * page + 12] = b"\xff" * 12
    path.write_bytes(bytes(raw))


def test_damaged_pages_are_detected_at_open(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    _corrupt_a_btree_page(path)
    with pytest.raises(OutboxCorruptError, match="corrupt"):
        Outbox(path, signer=SIGNER, delete_on="puback").open()


def test_corrupt_file_is_moved_aside_and_counted_when_recovery_is_on(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    _corrupt_a_btree_page(path)
    with Outbox(path, recover_corrupt=True, signer=SIGNER, delete_on="puback") as box:
        stats = box.stats()
        assert stats.corrupt_recovered == 1
        assert stats.depth == 0
        box.enqueue(sealed(1))
    aside = list(tmp_path.glob("o.db.corrupt-*"))
    assert len(aside) == 1
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        assert box.stats().corrupt_recovered == 1
        assert box.stats().depth == 1


def test_threads_enqueue_mark_and_ack_concurrently(tmp_path: Path) -> None:
    envs = [sealed(seq) for seq in range(200)]
    acked: list[int] = []
    with Outbox(tmp_path / "o.db", synchronous="NORMAL", signer=SIGNER, delete_on="puback") as box:

        def producer(part: list[SealedEnvelope]) -> None:
            for env in part:
                box.enqueue(env)

        def transport() -> None:  # paho's thread: publish, then PUBACK
            deadline = time.monotonic() + 30
            while len(acked) < len(envs) and time.monotonic() < deadline:
                for item in box.next_batch(16):
                    box.mark_in_flight(item.id, mid=item.id % 65535 + 1)
                    assert box.ack(item.id)
                    acked.append(item.seq)

        threads = [threading.Thread(target=producer, args=(envs[i::4],)) for i in range(4)]
        threads.append(threading.Thread(target=transport))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(acked) == list(range(200))
        assert box.stats().depth == 0
        assert box.stats().bytes == 0


def test_use_outside_the_context_is_an_error(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback")
    assert not (tmp_path / "o.db").exists()  # the constructor only stores
    with pytest.raises(OutboxError, match="not open"):
        box.enqueue(sealed(1))
    with box:
        box.enqueue(sealed(1))
    with pytest.raises(OutboxError, match="not open"):
        box.next_batch(1)


def test_a_database_held_by_another_process_is_an_outbox_error(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, signer=SIGNER, delete_on="puback", busy_timeout_s=0.05) as box:
        box.enqueue(sealed(1))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # e.g. an operator's sqlite3 shell mid-transaction
        try:
            with pytest.raises(OutboxError, match="locked"):
                box.enqueue(sealed(2))
            assert [item.seq for item in box.next_batch(10)] == [1]  # reading still works
        finally:
            other.execute("ROLLBACK")
            other.close()
        box.enqueue(sealed(2))
        assert box.stats().depth == 2


def test_throughput_with_durability_on(tmp_path: Path) -> None:
    """enqueue (fsynced) + mark_in_flight + ack per event, the default durability settings."""
    envs = [sealed(seq, pad=300) for seq in range(150)]
    with Outbox(tmp_path / "o.db", signer=SIGNER, delete_on="puback") as box:
        start = time.perf_counter()
        for env in envs:
            item_id = box.enqueue(env)
            box.mark_in_flight(item_id, mid=1)
            box.ack(item_id)
        rate = len(envs) / (time.perf_counter() - start)
    print(f"outbox enqueue+ack with synchronous=FULL/NORMAL: {rate:.0f} events/s")
    assert rate > 10  # one fsync per event; far below this the disk is the problem


_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from contract.envelope import Identity, seal
    from agent.outbox import Outbox
    from contract.topics import event_topic

    path, out_fd, start = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    device = Identity.generate("cv-test-0001")
    backend = Identity.generate("backend-test").public()
    topic = event_topic("cv-test-0001", "presence")
    with Outbox(path, signer=device.public(), delete_on="puback") as box:
        os.write(out_fd, b"R\\n")
        seq = start
        while True:
            env = seal({"n": seq, "pad": os.urandom(seq % 3000)}, sender=device,
                       recipient=backend, topic=topic, seq=seq, device="cv-test-0001")
            item = box.enqueue(env)
            os.write(out_fd, f"E {item} {seq}\\n".encode())
            if seq % 3 == 0:
                box.mark_in_flight(item, mid=seq % 65535 + 1)
                if box.ack(item):
                    os.write(out_fd, f"A {item}\\n".encode())
            seq += 1
    """
)


def test_kill_9_mid_write_loses_no_acknowledged_enqueue(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    committed: dict[int, int] = {}
    acked: set[int] = set()
    # the child acks every third envelope right after storing it: killed between ack() and its
    # "A" line, the last one of a round is gone although the parent never heard of the ack
    maybe_acked: set[int] = set()
    seq = 0
    for _round in range(6):
        read_fd, write_fd = os.pipe()
        child = subprocess.Popen(
            [sys.executable, str(script), str(path), str(write_fd), str(seq)],
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        reader = os.fdopen(read_fd, "rb")
        assert reader.readline() == b"R\n"  # opened
        # let it commit a few (a loaded disk is slow), then kill it at a random moment of writing
        lines = [reader.readline() for _ in range(3)]
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
        last: tuple[int, int] | None = None
        for line in b"".join(lines).decode().splitlines() + reader.read().decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "E":
                committed[int(parts[1])] = int(parts[2])
                seq = max(seq, int(parts[2]) + 1)
                last = (int(parts[1]), int(parts[2]))
            elif len(parts) == 2 and parts[0] == "A":
                acked.add(int(parts[1]))
        reader.close()
        if last is not None and last[1] % 3 == 0 and last[0] not in acked:
            maybe_acked.add(last[0])
        seq += 1  # the seq in progress at the kill may or may not be stored

        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            present = dict(conn.execute("SELECT id, seq FROM outbox").fetchall())
        finally:
            conn.close()
        for item_id, item_seq in committed.items():
            if item_id in acked:
                assert item_id not in present
            elif item_id in maybe_acked and item_id not in present:
                continue
            else:
                assert present.get(item_id) == item_seq, f"committed id {item_id} lost"
        with Outbox(path, signer=SIGNER, delete_on="puback") as box:  # opens fine and agrees
            assert box.stats().depth == len(present)
    assert len(committed) >= 12, "the child never got going"


class OutboxModel(RuleBasedStateMachine):
    """The outbox behaves like a simple ordered map of (seq, in flight), across reopen too."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-model-"))
        self.box = Outbox(
            self.dir / "o.db", signer=SIGNER, delete_on="puback", synchronous="NORMAL"
        )
        self.box.open()
        self.model: dict[int, tuple[int, bool]] = {}  # id -> (seq, in flight)
        self.sizes: dict[int, int] = {}
        self.seq = 0

    @rule()
    def enqueue(self) -> None:
        env = _MODEL_ENVELOPES[self.seq % len(_MODEL_ENVELOPES)]
        item_id = self.box.enqueue(env)
        assert item_id not in self.model and all(item_id > i for i in self.model)
        self.model[item_id] = (env.seq, False)
        self.sizes[item_id] = len(env.data)
        self.seq += 1

    @rule(limit=st.integers(0, 6))
    def next_batch(self, limit: int) -> None:
        got = [(item.id, item.seq) for item in self.box.next_batch(limit)]
        queued = sorted((i, seq) for i, (seq, flying) in self.model.items() if not flying)
        assert got == queued[:limit]

    @precondition(lambda self: any(not flying for _, flying in self.model.values()))
    @rule(data=st.data())
    def mark_in_flight(self, data: st.DataObject) -> None:
        queued = sorted(i for i, (_, flying) in self.model.items() if not flying)
        item_id = data.draw(st.sampled_from(queued))
        assert self.box.mark_in_flight(item_id, mid=item_id % 65535 + 1)
        self.model[item_id] = (self.model[item_id][0], True)

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        candidates = [*self.model, 10_000]  # and an id that never existed
        item_id = data.draw(st.sampled_from(candidates))
        assert self.box.ack(item_id) is (item_id in self.model)
        self.model.pop(item_id, None)

    @precondition(lambda self: any(flying for _, flying in self.model.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        flying = sorted(i for i, (_, f) in self.model.items() if f)
        item_id = data.draw(st.sampled_from(flying))
        assert self.box.release(item_id)
        self.model[item_id] = (self.model[item_id][0], False)

    @rule()
    def requeue(self) -> None:
        n = sum(flying for _, flying in self.model.values())
        assert self.box.requeue_in_flight() == n
        self.model = {i: (seq, False) for i, (seq, _) in self.model.items()}

    @rule()
    def reopen(self) -> None:
        self.box.close()
        self.box.open()
        self.model = {i: (seq, False) for i, (seq, _) in self.model.items()}

    @invariant()
    def stats_agree(self) -> None:
        stats = self.box.stats()
        assert stats.depth == len(self.model)
        assert stats.bytes == sum(self.sizes[i] for i in self.model)
        assert stats.in_flight == sum(flying for _, flying in self.model.values())
        assert stats.evicted_total == {}

    def teardown(self) -> None:
        self.box.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_MODEL_ENVELOPES = [sealed(seq, pad=seq * 7) for seq in range(8)]
OutboxModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_outbox_model = OutboxModel.TestCase


# --- a bad row, a full small filesystem (issue 14) ---------------------------------------------


def _raw_update(path: Path, sql: str, params: tuple[Any, ...]) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def test_a_row_with_invalid_utf8_topic_or_bad_payload_is_evicted_and_never_blocks(
    tmp_path: Path,
) -> None:
    """Raw sqlite writes one topic that is not UTF-8, one payload that is not CBOR and one size
    that is not a number: the rows after them are delivered, the three are evicted and counted
    ``invalid``."""
    path = tmp_path / "o.db"
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        ids = [box.enqueue(sealed(seq)) for seq in range(31)]
    bad_topic, bad_payload, bad_size = ids[0], ids[5], ids[9]
    _raw_update(
        path,
        "UPDATE outbox SET topic = CAST(? AS TEXT) WHERE id = ?",
        (b"camveil/v1/\xff\xfe/event/presence", bad_topic),
    )
    _raw_update(path, "UPDATE outbox SET payload = ? WHERE id = ?", (b"\xff\x00junk", bad_payload))
    _raw_update(path, "UPDATE outbox SET size = 'garbage' WHERE id = ?", (bad_size,))
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        delivered: list[int] = []
        for _ in range(10):
            batch = box.next_batch(8)
            if not batch:
                break
            for mid, item in enumerate(batch, start=1):
                assert box.mark_in_flight(item.id, mid)
                assert box.ack(item.id)
                delivered.append(item.id)
        assert delivered == [i for i in ids if i not in (bad_topic, bad_payload, bad_size)]
        stats = box.stats()
        assert stats.evicted_total == {"invalid": 3}
        assert stats.depth == 0
        assert stats.bytes == 0


def test_outbox_files_are_private_from_creation(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "o.db"
        with Outbox(path, signer=SIGNER, delete_on="puback") as box:
            box.enqueue(sealed(1))
            modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.is_file()}
    finally:
        os.umask(old)
    assert {"o.db", "o.db-wal", "o.db-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB filesystem (tmpfs), unmounted afterwards. Needs root (CI runs as root)."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot mount a 2 MB tmpfs at {mount_point} ({done.stderr.strip()}): this test "
            "needs root (or CAP_SYS_ADMIN), as CI has"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill_the_rest(directory: Path) -> int:
    """Write a file until the filesystem says ENOSPC; how many bytes it took."""
    written = 0
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\xaa" * 4096)
                written += 4096
        except OSError:
            pass
    return written


def test_a_full_2mb_filesystem_keeps_storing_new_events_and_reopens(small_fs: Path) -> None:
    """12,000 real sealed envelopes through the real Outbox on a 2 MB tmpfs: new ones keep
    being stored (the oldest evicted and counted), the WAL never fills the disk, a reopen on the
    full disk works, and a publish/ack cycle drains what is left."""
    path = small_fs / "outbox.db"
    total = 12_000
    envelopes = [sealed(seq) for seq in range(total)]
    stored: list[int] = []
    refused = 0
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        for env in envelopes:
            try:
                box.enqueue(env)
            except OutboxFullError:
                refused += 1
            else:
                stored.append(env.seq)
        stats = box.stats()
    evicted = sum(stats.evicted_total.values())
    print(
        f"\n2 MB fs: {len(stored)} of {total} stored, {refused} refused, {evicted} evicted "
        f"({dict(stats.evicted_total)}), {stats.depth} left"
    )
    assert refused == 0
    assert stored[-1000:] == list(range(total - 1000, total))  # new ones keep being stored
    assert evicted > 0
    assert stats.depth + evicted == total  # every envelope is stored, evicted or counted
    # the disk is full to the last byte (the outbox's own use plus a filler); reopen anyway
    _fill_the_rest(small_fs)
    with Outbox(path, signer=SIGNER, delete_on="puback") as box:
        before = box.stats()  # opening may evict the oldest to get its disk reserve back
        assert 0 < before.depth <= stats.depth
        assert before.depth + sum(before.evicted_total.values()) == total
        for seq in range(total, total + 200):  # and keep storing new ones
            box.enqueue(sealed(seq))
        after = box.stats()
        newest = [item.seq for item in box.next_batch(100_000)]
        assert newest[-200:] == list(range(total, total + 200))
        assert newest == sorted(newest)
        assert after.depth + sum(after.evicted_total.values()) == total + 200
        box.requeue_in_flight()
        drained = 0
        mid = 0
        while batch := box.next_batch(64):
            for item in batch:
                mid += 1
                assert box.mark_in_flight(item.id, mid)
                assert box.ack(item.id)
                drained += 1
        assert drained == after.depth
        assert box.stats().depth == 0
    with Outbox(
        path, signer=SIGNER, delete_on="puback"
    ) as box:  # and a clean restart after the drain
        assert box.stats().depth == 0


class ConnectedSender:
    """The publisher's edge to the transport (agent.publisher.Sender), always connected."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[SealedEnvelope] = []

    def publish(self, topic: str, payload: SealedEnvelope, *, retain: bool = False) -> int:
        self.sent.append(payload)
        return len(self.sent)


class GatedSender(ConnectedSender):
    """Takes ``open_for`` envelopes, then blocks each publish until ``gate`` is set."""

    def __init__(self, open_for: int) -> None:
        super().__init__()
        self.open_for = open_for
        self.gate = threading.Event()

    def publish(self, topic: str, payload: SealedEnvelope, *, retain: bool = False) -> int:
        if len(self.sent) >= self.open_for:
            self.gate.wait(10)
        return super().publish(topic, payload, retain=retain)


def test_a_long_drain_after_failures_is_not_reported_as_failing(tmp_path: Path) -> None:
    """After an outage of the outbox, the first batch that goes through ends the failure: a
    backlog of many batches still draining must not keep the watchdog withheld (systemd would
    restart the unit in the middle of delivering what it kept)."""
    from agent.publisher import Publisher

    path = tmp_path / "o.db"
    with Outbox(path, signer=SIGNER, delete_on="puback", busy_timeout_s=0.05) as box:
        for seq in range(12):
            box.enqueue(sealed(seq))
        publisher = Publisher(box, batch=4, idle_wait_s=0.05)
        sender = GatedSender(open_for=6)  # one whole batch and part of the next, then stuck
        publisher.bind(sender)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the write lock: every round fails
        stop = threading.Event()
        thread = threading.Thread(target=publisher.run, args=(stop,))
        thread.start()
        try:
            publisher.wake()
            deadline = time.monotonic() + 10
            while publisher.failures < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert publisher.failures >= 1 and publisher.failing_for() > 0.0
            holder.execute("COMMIT")
            holder.close()
            deadline = time.monotonic() + 10
            while len(sender.sent) < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.1)  # the second batch is stuck in the sender: the drain is not over
            assert len(sender.sent) == 6
            assert publisher.failing_for() == 0.0
            sender.gate.set()
            deadline = time.monotonic() + 10
            while {env.seq for env in sender.sent} != set(range(12)) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.02)
            # an envelope sent in a failed round goes again (at least once; the backend dedups)
            assert {env.seq for env in sender.sent} == set(range(12))
        finally:
            sender.gate.set()
            stop.set()
            thread.join(timeout=10)


def test_a_publisher_that_keeps_failing_withholds_the_watchdog(tmp_path: Path) -> None:
    """Another process holds the outbox database's write lock (an operator's sqlite3 shell,
    say) while a row is due for age eviction: every publishing round raises. The publisher
    reports how long it has been failing, the watchdog (wired as the daemon wires it) stops
    pinging, and both recover when the lock goes."""
    from agent.publisher import Publisher
    from agent.watchdog import Notifier, Watchdog

    path = tmp_path / "o.db"
    clock = FakeClock(epoch=1_764_000_000.0)
    with Outbox(
        path, signer=SIGNER, delete_on="puback", busy_timeout_s=0.05, max_age_s=60, clock=clock.time
    ) as box:
        box.enqueue(sealed(99))  # the one that ages out
        clock.advance(30)
        for seq in range(5):
            box.enqueue(sealed(seq))
        clock.advance(40)
        publisher = Publisher(box, idle_wait_s=0.05)
        sender = ConnectedSender()
        publisher.bind(sender)
        dog = Watchdog(
            Notifier(None),
            last_frame_at=time.monotonic,
            outbox_writable=lambda: True,
            publishing_ok=lambda: publisher.failing_for() < 0.5,
        )
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held
        stop = threading.Event()
        thread = threading.Thread(target=publisher.run, args=(stop,))
        thread.start()
        try:
            publisher.wake()
            deadline = time.monotonic() + 10
            while publisher.failing_for() < 0.6 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert publisher.failures >= 1
            assert sender.sent == []
            health = dog.tick()
            assert not health.ok
            assert "publishing from the outbox keeps failing" in health.status
            holder.execute("COMMIT")
            holder.close()
            deadline = time.monotonic() + 10
            # the envelopes reach the sender inside a batch; the batch's end clears the failure
            while (len(sender.sent) < 5 or publisher.failing_for() > 0.0) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.05)
            assert [env.seq for env in sender.sent] == [0, 1, 2, 3, 4]
            assert publisher.failing_for() == 0.0
            assert dog.tick().ok
            assert box.stats().evicted_total == {"age": 1}
        finally:
            stop.set()
            publisher.wake()
            thread.join(10)
            with contextlib.suppress(sqlite3.Error):
                holder.close()


def test_a_full_disk_with_nothing_to_evict_is_counted_not_a_restart_loop(
    small_fs: Path, tmp_path: Path, mqtt_pki: TestPki
) -> None:
    """The disk fills up (another writer) while the outbox is empty: the event is refused and
    counted (``rejected.full``), but the emitter does not report the store as failing, so the
    watchdog keeps pinging (a restart frees no disk); once there is room, events are stored."""
    from agent.events import EventBuilder, LinkState, new_boot_id
    from agent.publisher import Emitter
    from agent.sequence import SequenceStore
    from agent.stats import PipelineStats
    from agent.unitstate import UnitState
    from tools.devpki import write_unit_state

    write_unit_state(
        tmp_path / "unit",
        ca=mqtt_pki.ca,
        device_id=DEVICE,
        broker_url="mqtts://127.0.0.1:1",
        backend=_backend,
        operator=Identity.generate("operator").public(),
    )
    unit = UnitState.load(tmp_path / "unit")
    with (
        SequenceStore(unit.seq_path) as seqs,
        Outbox(small_fs / "outbox.db", signer=unit.identity.public(), reserve_bytes=0) as box,
    ):
        emitter = Emitter(
            unit, EventBuilder(DEVICE, new_boot_id(), seqs), box, lambda: None, PipelineStats()
        )
        _fill_the_rest(small_fs)
        emitter.emit(lambda b: b.status(LinkState.ONLINE))
        assert box.stats().rejected_total == {"full": 1}
        assert box.stats().depth == 0
        assert emitter.store_failing is False
        (small_fs / "filler").unlink()
        emitter.emit(lambda b: b.status(LinkState.ONLINE))
        assert box.stats().depth == 1
        assert emitter.store_failing is False
