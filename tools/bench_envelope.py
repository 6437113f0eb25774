"""`camveil bench --suite envelope`: the cost of getting a sealed event off the unit.

Three measurements, all with production code:

- **seal / open per second** of a typical ~300-byte event
  (:func:`tools.bench_seal.bench_envelope`);
- **outbox throughput with durability on**: :class:`~agent.outbox.Outbox` at its defaults
  (enqueue commits with ``synchronous=FULL``, i.e. one fsync per event; acks with
  ``NORMAL``), enqueueing pre-sealed envelopes, then draining them the way the publisher does
  (``next_batch`` verifies each row's signature, ``mark_in_flight``, ``ack``);
- **event latency capture -> PUBACK**, p50/p99, at a fixed rate (default 10 events/s) against
  a real local mosquitto started for the purpose with a throw-away dev PKI
  (:class:`provisioning.devbroker.BrokerProcess`): the daemon's publishing path
  (:class:`agent.publishing.PublishingPath` at its defaults, receipts on, without the link
  status messages), timed from the moment the event is made (the capture time the daemon passes
  for frame-derived events) to the broker's PUBACK. Without mosquitto this part reports
  ``available: false`` with the install hint.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from agent.events import Event, EventBuilder
from agent.outbox import Outbox
from contract.envelope.keys import Identity
from contract.envelope.seal import SealedEnvelope, seal
from contract.errors import CamveilError
from contract.topics import event_topic

DEVICE: Final = "cv-bench-0001"
TOPIC: Final = event_topic(DEVICE, "presence")


def bench_envelope(
    seconds: float = 2.0, *, latency_events: int = 100, latency_rate: float = 10.0
) -> dict[str, Any]:
    """Every measurement of the suite (``latency_events=0`` leaves out the broker)."""
    from tools.bench_seal import bench_envelope as seal_open

    out: dict[str, Any] = {"available": True}
    out.update({k: round(v, 1) for k, v in seal_open(seconds).items()})
    out["outbox"] = bench_outbox(seconds)
    if latency_events > 0:
        out["latency"] = bench_latency(latency_events, latency_rate)
    return out


# --- outbox --------------------------------------------------------------------------------------


def _sealed(n: int) -> tuple[Identity, list[SealedEnvelope]]:
    from tools.bench_seal import sample_event

    device = Identity.generate(DEVICE)
    backend = Identity.generate("backend")
    envelopes = [
        seal(
            sample_event(i),
            sender=device,
            recipient=backend.public(),
            topic=TOPIC,
            seq=i,
            device=DEVICE,
        )
        for i in range(n)
    ]
    return device, envelopes


def bench_outbox(seconds: float = 2.0, *, pool: int = 256) -> dict[str, Any]:
    """Enqueue for about ``seconds / 2`` (one fsync each), then drain as the publisher does."""
    device, envelopes = _sealed(pool)
    half = max(seconds, 0.02) / 2
    with (
        tempfile.TemporaryDirectory(prefix="camveil-bench-outbox-") as tmp,
        Outbox(Path(tmp) / "outbox.db", signer=device.public(), delete_on="puback") as outbox,
    ):
        enqueued = 0
        start = time.perf_counter()
        while time.perf_counter() - start < half or enqueued == 0:
            outbox.enqueue(envelopes[enqueued % pool])
            enqueued += 1
        t_enqueue = time.perf_counter() - start
        acked = 0
        start = time.perf_counter()
        while batch := outbox.next_batch(16):
            for mid, item in enumerate(batch, start=1):
                outbox.mark_in_flight(item.id, mid)
                outbox.ack(item.id)
                acked += 1
        t_drain = time.perf_counter() - start
        left = outbox.stats().depth
    receipted = _bench_receipted_drain(device, envelopes, enqueued)
    return {
        "synchronous": "FULL enqueue, NORMAL ack",
        "enqueue_per_s": round(enqueued / t_enqueue, 1),
        "drain_per_s": round(acked / t_drain, 1) if t_drain > 0 else None,
        "enqueue_ack_per_s": round(enqueued / (t_enqueue + t_drain), 1),
        "receipt_drain_per_s": receipted,
        "n": enqueued,
        "left": left,
    }


def _bench_receipted_drain(device: Identity, envelopes: list[SealedEnvelope], n: int) -> float:
    """Receipt mode: mark in flight + PUBACK (kept as published) per envelope, then one receipt
    per 200 envelopes deletes them (what the backend sends every 200 ms); envelopes/s."""
    with (
        tempfile.TemporaryDirectory(prefix="camveil-bench-receipts-") as tmp,
        Outbox(Path(tmp) / "outbox.db", signer=device.public(), synchronous="NORMAL") as outbox,
    ):
        pool = len(envelopes)
        for i in range(min(n, pool)):  # seqs must be distinct: one pass over the pool
            outbox.enqueue(envelopes[i])
        start = time.perf_counter()
        done = 0
        while batch := outbox.next_batch(16):
            for mid, item in enumerate(batch, start=1):
                outbox.mark_in_flight(item.id, mid)
                outbox.ack(item.id)
                done += 1
                if done % 200 == 0:
                    outbox.receipt([(item.seq - 199, item.seq)])
        outbox.receipt([(0, 2**62)])
        elapsed = time.perf_counter() - start
    return round(done / elapsed, 1) if elapsed > 0 else 0.0


# --- capture -> PUBACK ---------------------------------------------------------------------------


@contextlib.contextmanager
def local_broker(root: Path) -> Iterator[Any]:
    """A dev PKI under ``root`` and a mosquitto serving it; yields the DevPki."""
    from agent.unitstate import parse_broker_url
    from provisioning.devbroker import BrokerProcess, ProbeClient, free_port
    from tools.devpki import make_dev_pki

    dev = make_dev_pki(root / "pki", device_id=DEVICE, port=free_port())
    backend = dev.backend
    broker = BrokerProcess(
        dev.broker.config,
        port=parse_broker_url(dev.broker_url).port,
        probe=ProbeClient(backend.ca, backend.cert, backend.key),
        log_path=root / "mosquitto.log",
    )
    with broker:
        yield dev


def bench_latency(events: int = 100, rate: float = 10.0) -> dict[str, Any]:
    """``events`` presence events at ``rate``/s through the daemon's publishing path to a local
    mosquitto; capture -> PUBACK and enqueue -> PUBACK percentiles."""
    from provisioning.devbroker import mosquitto_binary

    try:
        mosquitto_binary()
    except CamveilError as exc:
        return {"available": False, "reason": str(exc)}
    with (
        tempfile.TemporaryDirectory(prefix="camveil-bench-mqtt-") as tmp,
        local_broker(Path(tmp)) as dev,
    ):
        stats = _publish_at_rate(dev.unit_dir, events, rate, dev)
    latency: dict[str, dict[str, Any]] = stats["latency"]
    capture = latency.get("capture_to_puback", {})
    publish = latency.get("publish", {})
    receipt = latency.get("capture_to_receipt", {})
    return {
        "available": True,
        "rate_per_s": rate,
        "n": capture.get("n", 0),
        "p50_ms": capture.get("p50_ms"),
        "p99_ms": capture.get("p99_ms"),
        "enqueue_to_puback_p50_ms": publish.get("p50_ms"),
        "enqueue_to_puback_p99_ms": publish.get("p99_ms"),
        "receipt_n": receipt.get("n", 0),
        "capture_to_receipt_p50_ms": receipt.get("p50_ms"),
        "capture_to_receipt_p99_ms": receipt.get("p99_ms"),
        "broker": "local mosquitto, TLS, QoS 1; a listener receipting every 200 ms",
    }


def _publish_at_rate(state_dir: Path, events: int, rate: float, dev: Any) -> dict[str, Any]:
    from agent.publishing import PublishingPath
    from agent.unitstate import UnitState

    unit = UnitState.load(state_dir)
    with PublishingPath(unit, unit.transport_config(), status=False) as path:
        backend = contextlib.ExitStack()
        _start_backend(backend, dev, unit)
        path.start()
        try:
            if not path.transport.wait_connected(15.0):
                raise CamveilError("bench: the unit could not connect to the local mosquitto")
            t0 = time.monotonic()
            for i in range(events):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                now = time.time()
                path.emit(_presence(now), captured_at=now)
            path.drain(30.0)
        finally:
            path.stop()
            backend.close()
    snapshot: dict[str, Any] = json.loads(json.dumps(path.stats.snapshot()))
    return snapshot


def _presence(now: float) -> Callable[[EventBuilder], Event]:
    return lambda b: b.presence(now - 1.0, now, {"door": (1, 0)})


def _start_backend(stack: contextlib.ExitStack, dev: Any, unit: Any) -> None:
    """The backend: a listener that stores nothing but receipts every message, as it would."""
    from agent.unitstate import parse_broker_url
    from contract.envelope.keys import PeerKeys, load_identity
    from dashboard.listener import Listener, ListenerConfig, MemoryDedupe, Opener
    from dashboard.receipts import Receipter

    backend = dev.backend
    identity = load_identity(backend.identity)
    peers = PeerKeys([unit.identity.public()])
    address = parse_broker_url(dev.broker_url)
    receipter = Receipter(identity, lambda: peers, lambda e: listener.publish_receipt(e))
    listener = Listener(
        ListenerConfig(address.host, address.port, backend.ca, backend.cert, backend.key),
        Opener(identity, peers, MemoryDedupe()),
        lambda _received: None,
        receipter=receipter,
    )
    listener.start()
    stack.callback(listener.stop)
    receipter.start()
    stack.callback(receipter.stop)
    if not listener.subscribed.wait(15.0):
        raise CamveilError("bench: the backend could not subscribe at the local mosquitto")


# --- report --------------------------------------------------------------------------------------


def format_envelope(report: dict[str, Any]) -> list[str]:
    """Readable lines for the envelope suite."""
    if not report.get("available"):
        return [f"envelope: unavailable ({report.get('reason', 'unknown')})"]
    lines = [
        f"envelope: seal {report.get('seal_per_s')}/s, open {report.get('open_per_s')}/s "
        f"({report.get('envelope_bytes'):.0f}-byte envelope of a "
        f"{report.get('plaintext_bytes'):.0f}-byte event)"
    ]
    box = report.get("outbox")
    if box:
        lines.append(
            f"outbox ({box['synchronous']}): enqueue {box['enqueue_per_s']}/s, drain "
            f"{box['drain_per_s']}/s, enqueue+ack {box['enqueue_ack_per_s']}/s (n {box['n']}); "
            f"PUBACK + receipt drain {box['receipt_drain_per_s']}/s"
        )
    lat = report.get("latency")
    if lat:
        if not lat.get("available"):
            lines.append(f"latency: unavailable ({lat.get('reason')})")
        else:
            lines.append(
                f"latency capture->PUBACK at {lat['rate_per_s']:g} events/s ({lat['broker']}): "
                f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms (n {lat['n']}); "
                f"enqueue->PUBACK p50 {lat['enqueue_to_puback_p50_ms']} ms, "
                f"p99 {lat['enqueue_to_puback_p99_ms']} ms; capture->receipt p50 "
                f"{lat['capture_to_receipt_p50_ms']} ms, p99 {lat['capture_to_receipt_p99_ms']} ms"
            )
    return lines
