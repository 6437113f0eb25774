"""The unit process of a chaos run (``python -m tools.chaos unit ...``, started by
:func:`tools.chaos.run.run_chaos`): the daemon's publishing path without the camera.

:class:`agent.publishing.PublishingPath`, as the daemon builds it (persisted sequence store,
seal, durable outbox, publisher thread, transport, receipts, the "online" status on every
connect and a freshly sealed "offline" last will), with the default ``[outbox]`` and ``[mqtt]``
settings but for the delivery mode, the receipt timeout and shorter reconnect delays. A
synthetic source emits presence events at a fixed rate. After each durable enqueue the unit
appends ``<seq> <kind>`` to its log (``kind``: ``event``, ``status``, or ``will`` for a sealed
last will); a restarted unit counts the events in the log and emits only the rest. When all are
emitted it waits for the outbox to drain, disconnects (the broker publishes its will) and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from agent.config import MqttConfig
from agent.events import Event, EventBuilder
from agent.outbox import DEFAULT_RECEIPT_TIMEOUT_S
from agent.transport import TransportConfig
from agent.unitstate import UnitState

ZONE: Final = "entrance"


def read_log(path: Path) -> list[tuple[int, str]]:
    """``(seq, kind)`` of every complete line of a unit log (a torn last line is ignored)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return []
    out: list[tuple[int, str]] = []
    for line in text.split("\n")[:-1]:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out.append((int(parts[0]), parts[1]))
    return out


# Chaos restarts the broker every few seconds; the shipped 60 s reconnect ceiling would only make
# the run slower, not test anything else. Every other setting is the daemon's default.
CHAOS_RECONNECT_MIN_S: Final = 0.25
CHAOS_RECONNECT_MAX_S: Final = 2.0


def unit_transport_config(unit: UnitState, broker_url: str | None) -> TransportConfig:
    """The unit's transport exactly as the daemon builds it from a default ``[mqtt]`` section
    (in particular ``require_subscriber``), but for shorter reconnect delays: chaos must test
    what ships."""
    mqtt = MqttConfig()
    return unit.transport_config(
        broker_url or mqtt.broker,
        keepalive_s=mqtt.keepalive_s,
        reconnect_min_s=CHAOS_RECONNECT_MIN_S,
        reconnect_max_s=CHAOS_RECONNECT_MAX_S,
        max_outstanding=mqtt.max_outstanding,
        require_subscriber=mqtt.require_subscriber,
    )


def run_unit(
    state_dir: Path,
    log_path: Path,
    *,
    events: int,
    rate: float,
    broker_url: str | None,
    delivery: str = "receipt",
    receipt_timeout_s: float = DEFAULT_RECEIPT_TIMEOUT_S,
) -> int:
    """The unit side (see the module docstring). Returns 0 once everything is acknowledged."""
    from agent.config import OutboxConfig
    from agent.publishing import PublishingPath

    unit = UnitState.load(state_dir)
    done = sum(1 for _, kind in read_log(log_path) if kind == "event")
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def log(seq: int, kind: str) -> None:
        os.write(fd, f"{seq} {kind}\n".encode())  # one O_APPEND write: lines never interleave

    try:
        with PublishingPath(
            unit,
            unit_transport_config(unit, broker_url),
            outbox=OutboxConfig(
                delete_on="puback" if delivery == "puback" else "receipt",
                receipt_timeout_s=receipt_timeout_s,
            ),
            outbox_path=unit.outbox_path,
            on_enqueued=lambda kind, seq: log(seq, "status" if kind == "status" else "event"),
            on_will=lambda envelope: log(envelope.seq, "will"),
        ) as path:
            path.start()
            t0 = time.monotonic()
            for i in range(events - done):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                path.emit(_presence(time.time()), time.time())
            path.drain(None)
            path.stop()  # the broker publishes the will
    finally:
        os.close(fd)
    return 0


def _presence(now: float) -> Callable[[EventBuilder], Event]:
    """A synthetic one-second presence window ending ``now``: one person, no face."""
    return lambda b: b.presence(now - 1.0, now, {ZONE: (1, 0)})


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.chaos unit ...``: the unit process of a chaos run."""
    parser = argparse.ArgumentParser(prog="python -m tools.chaos")
    sub = parser.add_subparsers(dest="role", required=True)
    unit = sub.add_parser("unit", help="the unit process (started by camveil chaos)")
    unit.add_argument("--state", type=Path, required=True)
    unit.add_argument("--log", type=Path, required=True)
    unit.add_argument("--events", type=int, required=True)
    unit.add_argument("--rate", type=float, required=True)
    unit.add_argument("--broker")
    unit.add_argument("--delivery", choices=("receipt", "puback"), default="receipt")
    unit.add_argument("--receipt-timeout", type=float, default=DEFAULT_RECEIPT_TIMEOUT_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_unit(
        args.state,
        args.log,
        events=args.events,
        rate=args.rate,
        broker_url=args.broker,
        delivery=args.delivery,
        receipt_timeout_s=args.receipt_timeout,
    )
