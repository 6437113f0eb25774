"""`camveil cmd`: send a signed command to a unit and wait for its ack (operator).

    camveil cmd --station DIR --device ID snapshot
    camveil cmd --station DIR --device ID restart-pipeline
    camveil cmd --station DIR --device ID set-config detector.threads=2 privacy.mode='"blur"'

Keys come from a station directory (``--station``: operator.key, devices.cbor,
clients/operator-*.crt, ca/ca.crt, broker URL from station.json) or a `camveil dev-pki` folder
(``--pki``); the backend's key is never read, and need not be there. The command is sealed with
the operator identity to the device's key, expires after ``--expires`` seconds, and is published
QoS 1 with the operator's client certificate; the unit's ack (sealed to the operator's key) is
opened with the operator identity and printed as one JSON line. Exit status: 0 accepted,
1 rejected, 2 timeout or usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.unitstate import parse_broker_url
from contract.errors import ConfigError
from dashboard.command_client import (
    load_dev_pki,
    load_station,
    new_command_id,
    parse_config_pairs,
    send_command,
)

# CLI verb -> protocol command name
VERBS = {
    "snapshot": "snapshot",
    "restart-pipeline": "restart_pipeline",
    "set-config": "set_config",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--station", type=Path, help="station directory")
    where.add_argument("--pki", type=Path, help="a `camveil dev-pki` folder")
    parser.add_argument("--device", required=True, help="device id of the unit")
    parser.add_argument("--broker", help="mqtts://host:port (default: from the folder)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the ack")
    parser.add_argument(
        "--expires", type=int, default=300, help="command lifetime in seconds (max 24 h)"
    )
    parser.add_argument("--id", dest="command_id", help="command id (default: generated)")
    parser.add_argument("verb", choices=sorted(VERBS), help="the command")
    parser.add_argument(
        "pairs", nargs="*", metavar="KEY=VALUE", help="set-config: section.key=value (TOML value)"
    )


def run(args: argparse.Namespace) -> int:
    name = VERBS[args.verb]
    cmd_args: dict[str, Any] | None = None
    if name == "set_config":
        cmd_args = {"config": parse_config_pairs(args.pairs)}
    elif args.pairs:
        raise ConfigError(f"{args.verb} takes no KEY=VALUE arguments")
    if not 1 <= args.expires <= 24 * 3600:
        raise ConfigError("--expires must be between 1 and 86400 seconds")
    keys = load_station(args.station) if args.station is not None else load_dev_pki(args.pki)
    url = args.broker or keys.broker_url
    if url is None:
        raise ConfigError("no broker URL in the folder; pass --broker mqtts://host:port")
    broker = parse_broker_url(url)
    command_id = args.command_id or new_command_id()
    try:
        ack = send_command(
            keys,
            host=broker.host,
            port=broker.port,
            device_id=args.device,
            name=name,
            args=cmd_args,
            command_id=command_id,
            expires_s=args.expires,
            timeout=args.timeout,
        )
    except TimeoutError as exc:
        hint = (
            "the unit may be offline or not subscribed yet"
            if "no ack" in str(exc)
            else "check that the broker runs and trusts this certificate"
        )
        print(
            f"camveil cmd: error: {exc} (broker {broker.host}:{broker.port}; {hint})",
            file=sys.stderr,
        )
        return 2
    line = {k: ack.get(k) for k in ("device", "seq", "ts", "boot", "type", "body")}
    print(json.dumps(line, sort_keys=True), flush=True)
    body = ack.get("body")
    accepted = isinstance(body, dict) and body.get("status") == "accepted"
    return 0 if accepted else 1
