"""`camveil station init DIR`: create a provisioning station (CA, operator and backend keys,
broker configuration, inventory); `camveil station list DIR`: the units in its inventory."""

from __future__ import annotations

import argparse
from pathlib import Path

from provisioning.inventory import Inventory
from provisioning.station import DEFAULT_BROKER_URL, StationPaths, init_station


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="create a station directory")
    init.add_argument(
        "dir",
        type=Path,
        help="station directory (created 0711 so that the broker can reach broker/; everything "
        "else in it is readable by you alone: files 0600, folders 0700)",
    )
    init.add_argument(
        "--broker-url",
        default=DEFAULT_BROKER_URL,
        help=f"default broker (default {DEFAULT_BROKER_URL})",
    )
    init.add_argument(
        "--broker-name",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP for the broker certificate (repeatable)",
    )
    listing = sub.add_parser("list", help="list the units in the inventory")
    listing.add_argument("dir", type=Path, help="station directory")


def run(args: argparse.Namespace) -> int:
    if args.action == "init":
        paths = init_station(
            args.dir, broker_url=args.broker_url, broker_names=tuple(args.broker_name)
        )
        print(f"station ready in {paths.root}")
        print(f"  CA certificate:   {paths.ca_dir / 'ca.crt'}")
        print(f"  broker config:    {paths.broker_dir / 'mosquitto.conf'}")
        print(f"  trusted devices:  {paths.devices}")
        print(f"next: camveil provision --port /dev/ttyACM0 --station {paths.root}")
        return 0
    with Inventory(StationPaths(args.dir).inventory) as inventory:
        for unit in inventory.units():
            print(f"{unit.device}\t{unit.state}\t{unit.site}")
    return 0
