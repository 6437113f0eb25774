"""The publishing path on its own (agent.publishing.PublishingPath), against a real mosquitto and
the backend's real listener and receipter (the ``harness`` fixture, without the daemon): what
is emitted arrives and is forgotten on the receipt (or the PUBACK), the caller sees connection
events before the "online" status, stopping drains then disconnects with the will, and what a
dead broker could not take stays in the outbox and goes out after the next start."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from harness import Harness

from agent.config import OutboxConfig
from agent.events import Event, EventBuilder
from agent.outbox import Outbox
from agent.publishing import PublishingPath
from agent.sequence import SequenceStore
from agent.transport import ConnectionEvent, ConnectionState
from agent.unitstate import UnitState
from contract.envelope.seal import SealedEnvelope
from contract.errors import ConfigError


def _path(harness: Harness, **kwargs: Any) -> PublishingPath:
    """The path on the harness's unit, with the daemon's ``[mqtt]`` settings of the harness."""
    unit = UnitState.load(harness.unit_dir)
    config = unit.transport_config(
        reconnect_min_s=0.2, reconnect_max_s=1.0, require_subscriber=True
    )
    return PublishingPath(unit, config, **kwargs)


def _presence(now: float) -> Callable[[EventBuilder], Event]:
    return lambda b: b.presence(now - 1.0, now, {"door": (1, 0)})


def _received_seqs(harness: Harness) -> set[int]:
    with harness.cond:
        return {r.seq for r in harness.received}


def _wait_received(harness: Harness, seqs: set[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not seqs <= _received_seqs(harness):
        assert time.monotonic() < deadline, (
            f"not received: {sorted(seqs - _received_seqs(harness))}"
        )
        time.sleep(0.05)


def _online(harness: Harness, after: int = 0) -> dict[str, object]:
    status = harness.wait_for(
        lambda r: r.type == "status" and r.message["body"]["state"] == "online", after=after
    )
    return dict(status.message["body"])


def test_events_are_published_and_forgotten_on_the_receipt(harness: Harness) -> None:
    enqueued: list[tuple[str, int]] = []
    seen_at_connect: list[int] = []

    def on_state(event: ConnectionEvent) -> None:
        if event.state is ConnectionState.CONNECTED:
            seen_at_connect.append(len(enqueued))

    with _path(
        harness, on_state=on_state, on_enqueued=lambda k, s: enqueued.append((k, s))
    ) as path:
        assert path.delivery == "receipt"
        path.start()
        assert path.transport.wait_connected(15)
        assert _online(harness) == {"state": "online", "delivery": "receipt"}
        # the caller heard of the connection before the "online" status was enqueued
        assert seen_at_connect == [0]
        assert enqueued[0][0] == "status"
        for _ in range(5):
            path.emit(_presence(time.time()), captured_at=time.time())
        sent = {seq for kind, seq in enqueued if kind == "presence"}
        assert len(sent) == 5
        _wait_received(harness, sent)
        # the outbox empties only when the backend's receipts name every envelope
        assert path.drain(20.0) == 0
        assert path.receipts.stats.deleted == 6  # 5 events and the "online" status
        assert path.publisher.acked >= 6
        assert len(path.stats.stages["capture_to_puback"]) == 5  # the emitter heard the PUBACKs
        path.stop()


def test_puback_mode_forgets_on_the_puback_and_ignores_receipts(harness: Harness) -> None:
    with _path(harness, outbox=OutboxConfig(delete_on="puback")) as path:
        assert path.delivery == "puback"
        path.start()
        assert _online(harness) == {"state": "online", "delivery": "puback"}
        for _ in range(5):
            path.emit(_presence(time.time()))
        assert path.drain(20.0) == 0
        _wait_received(harness, {seq for _, seq in path.emitter.enqueued})
        deadline = time.monotonic() + 10
        while harness.receipter.stats.sent == 0:  # the backend receipts them...
            assert time.monotonic() < deadline, "the backend sent no receipt"
            time.sleep(0.05)
        time.sleep(0.5)
        assert path.receipts.stats.accepted == 0  # ...to a unit that did not subscribe
        path.stop()


def test_stop_drains_then_disconnects_with_the_will_then_closes(harness: Harness) -> None:
    unit = UnitState.load(harness.unit_dir)
    wills: list[SealedEnvelope] = []
    with _path(harness, on_will=wills.append) as path:
        path.start()
        _online(harness)
        for _ in range(20):
            path.emit(_presence(time.time()))
        assert path.drain(20.0) == 0
        events = {seq for _, seq in path.emitter.enqueued}
        assert events <= _received_seqs(harness)  # receipted: the backend has every one
        mark = len(harness.received)
        path.stop()
        assert not [t for t in threading.enumerate() if t.name == "publisher"]
        path.stop()  # idempotent
    # the broker published the will registered at the (only) connection, after every event
    will = harness.wait_for(lambda r: r.type == "status", after=mark)
    assert will.message["body"]["state"] == "offline"
    assert [w.seq for w in wills] == [will.seq]
    # both stores are closed: the sequence file can be taken again and never goes back
    with SequenceStore(unit.seq_path) as seqs:
        assert seqs.next() > max(w.seq for w in wills)


@pytest.mark.parametrize("harness", [False], indirect=True)  # a plain subscription
def test_a_dead_broker_keeps_events_in_the_outbox_and_the_next_start_delivers(
    harness: Harness,
) -> None:
    unit = UnitState.load(harness.unit_dir)
    with _path(harness) as path:
        path.start()
        _online(harness)
        assert path.drain(20.0) == 0  # the "online" status is receipted
        harness.broker.stop()
        deadline = time.monotonic() + 10
        while path.transport.connected:
            assert time.monotonic() < deadline, "the unit did not notice the broker going"
            time.sleep(0.05)
        for _ in range(5):
            path.emit(_presence(time.time()))
        stored = {seq for _, seq in path.emitter.enqueued[-5:]}
        assert path.drain(1.0) == 5  # nothing to take them: they wait
        path.stop()
    assert not stored & _received_seqs(harness)
    with Outbox(unit.outbox_path, signer=unit.identity.public()) as box:
        assert box.stats().depth == 5  # on disk across the stop

    harness.broker.start()
    mark = len(harness.received)
    with _path(harness) as path:
        path.start()
        _wait_received(harness, stored)
        assert path.drain(20.0) == 0
        online = _online(harness, after=mark)
        assert online["state"] == "online"
        new = {seq for _, seq in path.emitter.enqueued}
        assert min(new) > max(stored)  # the sequence goes on, never repeats
        path.stop()
    with harness.cond:
        got = [r.seq for r in harness.received if r.seq in stored]
    assert sorted(got) == sorted(stored)  # each once (after the listener's de-duplication)


def test_a_unit_provisioned_before_receipts_forgets_on_the_puback(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    unit = dataclasses.replace(UnitState.load(harness.unit_dir), receipts=False)
    with PublishingPath(unit, unit.transport_config()) as path:  # [outbox] delete_on = "receipt"
        assert path.delivery == "puback"
        assert path.outbox.stats().delete_on == "puback"
    assert "no backend verify key" in caplog.text


def test_a_path_that_fails_to_open_leaves_no_store_open(harness: Harness) -> None:
    unit = UnitState.load(harness.unit_dir)

    def broken(seqs: SequenceStore) -> EventBuilder:
        raise ConfigError("no builder")

    with pytest.raises(ConfigError), PublishingPath(unit, unit.transport_config(), builder=broken):
        pass
    with SequenceStore(unit.seq_path):  # a store left open would hold the file's lock
        pass
