"""Raspberry Pi CSI cameras through picamera2 / libcamera (``CameraConfig.kind == "picamera2"``).

picamera2 is imported in :meth:`PiCamera2Camera._open` only, so this module loads anywhere.
The main stream is configured as ``RGB888`` at the configured size; in memory that format is
ordered B, G, R (libcamera names formats by their little-endian word), so each frame is
channel-swapped to RGB. Each request is held for as little time as possible:
``with picam2.captured_request() as req`` copies the array out and releases the buffer at once.

Lost frames are seen from the sensor timestamps: a gap of several frame durations between two
requests means the frames in between were dropped (the index jumps, and they are counted).
"""

from __future__ import annotations

import logging
from typing import Any

from contract.errors import CameraUnavailableError, FrameError
from hw.camera.base import BaseCamera
from hw.camera.config import CameraConfig
from hw.camera.convert import bgr_to_rgb, resize
from hw.clock import SYSTEM_CLOCK, Clock
from hw.frame import Frame

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "picamera2 is not importable: on Raspberry Pi OS run `sudo apt install python3-picamera2` "
    "and create the agent's venv with `python3 -m venv --system-site-packages` so it can see it "
    "(picamera2 needs the system's libcamera bindings; `pip install picamera2` alone is not enough)"
)


def camera_number(source: str) -> int:
    """``""`` or ``"0"`` -> 0; ``"1"`` -> the second CSI camera."""
    source = source.strip()
    if not source:
        return 0
    if not source.isdigit():
        raise CameraUnavailableError(
            f"picamera2: camera.source must be a camera number such as 0, got {source!r}"
        )
    return int(source)


class PiCamera2Camera(BaseCamera):
    """A CSI camera on a Raspberry Pi. ``picamera2_class`` replaces ``Picamera2`` in tests."""

    def __init__(
        self,
        config: CameraConfig,
        *,
        picamera2_class: Any = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(f"picamera2:{config.source or '0'}", clock)
        self._config = config
        self._picamera2_class = picamera2_class
        self._cam: Any = None
        self._index = 0
        self._last_sensor_ns: int | None = None
        self._rate: float | None = None
        self._size = (
            (config.width, config.height)
            if config.width is not None and config.height is not None
            else None
        )

    @property
    def fps(self) -> float | None:
        return self._rate

    def _open(self) -> None:
        number = camera_number(self._config.source)
        cls = self._picamera2_class or _import_picamera2()
        try:
            if not cls.global_camera_info():
                raise CameraUnavailableError(
                    f"{self.name}: libcamera sees no camera; check the ribbon cable and "
                    "`rpicam-hello --list-cameras`"
                )
            cam = cls(number)
        except (RuntimeError, IndexError, OSError) as exc:
            raise CameraUnavailableError(
                f"{self.name}: cannot open camera {number}: {exc}"
            ) from exc
        try:
            main: dict[str, Any] = {"format": "RGB888"}
            if self._config.width is not None and self._config.height is not None:
                main["size"] = (self._config.width, self._config.height)
            controls: dict[str, Any] = {}
            if self._config.fps is not None:
                controls["FrameRate"] = float(self._config.fps)
            cam_config = cam.create_video_configuration(main=main, controls=controls)
            cam.configure(cam_config)
            cam.start()
        except (RuntimeError, ValueError, OSError) as exc:
            cam.close()
            raise CameraUnavailableError(f"{self.name}: cannot start camera: {exc}") from exc
        self._cam = cam
        self._index = 0
        self._last_sensor_ns = None
        self._rate = self._config.fps
        logger.info("picamera2 %s: configured %s", self.name, main)

    def _release(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        try:
            cam.stop()
        finally:
            cam.close()

    def _next(self) -> Frame:
        if self._cam is None:
            raise CameraUnavailableError(f"{self.name}: not open")
        try:
            with self._cam.captured_request() as req:
                bgr = req.make_array("main")
                rgb = bgr_to_rgb(bgr, self.name)  # a copy: the buffer goes back at once
                metadata = req.get_metadata()
        except FrameError:
            self._index += 1
            raise
        except (RuntimeError, OSError, TimeoutError) as exc:
            raise CameraUnavailableError(f"{self.name}: capture failed: {exc}") from exc
        index = self._index + self._dropped_before(metadata)
        self._count_lost(index - self._index)
        self._index = index + 1
        return self._frame(resize(rgb, self._size), index)  # if libcamera aligned the size

    def _dropped_before(self, metadata: dict[str, Any]) -> int:
        """Frames the sensor produced since the previous request that we never saw."""
        stamp = metadata.get("SensorTimestamp")
        duration_us = metadata.get("FrameDuration")
        previous, self._last_sensor_ns = self._last_sensor_ns, stamp
        if not isinstance(stamp, int) or not isinstance(duration_us, (int, float)):
            return 0
        if duration_us > 0:
            self._rate = 1e6 / duration_us
        if previous is None or duration_us <= 0:
            return 0
        slots = round((stamp - previous) / (duration_us * 1000.0))
        return max(0, slots - 1)


def _import_picamera2() -> Any:
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise CameraUnavailableError(INSTALL_HINT) from exc
    return Picamera2
