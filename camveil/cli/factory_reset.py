"""`camveil factory-reset [--state DIR] --yes`: delete the unit's keys, certificate and bundle.

Afterwards the unit is unprovisioned and `camveil provision-listen` makes new keys (a new
identity): the station must provision it again, and the old device id should be revoked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.statedir import DEFAULT_STATE_DIR
from provisioning.unit import UnitStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state", type=Path, default=DEFAULT_STATE_DIR, help=f"state dir ({DEFAULT_STATE_DIR})"
    )
    parser.add_argument("--yes", action="store_true", help="really delete the keys")


def run(args: argparse.Namespace) -> int:
    if not args.yes:
        print(
            "camveil factory-reset: this deletes the unit's keys and identity for good; "
            "repeat with --yes to do it",
            file=sys.stderr,
        )
        return 2
    store = UnitStore(args.state)
    if store.factory_reset():
        print(f"factory reset done: {args.state} holds no keys; provision the unit again")
    else:
        print(f"nothing to reset: {args.state} holds no provisioning state")
    return 0
