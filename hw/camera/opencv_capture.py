"""Reading a live camera through ``cv2.VideoCapture`` (shared by the V4L2 and GStreamer backends).

The capture object is built by an injected factory, so tests drive the error paths with a fake.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import cv2

from contract.errors import CameraUnavailableError, FrameError
from hw.camera.base import BaseCamera
from hw.camera.convert import bgr_to_rgb, resize
from hw.clock import SYSTEM_CLOCK, Clock
from hw.frame import Frame

logger = logging.getLogger(__name__)

MAX_FAILED_GRABS = 5
"""Consecutive failed reads after which a live camera counts as gone (each one is a FrameError)."""


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` we use."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name

    def read(self) -> tuple[bool, object]: ...

    def set(self, prop: int, value: float, /) -> bool: ...

    def get(self, prop: int, /) -> float: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[], Capture]


class OpenCVCaptureCamera(BaseCamera):
    """A live camera behind ``cv2.VideoCapture``; subclasses say how to open and configure it.

    A failed read is a FrameError (a lost frame) unless :meth:`_device_present` says the device
    node is gone or ``MAX_FAILED_GRABS`` reads failed in a row: then CameraUnavailableError.
    """

    def __init__(
        self,
        name: str,
        open_capture: CaptureFactory,
        *,
        size: tuple[int, int] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(name, clock)
        self._open_capture = open_capture
        self._size = size
        self._cap: Capture | None = None
        self._index = 0
        self._failures = 0
        self._rate: float | None = None

    @property
    def fps(self) -> float | None:
        return self._rate

    def _open(self) -> None:
        cap = self._open_capture()
        if not cap.isOpened():
            cap.release()
            raise CameraUnavailableError(self._open_failed_hint())
        try:
            self._configure(cap)
        except BaseException:
            cap.release()
            raise
        self._cap = cap
        self._index = 0
        self._failures = 0

    def _configure(self, cap: Capture) -> None:
        """Apply settings after opening (default: read the frame rate the driver reports)."""
        self._rate = valid_rate(cap.get(cv2.CAP_PROP_FPS))

    def _open_failed_hint(self) -> str:
        return f"{self.name}: cannot open the camera"

    def _device_present(self) -> bool:
        return True

    def _release(self) -> None:
        if self._cap is not None:
            try:
                self._cap.release()
            finally:
                self._cap = None

    def _next(self) -> Frame:
        if self._cap is None:
            raise CameraUnavailableError(f"{self.name}: not open")
        ok, bgr = self._cap.read()
        index = self._index
        self._index += 1
        if not ok:
            self._failures += 1
            if self._failures >= MAX_FAILED_GRABS or not self._device_present():
                raise CameraUnavailableError(
                    f"{self.name}: the camera stopped delivering frames "
                    f"({self._failures} failed reads in a row)"
                )
            raise FrameError(f"{self.name}: frame {index} could not be captured")
        self._failures = 0
        rgb = bgr_to_rgb(bgr, self.name)
        return self._frame(resize(rgb, self._size), index)


def valid_rate(fps: float) -> float | None:
    """``fps`` if it is a plausible frame rate, else ``None`` (drivers report 0 or NaN)."""
    return fps if math.isfinite(fps) and 0 < fps <= 1000 else None
