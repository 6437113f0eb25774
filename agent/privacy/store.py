"""The only ways pixels leave the privacy pipeline for storage: encoders of RedactedFrame.

Every function here checks its argument's type at run time too, so that a raw ``Frame`` or an
ndarray reaching a store path raises :class:`~contract.errors.UnredactedDataError` instead of being
written.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
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


def write_animation(
    frames: Sequence[RedactedFrame],
    path: Path,
    durations_ms: Sequence[int],
    loop: int = 0,
    fmt: ImageFormat | None = None,
) -> None:
    """Write every redacted frame of an animation losslessly (animated PNG, or animated lossless
    WebP), with its timing; atomically (temp file, then rename)."""
    fmt = fmt or ImageFormat()
    images = [Image.fromarray(np.asarray(require_redacted(f).pixels), mode="RGB") for f in frames]
    if not images:
        raise ValueError("an animation needs at least one frame")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    common: dict[str, Any] = {
        "save_all": True,
        "append_images": images[1:],
        "duration": list(durations_ms),
        "loop": loop,
    }
    if fmt.kind == "webp":
        images[0].save(
            tmp, format="WEBP", lossless=True, quality=0, method=fmt.webp_method, exact=True,
            **common,
        )  # fmt: skip
    else:
        images[0].save(tmp, format="PNG", compress_level=fmt.png_level, **common)
    tmp.replace(path)


def write_png(frame: RedactedFrame, path: Path) -> None:
    """Write a lossless PNG of a redacted frame (atomically: temp file, then rename)."""
    write_image(frame, path, ImageFormat("png"))


class VideoSink:
    """Writes redacted frames to an H.264 MP4 that browsers play (PyAV: libx264, yuv420p,
    ``+faststart``), or with ``codec="mp4v"`` through OpenCV (MPEG-4 part 2, which browsers do
    not play; for systems without PyAV). A context manager; ``close`` finishes the file.

    H.264 4:2:0 needs even dimensions: an odd width or height gets one black column / row."""

    def __init__(self, path: Path, fps: float, codec: str = "h264", crf: int = 18) -> None:
        if codec not in ("h264", "mp4v"):
            raise ValueError(f"video codec must be h264 or mp4v, got {codec!r}")
        self._path = path
        self._fps = fps
        self._codec = codec
        self._crf = crf
        self._writer: Any = None
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def __enter__(self) -> VideoSink:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, frame: RedactedFrame) -> None:
        rf = require_redacted(frame)
        size = (rf.width, rf.height)
        if self._size is None:
            self._open(size)
            self._size = size
        if size != self._size:
            raise ValueError(f"frame size {size} differs from the video's {self._size}")
        pixels = np.asarray(rf.pixels)
        if self._codec == "mp4v":
            import cv2

            self._writer.write(cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        else:
            import av

            h, w = pixels.shape[:2]
            if (h % 2, w % 2) != (0, 0):
                padded = np.zeros((h + h % 2, w + w % 2, 3), np.uint8)
                padded[:h, :w] = pixels
                pixels = padded
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            for packet in self._stream.encode(video_frame):
                self._container.mux(packet)
        self.frames += 1

    def _open(self, size: tuple[int, int]) -> None:
        if self._codec == "mp4v":
            import cv2

            fourcc = cv2.VideoWriter.fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(str(self._path), fourcc, self._fps, size)
            if not self._writer.isOpened():
                raise OSError(f"cannot open video writer for {self._path}")
            return
        try:
            import av
        except ImportError as exc:  # a dependency; say what to do if it is missing anyway
            raise OSError("H.264 output needs PyAV (pip install av)") from exc
        width, height = size
        try:
            self._container = av.open(
                str(self._path), mode="w", format="mp4", options={"movflags": "+faststart"}
            )
            rate = Fraction(self._fps).limit_denominator(1001)
            self._stream = self._container.add_stream("libx264", rate=rate)
            self._stream.width = width + width % 2
            self._stream.height = height + height % 2
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self._crf), "preset": "veryfast"}
        except (av.FFmpegError, ValueError) as exc:
            self._abort()
            raise OSError(f"cannot open an H.264 writer for {self._path}: {exc}") from exc

    def _abort(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._container is not None:
            for packet in self._stream.encode():  # flush the encoder
                self._container.mux(packet)
            self._container.close()
            self._container = None
