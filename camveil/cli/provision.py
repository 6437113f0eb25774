"""`camveil provision --port /dev/ttyACM0 --station DIR`: provision one unit over USB serial."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from camveil.cli.station import add_camera_arguments, camera_choice
from hw.serial_link import DEFAULT_BAUDRATE, PySerialLink
from provisioning.serial_proto import Channel
from provisioning.station import DEFAULT_SITE, Station, open_station


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True, help="serial port of the unit (/dev/ttyACM0)")
    parser.add_argument("--station", required=True, type=Path, help="station directory")
    parser.add_argument("--site", default=DEFAULT_SITE, help="site name put into the unit's config")
    parser.add_argument("--broker-url", help="broker URL for this unit (default: the station's)")
    parser.add_argument("--device-id", help="device id to assign (default: derived from its key)")
    add_camera_arguments(parser, "this unit (default: the station's, from station init)")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUDRATE, help="baud rate")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt")
    parser.add_argument("--attempts", type=int, default=5, help="attempts per request")


def describe_settings(settings: Mapping[str, Mapping[str, Any]]) -> str:
    """What the unit's agent will take from the bundle, for people."""
    if not settings:
        return "no settings in this unit's bundle (an older station's): its camveil.toml decides"
    camera = settings.get("camera")
    parts = ["camera: " + (" ".join(map(str, camera.values())) if camera else "its own config")]
    if settings.get("mqtt", {}).get("enabled"):
        parts.append("MQTT on")
    return ", ".join(parts) + " (unless its camveil.toml sets them)"


def run(args: argparse.Namespace) -> int:
    camera = camera_choice(args)  # before the port: usage errors first
    paths = open_station(args.station)  # before the port: a wrong folder is not a cable problem
    with PySerialLink(args.port, args.baud) as link:
        station = Station(paths, Channel(link), timeout=args.timeout, attempts=args.attempts)
        result = station.provision(
            site=args.site,
            broker_url=args.broker_url,
            device_id=args.device_id,
            camera=camera,
        )
    verb = "provisioned" if result.outcome == "provisioned" else "was already provisioned as"
    print(
        f"unit {verb} {result.device} in {result.seconds:.2f} s "
        f"({result.retries} retries); trusted devices: {paths.peers} (camveil listen --devices)"
    )
    print(f"first boot: {describe_settings(result.settings)}")
    return 0
