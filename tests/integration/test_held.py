"""Held envelopes in a real SQLite store: bounded per claimed device, in total, in bytes and by
age, oldest first, every eviction counted; retried by key id; released."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard import held
from dashboard.store import Store


def _hold(store: Store, items: list[tuple[str, str, bytes]], now: float, limits: held.HeldLimits):  # type: ignore[no-untyped-def]
    with store.transaction() as conn:
        return held.hold(
            conn,
            [(d, kid, f"camveil/v1/{d}/event/presence", p) for d, kid, p in items],
            now,
            limits,
        )


def test_limits_evict_oldest_first_and_count(tmp_path: Path) -> None:
    limits = held.HeldLimits(per_device=3, total=5, total_bytes=10_000, max_age_s=100.0)
    with Store(tmp_path / "d.db") as store:
        evicted = _hold(store, [("a", "a", bytes([i]) * 10) for i in range(5)], 1000.0, limits)
        assert evicted == {"a": 2}
        assert held.summary(store)["a"].count == 3
        rows = held.retryable(store, lambda kid: True)
        assert [r.payload[0] for r in rows] == [2, 3, 4]  # the two oldest went
        evicted = _hold(store, [("b", "b", b"x" * 10), ("c", "c", b"y" * 10)], 1001.0, limits)
        assert evicted == {}
        evicted = _hold(store, [("d", "d", b"z" * 10)], 1002.0, limits)
        assert evicted == {"a": 1}  # total of 5: the oldest of all
        evicted = _hold(store, [("e", "e", b"w" * 9_990)], 1003.0, limits)  # bytes
        assert sum(evicted.values()) >= 1
        assert sum(i.bytes for i in held.summary(store).values()) <= 10_000
        evicted = _hold(store, [("f", "f", b"v")], 1200.0, limits)  # the rest is too old now
        assert set(held.summary(store)) == {"f"}
        assert sum(evicted.values()) >= 1


def test_retryable_filters_by_key_id_and_release_removes(tmp_path: Path) -> None:
    limits = held.HeldLimits()
    with Store(tmp_path / "d.db") as store:
        _hold(store, [("a", "a", b"1"), ("b", "b", b"2"), ("a", "a", b"3")], 1.0, limits)
        rows = held.retryable(store, lambda kid: kid == "a", limit=1)
        assert [r.payload for r in rows] == [b"1"]
        more = held.retryable(store, lambda kid: kid == "a", after_id=rows[0].id, limit=1)
        assert [r.payload for r in more] == [b"3"]  # skips b's row in between
        assert held.retryable(store, lambda kid: kid == "a", after_id=more[0].id) == []
        with store.transaction() as conn:
            held.release(conn, [rows[0].id, more[0].id])
        assert {d: i.count for d, i in held.summary(store).items()} == {"b": 1}


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        held.HeldLimits(per_device=0)
