"""USB / UVC webcams through V4L2 (``CameraConfig.kind == "v4l2"``).

Opened with ``cv2.VideoCapture(device, cv2.CAP_V4L2)``; the pixel format (FOURCC), size and rate
are requested in that order (drivers pick the size per format) and the driver's answer is logged.
The queue is kept to one buffer so a slow reader gets a recent frame. OpenCV hands out BGR; frames
leave as RGB.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2

from hw.camera.config import CameraConfig
from hw.camera.opencv_capture import Capture, CaptureFactory, OpenCVCaptureCamera, valid_rate
from hw.clock import SYSTEM_CLOCK, Clock

logger = logging.getLogger(__name__)


def device_of(source: str) -> int | str:
    """``"0"`` -> 0 (``/dev/video0``); a path stays a path; empty -> 0."""
    source = source.strip()
    if not source:
        return 0
    return int(source) if source.isdigit() else source


class V4L2Camera(OpenCVCaptureCamera):
    """A V4L2 webcam; ``capture_factory`` replaces ``cv2.VideoCapture`` in tests."""

    def __init__(
        self,
        config: CameraConfig,
        *,
        capture_factory: CaptureFactory | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        device = device_of(config.source)
        self._device = device
        self._node = Path(f"/dev/video{device}" if isinstance(device, int) else device)
        self._config = config
        factory = capture_factory or (lambda: cv2.VideoCapture(device, cv2.CAP_V4L2))
        size = (
            (config.width, config.height)
            if config.width is not None and config.height is not None
            else None
        )
        super().__init__(f"v4l2:{self._node}", factory, size=size, clock=clock)

    def _open_failed_hint(self) -> str:
        if not self._node.exists():
            return (
                f"{self.name}: no such device; plug the webcam in, list devices with "
                "`v4l2-ctl --list-devices` and fix camera.source"
            )
        return (
            f"{self.name}: the device exists but cannot be opened; is it busy in another "
            "program, and is the agent's user in the `video` group?"
        )

    def _device_present(self) -> bool:
        return self._node.exists()

    def _configure(self, cap: Capture) -> None:
        cfg = self._config
        if cfg.fourcc is not None:
            cap.set(cv2.CAP_PROP_FOURCC, float(cv2.VideoWriter.fourcc(*cfg.fourcc)))
        if cfg.width is not None and cfg.height is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(cfg.width))
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(cfg.height))
        if cfg.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, float(cfg.fps))
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1.0)
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self._rate = valid_rate(cap.get(cv2.CAP_PROP_FPS)) or cfg.fps
        fourcc = _fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
        logger.info(
            "v4l2 %s: %dx%d %s at %s fps (asked %sx%s %s at %s)",
            self._node,
            width,
            height,
            fourcc,
            self._rate,
            cfg.width,
            cfg.height,
            cfg.fourcc,
            cfg.fps,
        )


def _fourcc_text(code: float) -> str:
    value = int(code)
    chars = [chr((value >> (8 * i)) & 0xFF) for i in range(4)]
    text = "".join(chars)
    return text if text.isprintable() and text.strip() else "?"
