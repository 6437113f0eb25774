"""The two things a replay reads from: a video file (OpenCV) and a folder of images (Pillow).

Both yield one frame *slot* per call to :meth:`next`: RGB pixels, ``None`` at the end of the pass,
or FrameError for a slot that cannot be decoded (the slot is consumed). A source whose file or
folder has vanished raises CameraUnavailableError, like an unplugged camera.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
from PIL import Image, ImageOps

from contract.errors import CameraUnavailableError, FrameError
from hw.camera.convert import bgr_to_rgb
from hw.frame import Pixels

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})


class ReplaySource(Protocol):
    """One pass over recorded frames."""

    @property
    def fps(self) -> float | None:
        """The recorded frame rate, if the file says."""
        ...

    def open(self) -> None: ...

    def next(self) -> Pixels | None:
        """The next slot's RGB pixels; ``None`` at the end of the pass."""
        ...

    def skip(self) -> bool:
        """Pass over one slot without decoding it if possible; ``False`` at the end of the pass."""
        ...

    def rewind(self) -> None:
        """Start a new pass from the first frame."""
        ...

    def close(self) -> None: ...


def natural_key(name: str) -> list[str | int]:
    """Sort key that puts ``frame2.jpg`` before ``frame10.jpg``."""
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", name))]


class VideoFileSource:
    """A video file decoded by OpenCV (FFmpeg). Reopened on rewind, so a deleted file is noticed."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._cap: cv2.VideoCapture | None = None
        self._fps: float | None = None

    @property
    def fps(self) -> float | None:
        return self._fps

    def open(self) -> None:
        if not self._path.is_file():
            raise CameraUnavailableError(
                f"replay: video file {self._path} does not exist; fix camera.source"
            )
        cap = cv2.VideoCapture(str(self._path))
        if not cap.isOpened():
            cap.release()
            raise CameraUnavailableError(
                f"replay: OpenCV cannot open {self._path} as a video; use a format FFmpeg decodes "
                "(mp4, mkv, avi) or point camera.source at a folder of images"
            )
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        self._fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else None
        self._cap = cap

    def _capture(self) -> cv2.VideoCapture:
        if self._cap is None:
            raise CameraUnavailableError(f"replay: {self._path} is not open")
        if not self._path.exists():
            raise CameraUnavailableError(f"replay: video file {self._path} has disappeared")
        return self._cap

    def next(self) -> Pixels | None:
        cap = self._capture()
        ok, bgr = cap.read()
        if not ok:
            return None
        return bgr_to_rgb(bgr, f"replay: {self._path.name}")

    def skip(self) -> bool:
        return bool(self._capture().grab())

    def rewind(self) -> None:
        self.close()
        self.open()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderSource:
    """The images of one folder (not recursive, hidden files ignored), in natural sort order."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._files: list[Path] = []
        self._pos = 0

    @property
    def fps(self) -> float | None:
        return None

    def open(self) -> None:
        if not self._folder.is_dir():
            raise CameraUnavailableError(
                f"replay: image folder {self._folder} does not exist; fix camera.source"
            )
        files = [
            p
            for p in self._folder.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ]
        if not files:
            raise CameraUnavailableError(
                f"replay: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {self._folder}; "
                "fix camera.source"
            )
        self._files = sorted(files, key=lambda p: natural_key(p.name))
        self._pos = 0

    def next(self) -> Pixels | None:
        if self._pos >= len(self._files):
            return None
        path = self._files[self._pos]
        self._pos += 1
        return self._decode(path)

    def skip(self) -> bool:
        if self._pos >= len(self._files):
            return False
        self._pos += 1
        return True

    def rewind(self) -> None:
        self._pos = 0

    def close(self) -> None:
        self._files = []

    def _decode(self, path: Path) -> Pixels:
        try:
            with warnings.catch_warnings():
                # An image so large it could be a decompression bomb is a corrupt frame here.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    rgb = ImageOps.exif_transpose(img).convert("RGB")
                    return np.array(rgb, dtype=np.uint8)
        except FileNotFoundError as exc:
            if not self._folder.is_dir():
                raise CameraUnavailableError(
                    f"replay: image folder {self._folder} has disappeared"
                ) from exc
            raise FrameError(f"replay: {path.name} vanished before it was read") from exc
        except (
            OSError,
            ValueError,
            SyntaxError,
            EOFError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ) as exc:
            raise FrameError(f"replay: cannot decode {path.name}: {exc}") from exc
