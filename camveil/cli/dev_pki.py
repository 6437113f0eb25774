"""`camveil dev-pki DIR`: throw-away keys and certificates for the demo and tests
(:func:`tools.devpki.make_dev_pki` writes them; its docstring has the layout). Never for units in
the field: the CA key is written next to everything else.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from contract.errors import ConfigError
from tools.devpki import DEFAULT_CLIENTS, DEFAULT_DEVICE, make_dev_pki


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="output folder (must not exist, or use --force)")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help="device id of the unit")
    parser.add_argument("--port", type=int, default=8883, help="broker TLS port")
    parser.add_argument("--host", default="127.0.0.1", help="broker address (loopback)")
    parser.add_argument("--force", action="store_true", help="replace an existing DIR")
    parser.add_argument(
        "--clients",
        type=int,
        default=DEFAULT_CLIENTS,
        help="backend and operator certificates of each kind: one per process connected at "
        f"the same time (default {DEFAULT_CLIENTS})",
    )


def run(args: argparse.Namespace) -> int:
    root: Path = args.dir
    if root.exists():
        if not args.force:
            raise ConfigError(f"{root} exists; pass --force to replace it")
        shutil.rmtree(root)
    try:
        made = make_dev_pki(
            root, device_id=args.device, port=args.port, host=args.host, clients=args.clients
        )
    except ValueError as exc:
        raise ConfigError(f"dev-pki: {exc}") from None
    print(f"dev PKI in {made.root} (throw-away keys; never use them on a real unit)")
    print(f"  broker:   mosquitto -c {made.broker.config}   ({made.broker_url})")
    print(f"  unit:     [mqtt] state_dir = {made.unit_dir}   (device {made.device_id})")
    print(f"  backend:  {made.backend.identity}, devices {made.devices}")
    print(f"  operator: {made.operator.identity}")
    return 0
