"""`camveil simulate --units N --station DIR [--broker URL] [--rate R] [--duration S]`: run N
simulated units (tools.simulate) against a broker, for load tests and the demo.

Units missing from ``--state`` (default: ``<station>-sim`` beside the station directory) are
provisioned first with the station, over the provisioning protocol on an in-memory link, so they
land in its inventory and ``devices.cbor`` like units provisioned over USB (a running dashboard
picks them up live). Each then connects with its own certificate, says ``online`` (retained, with a
pre-sealed ``offline`` last will) and publishes sealed presence and health events (and snapshots
with ``--snapshot-every``) at ``--rate`` events per second per unit, until ``--duration`` seconds
have passed or Ctrl-C; on the way out the broker publishes every unit's last will. A JSON summary
goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from agent.unitstate import parse_broker_url
from contract.errors import ConfigError
from provisioning.station import StationConfig, StationPaths
from tools.simulate import DEVICE_PREFIX, Fleet, SimSettings, load_units, provision_fleet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--units", type=int, required=True, help="number of simulated units")
    parser.add_argument("--station", type=Path, required=True, help="station directory")
    parser.add_argument("--broker", help="mqtts://host:port (default: the station's broker URL)")
    parser.add_argument(
        "--state",
        type=Path,
        help="where the simulated units keep their keys and sequence numbers "
        "(default: <station>-sim beside the station directory)",
    )
    parser.add_argument(
        "--rate", type=float, default=0.2, help="events per second per unit (default 0.2)"
    )
    parser.add_argument(
        "--duration", type=float, default=0, help="seconds to run (default: until Ctrl-C)"
    )
    parser.add_argument(
        "--health-every", type=int, default=10, help="every n-th event is health (default 10)"
    )
    parser.add_argument(
        "--snapshot-every",
        type=int,
        default=0,
        help="every n-th event is a snapshot of a synthetic, redacted frame (default 0: none)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="client loops to spread the units over (default 1)"
    )
    parser.add_argument("--site", default="simulated", help="site name recorded at provisioning")
    parser.add_argument(
        "--prefix", default=DEVICE_PREFIX, help=f"device id prefix (default {DEVICE_PREFIX})"
    )


def run(args: argparse.Namespace) -> int:
    if not 0 < args.units <= 10000:
        raise ConfigError("simulate: --units must be 1..10000")
    if not 0 <= args.rate <= 100 or args.threads < 1 or args.duration < 0:
        raise ConfigError("simulate: --rate 0..100, --threads >= 1, --duration >= 0")
    paths = StationPaths(args.station)
    config = StationConfig.load(paths.config)  # a clear error if it is not a station
    broker = parse_broker_url(args.broker or config.broker_url)
    state: Path = args.state or args.station.with_name(args.station.name + "-sim")
    started = time.monotonic()
    print(f"simulate: provisioning up to {args.units} units into {state} ...", file=sys.stderr)
    dirs = provision_fleet(args.station, state, args.units, prefix=args.prefix, site=args.site)
    provisioned_s = time.monotonic() - started
    settings = SimSettings(
        rate=args.rate,
        health_every=args.health_every,
        snapshot_every=args.snapshot_every,
        threads=args.threads,
    )
    fleet = Fleet(load_units(dirs), broker, settings)
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    fleet.start()
    try:
        connected = fleet.wait_connected(60.0)
        print(
            f"simulate: {fleet.stats.connected} of {args.units} units connected to "
            f"{broker.host}:{broker.port}" + ("" if connected else " (the rest keep retrying)"),
            file=sys.stderr,
            flush=True,
        )
        done.wait(args.duration or None)
    finally:
        fleet.stop(publish_will=True)
    stats = fleet.stats
    summary = {
        "units": args.units,
        "provision_s": round(provisioned_s, 2),
        "published": stats.published,
        "acked": stats.acked,
        "refused": dict(stats.refused),
        "disconnects": stats.disconnects,
    }
    print(json.dumps({"simulate_summary": summary}, sort_keys=True))
    return 0 if not stats.refused else 1
