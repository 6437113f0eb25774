"""Cameras: one :class:`Camera` protocol, six backends, a reconnecting wrapper, one factory.

::

    with open_camera(CameraConfig(kind="v4l2", source="/dev/video0", width=640, height=480)) as cam:
        frame = cam.read()          # RGB Frame; see hw.camera.base for the errors it raises

Importing this package imports no camera library: picamera2, gi and PyAV are imported when such
a camera starts, with an install hint if they are missing.
"""

from __future__ import annotations

from hw.camera.base import BaseCamera, Camera, CameraStats
from hw.camera.config import CameraConfig, CameraKind
from hw.camera.reconnect import Backoff, ReconnectingCamera
from hw.camera.synthetic import SyntheticCamera, SyntheticFaults
from hw.clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock

__all__ = [
    "Backoff",
    "BaseCamera",
    "Camera",
    "CameraConfig",
    "CameraKind",
    "CameraStats",
    "Clock",
    "FakeClock",
    "ReconnectingCamera",
    "SyntheticCamera",
    "SyntheticFaults",
    "SystemClock",
    "open_backend",
    "open_camera",
]


def open_backend(config: CameraConfig, *, clock: Clock = SYSTEM_CLOCK) -> Camera:
    """The bare backend for ``config`` (not started, never wrapped)."""
    if config.kind == "synthetic":
        return SyntheticCamera(config, clock=clock)
    if config.kind == "replay":
        from hw.camera.replay import ReplayCamera

        return ReplayCamera(config, clock=clock)
    if config.kind == "v4l2":
        from hw.camera.v4l2 import V4L2Camera

        return V4L2Camera(config, clock=clock)
    if config.kind == "picamera2":
        from hw.camera.picamera2 import PiCamera2Camera

        return PiCamera2Camera(config, clock=clock)
    if config.kind == "rtsp":
        from hw.camera.rtsp import RtspCamera

        return RtspCamera(config, clock=clock)
    from hw.camera.gstreamer import gstreamer_camera

    return gstreamer_camera(config, clock=clock)


def _describe(config: CameraConfig) -> str:
    """``kind:source`` for logs; an RTSP URL is shown without its password."""
    if config.kind == "rtsp":
        from hw.camera.rtsp import redact_url

        return redact_url(config.source)
    return f"{config.kind}:{config.source}" if config.source else config.kind


def open_camera(config: CameraConfig, *, clock: Clock = SYSTEM_CLOCK) -> Camera:
    """The camera described by ``config``, not started yet (use it as a context manager).

    With ``config.reconnect`` (the default) the backend is wrapped in a
    :class:`ReconnectingCamera` that reopens it with backoff when it disappears.
    """
    if not config.reconnect:
        return open_backend(config, clock=clock)
    backoff = Backoff(initial=config.backoff_initial_s, maximum=config.backoff_max_s)
    return ReconnectingCamera(
        lambda: open_backend(config, clock=clock),
        backoff,
        clock=clock,
        name=_describe(config),
    )
