"""`camveil redact INPUT... --out DIR [detector options]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agent.batch import (
    FileResult,
    InputFile,
    MediaKind,
    default_jobs,
    find_inputs,
    redact_files,
)
from agent.pipeline import PrivacyConfig
from agent.privacy.store import ImageFormat
from agent.vision.factory import build_detector
from camveil.cli.common import add_detector_arguments, detector_config, redaction_config
from camveil.cli.logs import progress_on

EPILOG = """\
Images (anything Pillow can open) are written losslessly: PNG (zlib level --png-level, default 1,
fast) or, with --format webp, lossless WebP (smaller, about as fast). Several images are in flight
at once (--jobs, default: the CPUs available), in the input order. Every frame of an animated or
multi-page image (GIF, APNG, WebP, TIFF) is redacted and written as an animated PNG (or WebP) with
its timing. Videos (.mp4 .avi .mov .mkv .webm .m4v, or anything else OpenCV can open) are written as
H.264 mp4 that browsers play (the source's frame rate). AUDIO IS DROPPED: the output videos have no
sound track. Metadata (EXIF, GPS, captions) is not copied; an image's EXIF orientation is applied
to its pixels. Outputs keep their path relative to the input folder (a single file: its name),
e.g. photos/a/x.jpg -> OUT/a/x.png. With --json, one JSON document on stdout lists every file
(output, faces found, frames in/out, frames dropped by reason, error).

Fail closed: if the detector fails on an image, nothing is written for it; if it fails on a video
frame, that frame is dropped from the output (and counted). Files that cannot be decoded are
reported and skipped; files in a folder that are neither images nor videos are ignored.

Exit status: 0 when every file was redacted completely; 1 when any file failed or any video frame
was dropped; 2 for a usage error (missing input, unknown model, bad option).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help="image/video files or folders"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder for the redacted outputs"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON report of every file on stdout"
    )
    output = parser.add_argument_group("image output (always lossless)")
    output.add_argument(
        "--format", choices=("png", "webp"), default="png", help="still image format (default png)"
    )
    output.add_argument(
        "--png-level",
        type=bounded_int(0, 9, "--png-level"),
        default=1,
        metavar="0-9",
        help="PNG zlib level: 1 (default) is fast, 9 smallest; all are lossless",
    )
    output.add_argument(
        "--jobs",
        type=bounded_int(1, 64, "--jobs"),
        default=None,
        metavar="N",
        help="images in flight at once (default: the CPUs available)",
    )
    add_detector_arguments(parser)


class TqdmProgress:
    """Progress bars on stderr: one over the files, one over a video's frames."""

    def __init__(self, total_files: int, disable: bool) -> None:
        self._disable = disable
        self._files: Any = tqdm(
            total=total_files, desc="files", unit="file", file=sys.stderr, disable=disable
        )
        self._frames: Any = None

    def file_started(self, item: InputFile, kind: MediaKind, total_frames: int | None) -> None:
        self._files.set_postfix_str(str(item.rel), refresh=True)
        if kind == "video":
            self._frames = tqdm(
                total=total_frames,
                desc=item.rel.name,
                unit="frame",
                file=sys.stderr,
                leave=False,
                position=1,
                disable=self._disable,
            )

    def frame_done(self) -> None:
        if self._frames is not None:
            self._frames.update(1)

    def file_finished(self, result: FileResult) -> None:
        if self._frames is not None:
            self._frames.close()
            self._frames = None
        self._files.update(1)
        message = describe(result)
        if message:
            tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        self._files.close()


def bounded_int(low: int, high: int, name: str) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (a usage error, exit 2, otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} needs a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name} must be between {low} and {high}, got {value}"
            )
        return value

    return parse


def describe(result: FileResult) -> str | None:
    """The line to report for a file, or ``None`` for a plain success."""
    name = result.source.path
    if result.error is not None:
        return f"skipped {name}: {result.error}"
    if result.ignored:
        return f"ignored {name}: not an image or a video"
    notes: list[str] = []
    if result.frames_dropped:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.dropped.items()))
        notes.append(
            f"dropped {result.frames_dropped} of {result.frames_in} frames of {name} "
            f"(fail closed: {reasons}); wrote {result.frames_out} frames to {result.output}"
        )
    declared = result.declared_frames
    if declared is not None and result.frames_in < declared:
        notes.append(
            f"note: {name} declares {declared} frames but only {result.frames_in} could be "
            "decoded (truncated or damaged file?)"
        )
    return "\n".join(notes) or None


def run(args: argparse.Namespace) -> int:
    items = find_inputs(args.inputs, args.out)
    settings = detector_config(args)
    privacy = PrivacyConfig(redaction=redaction_config(args))  # both checked before loading
    detector = build_detector(settings)
    progress = TqdmProgress(len(items), disable=args.no_progress or not progress_on())
    try:
        results = redact_files(
            detector,
            items,
            args.out,
            privacy,
            progress,
            fmt=ImageFormat(args.format, png_level=args.png_level),
            jobs=args.jobs or default_jobs(),
        )
    finally:
        progress.close()
    written = [r for r in results if r.output is not None]
    failed = [r for r in results if r.error is not None]
    dropped = sum(r.frames_dropped for r in results)
    ignored = sum(r.ignored for r in results)
    summary = f"redacted {len(written)} of {len(results)} files into {args.out}"
    if failed:
        summary += f"; {len(failed)} failed"
    if dropped:
        summary += f"; {dropped} video frames dropped"
    if ignored:
        summary += f"; {ignored} ignored"
    print(summary, file=sys.stderr)
    if args.json:
        print(json.dumps(report(results, args.out), indent=2))
    return 1 if failed or dropped else 0


def report(results: list[FileResult], out: Path) -> dict[str, Any]:
    """The ``--json`` document: per file what was written and what was found or dropped."""
    files = [
        {
            "input": str(r.source.path),
            "kind": r.kind,
            "output": str(r.output) if r.output is not None else None,
            "ok": r.ok and not r.ignored,
            "ignored": r.ignored,
            "error": r.error,
            "faces": r.faces,
            "regions": r.regions,
            "frames_in": r.frames_in,
            "frames_out": r.frames_out,
            "frames_dropped": r.frames_dropped,
            "dropped": dict(r.dropped),
        }
        for r in results
    ]
    return {
        "out": str(out),
        "files": files,
        "written": sum(r.output is not None for r in results),
        "failed": sum(r.error is not None for r in results),
        "ignored": sum(r.ignored for r in results),
        "faces": sum(r.faces for r in results),
        "frames_dropped": sum(r.frames_dropped for r in results),
    }
