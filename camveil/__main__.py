"""`camveil` command line: one console script, one subcommand per module in camveil/cli/."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from agent import __version__
from camveil.cli.logs import setup_logging
from contract.errors import CamveilError

# subcommand -> module in camveil.cli; each module has add_arguments(parser) and run(args) -> int
COMMANDS: dict[str, tuple[str, str]] = {
    "redact": ("camveil.cli.redact", "redact faces in images and videos"),
    "eval": ("camveil.cli.evaluate", "measure face protection on an annotated dataset"),
    "eval-video": (
        "camveil.cli.evaluate_video",
        "measure face leaks per frame and per track on an annotated video",
    ),
    "eval-visitors": (
        "camveil.cli.evaluate_visitors",
        "measure unique-visitor counts of re-identification on a clip counted by eye",
    ),
    "eval-embed": (
        "camveil.cli.evaluate_embed",
        "measure face verification (embedding model) on labelled image pairs",
    ),
    "bench": ("camveil.cli.bench", "measure speed and memory of the privacy pipeline"),
    "run": ("camveil.cli.run", "run the agent: camera -> redaction -> outputs"),
    "listen": ("camveil.cli.listen", "verify, decrypt and print what units publish (backend)"),
    "dev-pki": ("camveil.cli.dev_pki", "throw-away CA, broker, unit, backend and operator keys"),
    "station": ("camveil.cli.station", "create a provisioning station (CA, keys, inventory)"),
    "provision": ("camveil.cli.provision", "provision a unit over USB serial (station side)"),
    "provision-listen": (
        "camveil.cli.provision_listen",
        "answer the provisioning station on the USB gadget port (unit side)",
    ),
    "factory-reset": ("camveil.cli.factory_reset", "delete the unit's keys and identity (--yes)"),
    "chaos": ("camveil.cli.chaos", "count lost/duplicated events under broker restarts and kills"),
    "fuzz": ("camveil.cli.fuzz", "feed mutated envelopes and commands to the real openers"),
    "cmd": ("camveil.cli.cmd", "send a signed command to a unit and wait for its ack (operator)"),
    "enrol": (
        "camveil.cli.enrol",
        "enrol a consenting subject's face templates on a unit (operator)",
    ),
    "dashboard": ("camveil.cli.dashboard", "ingest and the fleet web page (backend)"),
    "simulate": ("camveil.cli.simulate", "run N simulated units against a broker (load, demo)"),
    "ha-bridge": (
        "camveil.cli.ha_bridge",
        "publish verified unit status and noised counts to Home Assistant (MQTT discovery)",
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2): the error and where to read more,
    not the usage block (``--help`` prints that)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="camveil", description=__doc__)
    parser.add_argument("--version", action="version", version=f"camveil {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args))
    except CamveilError as exc:
        print(f"camveil {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
