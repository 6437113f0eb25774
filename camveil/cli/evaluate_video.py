"""`camveil eval-video --video FILE --annotations FILE.json [--json] [--setting default|max]`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from agent.pipeline import PrivacyConfig
from agent.vision.factory import DetectorConfig
from agent.vision.track import TrackerConfig
from camveil.cli.common import non_negative_int
from tools.evaluate_video import SETTINGS, evaluate_video, format_report
from tools.video_truth import check_video, read_video_truth

EPILOG = """\
The video is replayed frame by frame through the unit's frame path (detector behind the fail-closed
guard, tracker hold-over, redaction) and every frame is scored against the annotation
(docs/VIDEO_EVAL.md): a face is protected when at least 90% of its box is overwritten. A track (one
annotated person) leaks if any of its frames leaks. The annotation names its video by sha256; any
other file is refused.

Exit status: 0 when the evaluation ran (leaks are results, not failures), 2 for a usage error
(missing file, the wrong video, a malformed annotation).
"""


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1280x720") from None
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"{text}: use even sizes above 0, e.g. 1280x720")
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--video",
        type=Path,
        required=True,
        help="the annotated video file, or the folder that holds it under the annotation's name",
    )
    parser.add_argument(
        "--annotations", type=Path, required=True, help="its annotation (camveil-video-faces/1)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--setting",
        choices=sorted(SETTINGS),
        default="default",
        help="default: the unit's detector; max: maximum protection (--extra-scale 2)",
    )
    parser.add_argument(
        "--persons",
        action="store_true",
        help="also redact the head of every person the person detector finds ([detector] persons)",
    )
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    parser.add_argument(
        "--hold-frames",
        type=non_negative_int,
        default=TrackerConfig().hold_frames,
        help=f"tracker hold-over in frames (default {TrackerConfig().hold_frames}; 0: none)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DetectorConfig().timeout,
        help=f"seconds a frame may spend in the detector before it is dropped, as on the unit "
        f"(default {DetectorConfig().timeout:g}; raise it to measure on a busy machine)",
    )
    parser.add_argument(
        "--size",
        type=_size,
        metavar="WxH",
        help="resize every frame (and the annotation) first, e.g. 1280x720",
    )


def run(args: argparse.Namespace) -> int:
    truth = read_video_truth(args.annotations)
    video = args.video / truth.file if args.video.is_dir() else args.video
    check_video(truth, video)
    detector = dataclasses.replace(
        SETTINGS[args.setting], threads=args.threads, timeout=args.timeout, persons=args.persons
    )
    privacy = PrivacyConfig(tracker=TrackerConfig(hold_frames=args.hold_frames))
    report = evaluate_video(video, truth, detector, privacy, size=args.size)
    report["setting"] = {
        "name": args.setting,
        "detector": dataclasses.asdict(detector) | {"models_dir": None},
        "hold_frames": args.hold_frames,
        "margin": privacy.redaction.margin,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        persons = ", person head regions" if args.persons else ""
        print(f"setting: {args.setting}{persons} (hold-over {args.hold_frames} frames)")
        print(format_report(report))
    return 0
