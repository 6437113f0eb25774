"""Options shared by several subcommands: detector and redaction settings."""

from __future__ import annotations

import argparse

from agent.privacy.redact import FillMode, RedactionConfig
from agent.vision.factory import DETECTOR_MODELS, DetectorConfig


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("detector")
    group.add_argument("--model", default="centerface_int8", choices=DETECTOR_MODELS)
    group.add_argument("--threshold", type=float, default=None, help="score threshold")
    group.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    group.add_argument(
        "--scale", type=float, default=1.0, help="resize before centerface (default 1.0)"
    )
    group.add_argument(
        "--extra-scale",
        type=float,
        default=0.0,
        help="centerface: also run at this scale and merge (2.0: maximum protection, 5x cost)",
    )
    group.add_argument("--tile", type=int, default=0, help="tile size in pixels (0: off)")
    group.add_argument("--margin", type=float, default=0.25, help="box growth (default 0.25)")
    group.add_argument(
        "--fill", choices=[m.value for m in FillMode], default="solid", help="solid or noise"
    )


def detector_config(args: argparse.Namespace) -> DetectorConfig:
    return DetectorConfig(
        model=args.model,
        threshold=args.threshold,
        threads=args.threads,
        scale=args.scale,
        extra_scale=args.extra_scale,
        tile=args.tile,
    )


def redaction_config(args: argparse.Namespace) -> RedactionConfig:
    return RedactionConfig(margin=args.margin, fill=FillMode(args.fill))
