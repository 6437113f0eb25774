"""`camveil eval-visitors --video FILE --annotations FILE.json [--json] [--persons on|off|both]`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.vision.factory import DetectorConfig
from agent.vision.reid import ReidConfig
from tools.evaluate_visitors import PURPOSE, evaluate_visitors, format_report, read_visitor_truth

EPILOG = """\
The clip is replayed frame by frame through the daemon's wiring with [reid] on (default settings,
one window) and the window's unique-visitor count is compared with the people in the
annotation: a visitors file (camveil-video-visitors/1, people counted by eye) or a face
annotation (camveil-video-faces/1, one track per person). --persons both (the default) measures
counting from faces only and from people too, with the cost of each (fps, CPU per frame).

Exit status: 0 when the count with [reid] persons on is within --tolerance of the truth (or
--tolerance is not given), 1 when it is not, 2 for a usage error (missing file, the wrong video).
"""

PERSONS = {"on": (True,), "off": (False,), "both": (False, True)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--video",
        type=Path,
        required=True,
        help="the video file, or the folder that holds it under the annotation's name",
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        required=True,
        help="camveil-video-visitors/1 or camveil-video-faces/1",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--persons", choices=sorted(PERSONS), default="both", help="[reid] persons (default both)"
    )
    parser.add_argument("--threads", type=int, default=2, help="face detector threads (default 2)")
    parser.add_argument(
        "--tolerance",
        type=float,
        help="fail (exit 1) when the persons-on count is off by more than this share, e.g. 0.1",
    )


def run(args: argparse.Namespace) -> int:
    truth = read_visitor_truth(args.annotations)
    video = args.video / truth.file if args.video.is_dir() else args.video
    reid = ReidConfig(enabled=True, purpose=PURPOSE)
    detector = DetectorConfig(threads=args.threads)
    report = evaluate_visitors(video, truth, reid, detector, PERSONS[args.persons])
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.tolerance is None:
        return 0
    checked = [r for r in report["runs"] if r["persons"]] or report["runs"]
    bad = [r for r in checked if abs(r["unique"] - truth.people) > args.tolerance * truth.people]
    return 1 if bad else 0
