"""`camveil fuzz --cases N [--seed S] [--json]`: mutated envelopes and commands against the
unit's command opener and the backend's event opener. Exit status 0 when there were no crashes,
no acceptances, and every genuine control message was accepted; 1 otherwise."""

from __future__ import annotations

import argparse
import json
import sys

from contract.errors import ConfigError
from tools.fuzz import FuzzReport, run_fuzz


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cases", type=int, default=100_000, help="mutated inputs (default 100000)"
    )
    parser.add_argument("--seed", type=int, help="seed of the mutation choices")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    if args.cases < 1:
        raise ConfigError("fuzz --cases must be at least 1")

    def progress(done: int) -> None:
        if done % 10_000 == 0:
            print(f"fuzz: {done} cases", file=sys.stderr)

    report = run_fuzz(args.cases, seed=args.seed, progress=progress)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def format_report(r: FuzzReport) -> str:
    lines = [
        f"cases        {r.cases} in {r.seconds} s (seed {r.seed})",
        f"crashes      {r.crashes}",
        f"acceptances  {r.acceptances}",
        f"controls     {r.controls_accepted} of {r.controls} genuine originals accepted",
        "by mutation  " + ", ".join(f"{k} {v}" for k, v in r.by_kind.items()),
        "rejected as  " + ", ".join(f"{k} {v}" for k, v in sorted(r.rejections.items())),
    ]
    lines += [f"  crash: {s}" for s in r.crash_samples]
    lines += [f"  accepted: {s}" for s in r.accepted_samples]
    lines.append("OK" if r.ok else "FAILED")
    return "\n".join(lines)
