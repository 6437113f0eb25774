"""`camveil provision-listen --port /dev/ttyGS0 [--state DIR]`: the unit's side of provisioning.

Makes the unit's keys on first contact (they never leave the unit), answers the station, stores
the bundle atomically, and exits ``--linger`` seconds after it is provisioned (exit status 0).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType

from contract.statedir import DEFAULT_STATE_DIR
from hw.serial_link import DEFAULT_BAUDRATE, PySerialLink
from provisioning.unit import UnitStore, listen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", default="/dev/ttyGS0", help="gadget serial port (/dev/ttyGS0)")
    parser.add_argument(
        "--state", type=Path, default=DEFAULT_STATE_DIR, help=f"state dir ({DEFAULT_STATE_DIR})"
    )
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUDRATE, help="baud rate")
    parser.add_argument(
        "--linger",
        type=float,
        default=30.0,
        help="keep answering this many seconds after provisioning (default 30)",
    )


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    provisioned = listen(
        UnitStore(args.state),
        lambda: PySerialLink(args.port, args.baud),
        stop=stop,
        linger=args.linger,
    )
    return 0 if provisioned else 1
