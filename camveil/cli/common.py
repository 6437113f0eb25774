"""Options shared by several subcommands: detector and redaction settings."""

from __future__ import annotations

import argparse

from agent.privacy.redact import FillMode, RedactionConfig
from agent.vision.factory import DETECTOR_MODELS, PARTNER_MODELS, DetectorConfig
from contract.errors import ConfigError


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("detector")
    group.add_argument("--model", default="centerface_int8", choices=DETECTOR_MODELS)
    group.add_argument("--threshold", type=float, default=None, help="score threshold")
    group.add_argument(
        "--small-threshold",
        type=float,
        default=None,
        help="centerface: score threshold for faces under 32 px (default: --threshold, or 0.07)",
    )
    group.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    group.add_argument(
        "--scale", type=float, default=1.0, help="resize before centerface/yunet (default 1.0)"
    )
    group.add_argument(
        "--extra-scale",
        type=float,
        default=0.0,
        help="centerface: also run at this scale and merge (2.0: maximum protection, 5x cost)",
    )
    group.add_argument(
        "--partner",
        default="",
        choices=("", *PARTNER_MODELS),
        help="centerface: also run this model and merge its boxes (yunet_int8; default off)",
    )
    group.add_argument(
        "--partner-threshold", type=float, default=0.6, help="partner score threshold (0.6)"
    )
    group.add_argument(
        "--persons",
        action="store_true",
        help="also redact the head of every person the person detector finds (default off)",
    )
    group.add_argument("--tile", type=int, default=0, help="tile size in pixels (0: off)")
    group.add_argument("--margin", type=float, default=0.25, help="box growth (default 0.25)")
    group.add_argument(
        "--fill", choices=[m.value for m in FillMode], default="solid", help="solid or noise"
    )


def non_negative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0 (a bad value is a usage error, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use 0 or more")
    return value


#: DetectorConfig names its fields as in the TOML file; on the command line they are options
_DETECTOR_OPTIONS = {
    f"[detector] {field}{sep}": f"--{field.replace('_', '-')}{sep and ' '}"
    for field in (
        "small_threshold",
        "threshold",
        "threads",
        "scale",
        "extra_scale",
        "partner_threshold",
        "partner",
        "persons",
        "tile",
        "model",
    )
    for sep in (" = ", "")
}


def detector_config(args: argparse.Namespace) -> DetectorConfig:
    """The detector settings of the command line; ConfigError naming the option if one is out of
    range."""
    try:
        return DetectorConfig(
            model=args.model,
            threshold=args.threshold,
            small_threshold=args.small_threshold,
            threads=args.threads,
            scale=args.scale,
            extra_scale=args.extra_scale,
            partner=args.partner,
            partner_threshold=args.partner_threshold,
            persons=args.persons,
            tile=args.tile,
        )
    except ConfigError as exc:
        message = str(exc)
        for key, option in _DETECTOR_OPTIONS.items():
            message = message.replace(key, option)
        raise ConfigError(message) from None


def redaction_config(args: argparse.Namespace) -> RedactionConfig:
    """The redaction settings of the command line; ConfigError naming the option if one is out
    of range."""
    try:
        return RedactionConfig(margin=args.margin, fill=FillMode(args.fill))
    except ValueError:
        raise ConfigError(
            f"--margin {args.margin}: must be between 0 and 4 (the fraction each face box grows "
            "by; 0.25 is the default)"
        ) from None
