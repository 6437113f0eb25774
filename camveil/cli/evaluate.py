"""`camveil eval --dataset DIR [--json] [--floor FILE]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from agent.vision.factory import build_detector
from camveil.cli.common import (
    add_detector_arguments,
    detector_config,
    non_negative_int,
    redaction_config,
)
from camveil.cli.logs import progress_on
from contract.errors import ConfigError
from tools.evaluate import check_floor, evaluate, format_report, read_annotations


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="folder with annotations.jsonl")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--limit", type=non_negative_int, default=0, help="only the first N images")
    parser.add_argument(
        "--floor", type=Path, help="JSON file of minimums; exit 1 if the report falls below"
    )
    add_detector_arguments(parser)


def run(args: argparse.Namespace) -> int:
    annotations = read_annotations(args.dataset)
    if args.limit:
        annotations = annotations[: args.limit]
    detector = build_detector(detector_config(args))

    def progress(items):  # type: ignore[no-untyped-def]
        return tqdm(
            items,
            total=len(annotations),
            desc="eval",
            unit="img",
            file=sys.stderr,
            disable=not progress_on(),
        )

    report = evaluate(detector, annotations, redaction_config(args), progress=progress)
    report["detector"] = {
        "model": args.model,
        "threshold": args.threshold,
        "small_threshold": args.small_threshold,
        "partner": args.partner,
        "partner_threshold": args.partner_threshold,
        "persons": args.persons,
        "extra_scale": args.extra_scale,
        "scale": args.scale,
        "tile": args.tile,
        "threads": args.threads,
        "margin": args.margin,
    }
    failures: list[str] = []
    if args.floor:
        try:
            floor = json.loads(args.floor.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--floor {args.floor}: cannot read JSON ({exc})") from exc
        failures = check_floor(report, floor)
        report["floor_failures"] = failures
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        for failure in failures:
            print(f"BELOW FLOOR: {failure}")
    return 1 if failures else 0
