"""The only ways pixels leave the privacy pipeline for storage: encoders of RedactedFrame.

Every function here checks its argument's type at run time too, so that a raw ``Frame`` or an
ndarray reaching a store path raises :class:`~contract.errors.UnredactedDataError` instead of being
written.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from agent.privacy.redact import RedactedFrame
from contract.errors import UnredactedDataError


def require_redacted(obj: object) -> RedactedFrame:
    """Return ``obj`` if it is a RedactedFrame, else raise UnredactedDataError."""
    if not isinstance(obj, RedactedFrame):
        raise UnredactedDataError(
            f"refusing to store or publish a {type(obj).__name__}: only RedactedFrame may leave "
            "the privacy pipeline"
        )
    return obj


def encode_jpeg(frame: RedactedFrame, quality: int = 85, max_side: int | None = None) -> bytes:
    """JPEG bytes of a redacted frame, optionally downscaled so its longest side <= max_side."""
    img = Image.fromarray(np.asarray(require_redacted(frame).pixels), mode="RGB")
    if max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class ImageFormat:
    """How a redacted still is written: always lossless.

    ``png`` at zlib level ``png_level`` (1, the default, is about three times faster than
    Pillow's 6 for files a few percent larger), or ``webp`` (lossless WebP, ``webp_method``
    0-6; 0 is as fast as PNG level 1 and the files are about a quarter smaller).
    """

    kind: Literal["png", "webp"] = "png"
    png_level: int = 1
    webp_method: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("png", "webp"):
            raise ValueError(f"image format must be png or webp, got {self.kind!r}")
        if not 0 <= self.png_level <= 9:
            raise ValueError(f"PNG compression level must be 0-9, got {self.png_level}")
        if not 0 <= self.webp_method <= 6:
            raise ValueError(f"WebP method must be 0-6, got {self.webp_method}")

    @property
    def suffix(self) -> str:
        return f".{self.kind}"


def write_image(frame: RedactedFrame, path: Path, fmt: ImageFormat | None = None) -> None:
    """Write a lossless still of a redacted frame (atomically: temp file, then rename)."""
    fmt = fmt or ImageFormat()
    img = Image.fromarray(np.asarray(require_redacted(frame).pixels), mode="RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    if fmt.kind == "webp":
        img.save(tmp, format="WEBP", lossless=True, quality=0, method=fmt.webp_method, exact=True)
    else:
        img.save(tmp, format="PNG", compress_level=fmt.png_level)
    tmp.replace(path)


def write_png(frame: RedactedFrame, path: Path) -> None:
    """Write a lossless PNG of a redacted frame (atomically: temp file, then rename)."""
    write_image(frame, path, ImageFormat("png"))


class VideoSink:
    """Writes redacted frames to a video file (OpenCV ``mp4v``). A context manager."""

    def __init__(self, path: Path, fps: float, fourcc: str = "mp4v") -> None:
        self._path = path
        self._fps = fps
        self._fourcc = fourcc
        self._writer: Any = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def __enter__(self) -> VideoSink:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, frame: RedactedFrame) -> None:
        import cv2

        rf = require_redacted(frame)
        size = (rf.width, rf.height)
        if self._writer is None:
            fourcc = cv2.VideoWriter.fourcc(*self._fourcc)
            self._writer = cv2.VideoWriter(str(self._path), fourcc, self._fps, size)
            if not self._writer.isOpened():
                raise OSError(f"cannot open video writer for {self._path}")
            self._size = size
        if size != self._size:
            raise ValueError(f"frame size {size} differs from the video's {self._size}")
        self._writer.write(cv2.cvtColor(np.asarray(rf.pixels), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
