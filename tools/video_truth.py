"""Face annotations of a video clip (format ``camveil-video-faces/1``, docs/VIDEO_EVAL.md):
per frame, face boxes with the id of the person they belong to, and ignore boxes.

Reading validates everything once; a malformed file is an :class:`InputFileError` that says
where. The annotation names its video by file name and sha256, and :func:`check_video` refuses
a video whose bytes differ: boxes of another encoding or cut do not fit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import InputFileError

FORMAT = "camveil-video-faces/1"
XYWH = tuple[int, int, int, int]


@dataclass(frozen=True)
class TrackedFace:
    """One face in one frame: whose it is (``track``) and its box ``(x, y, w, h)``."""

    track: str
    box: XYWH


@dataclass(frozen=True)
class FrameTruth:
    """The ground truth of one frame; a frame the file does not list has no faces."""

    index: int
    faces: tuple[TrackedFace, ...] = ()
    ignore: tuple[XYWH, ...] = ()


@dataclass(frozen=True)
class VideoTruth:
    """A clip's annotation: which video, its size, and the annotated frames ``0..frames-1``."""

    file: str
    sha256: str
    width: int
    height: int
    frames: int
    """Frames annotated, from the first: the evaluation reads no further."""
    truth: dict[int, FrameTruth]
    tracks: tuple[str, ...]
    made: dict[str, Any]

    def frame(self, index: int) -> FrameTruth:
        return self.truth.get(index, FrameTruth(index))

    def scaled(self, width: int, height: int) -> VideoTruth:
        """The same annotation for the video resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height

        def box(b: XYWH) -> XYWH:
            x, y, w, h = b
            return round(x * sx), round(y * sy), round(w * sx), round(h * sy)

        truth = {
            i: FrameTruth(
                i,
                tuple(TrackedFace(f.track, box(f.box)) for f in t.faces),
                tuple(box(b) for b in t.ignore),
            )
            for i, t in self.truth.items()
        }
        return VideoTruth(
            self.file, self.sha256, width, height, self.frames, truth, self.tracks, self.made
        )


def read_video_truth(path: Path) -> VideoTruth:
    """Parse and validate an annotation file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read the annotation ({exc})") from exc
    except ValueError as exc:
        raise InputFileError(f"{path}: not JSON ({exc})") from exc
    try:
        return _parse(raw)
    except KeyError as exc:
        raise InputFileError(
            f"{path}: not a {FORMAT} annotation (missing field {exc}); see docs/VIDEO_EVAL.md"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise InputFileError(
            f"{path}: not a {FORMAT} annotation ({exc}); see docs/VIDEO_EVAL.md"
        ) from exc


def _parse(raw: dict[str, Any]) -> VideoTruth:
    if raw.get("format") != FORMAT:
        raise ValueError(f"format is {raw.get('format')!r}, expected {FORMAT!r}")
    video = raw["video"]
    width, height, frames = int(video["width"]), int(video["height"]), int(video["frames"])
    if width <= 0 or height <= 0 or frames <= 0:
        raise ValueError("video width, height and frames must be positive")
    sha256 = str(video["sha256"]).lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"video sha256 {video['sha256']!r} is not 64 hex digits")
    truth: dict[int, FrameTruth] = {}
    for item in raw["frames"]:
        index = int(item["index"])
        if not 0 <= index < frames:
            raise ValueError(f"frame {index} is outside the annotated 0..{frames - 1}")
        if index in truth:
            raise ValueError(f"frame {index} is listed twice")
        faces = tuple(
            TrackedFace(str(face["track"]), _box(face["box"])) for face in item.get("faces", [])
        )
        ids = [face.track for face in faces]
        if len(set(ids)) != len(ids):
            raise ValueError(f"frame {index}: a track has two boxes")
        truth[index] = FrameTruth(index, faces, tuple(_box(b) for b in item.get("ignore", [])))
    tracks = tuple(sorted({f.track for t in truth.values() for f in t.faces}))
    return VideoTruth(
        file=str(video["file"]),
        sha256=sha256,
        width=width,
        height=height,
        frames=frames,
        truth=truth,
        tracks=tracks,
        made=dict(raw.get("made", {})),
    )


def _box(raw: Any) -> XYWH:
    x, y, w, h = (int(v) for v in raw)
    if w <= 0 or h <= 0:
        raise ValueError(f"box {list(raw)} has no area")
    return x, y, w, h


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_video(truth: VideoTruth, video: Path) -> None:
    """InputFileError unless ``video`` is the file the annotation was made on (sha256)."""
    if not video.is_file():
        raise InputFileError(f"{video}: no such video file")
    actual = sha256_of(video)
    if actual != truth.sha256:
        raise InputFileError(
            f"{video} is not the video this annotation was made on ({truth.file}, sha256 "
            f"{truth.sha256[:12]}..., this file {actual[:12]}...); pass that exact file"
        )
