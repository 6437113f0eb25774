"""Jetson CSI cameras through GStreamer ``nvarguscamerasrc`` (``CameraConfig.kind == "gstreamer"``).

The pipeline ends in an ``appsink`` that yields BGR; it is read with
``cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)`` when this OpenCV was built with GStreamer (the
JetPack ``python3-opencv`` is; pip's ``opencv-python-headless`` is not), otherwise with PyGObject
(``gi``), imported only when the camera starts. Without either, ``start()`` raises
CameraUnavailableError with the install hint.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from typing import Any

import cv2
import numpy as np

from contract.errors import CameraUnavailableError, ConfigError, FrameError
from hw.camera.base import BaseCamera, Camera
from hw.camera.config import CameraConfig
from hw.camera.convert import bgr_to_rgb, resize
from hw.camera.opencv_capture import (
    MAX_FAILED_GRABS,
    CaptureFactory,
    OpenCVCaptureCamera,
)
from hw.clock import SYSTEM_CLOCK, Clock
from hw.frame import Frame, Pixels

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "GStreamer capture needs PyGObject: `sudo apt install python3-gi gir1.2-gstreamer-1.0 "
    "gir1.2-gst-plugins-base-1.0`, in a venv created with `--system-site-packages` (install.sh "
    "does that when the system python imports gi); the system's GStreamer-enabled OpenCV is not "
    "used, as the bundled opencv-python-headless comes first in the venv and has no GStreamer"
)
SINK_NAME = "camveil_sink"
DEFAULT_SIZE = (1280, 720)
DEFAULT_FPS = 30.0
PULL_TIMEOUT_S = 2.0


def jetson_pipeline(config: CameraConfig) -> str:
    """The capture pipeline for ``config``: ``source`` is a sensor id, or a whole pipeline."""
    if "!" in config.source:
        return config.source
    sensor = config.source.strip() or "0"
    if not sensor.isdigit():
        raise ConfigError(
            f'camera.source: for kind = "gstreamer" give a sensor id such as 0 or a complete '
            f"pipeline ending in appsink, got {config.source!r}"
        )
    width, height = (
        (config.width, config.height)
        if config.width is not None and config.height is not None
        else DEFAULT_SIZE
    )
    rate = Fraction(config.fps or DEFAULT_FPS).limit_denominator(1001)
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},"
        f"framerate={rate.numerator}/{rate.denominator},format=NV12 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        f"appsink name={SINK_NAME} drop=true max-buffers=1 sync=false"
    )


def opencv_has_gstreamer() -> bool:
    """Whether this cv2 build can open GStreamer pipelines."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def gstreamer_camera(
    config: CameraConfig,
    *,
    clock: Clock = SYSTEM_CLOCK,
    capture_factory: CaptureFactory | None = None,
) -> Camera:
    """The GStreamer camera for ``config``: via OpenCV if it can, else via PyGObject."""
    pipeline = jetson_pipeline(config)
    if capture_factory is not None or opencv_has_gstreamer():
        factory = capture_factory or (lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER))
        return GStreamerOpenCVCamera(config, factory, clock=clock)
    return GStreamerAppSinkCamera(config, clock=clock)


class GStreamerOpenCVCamera(OpenCVCaptureCamera):
    """The pipeline read by ``cv2.VideoCapture(..., cv2.CAP_GSTREAMER)``."""

    def __init__(
        self, config: CameraConfig, factory: CaptureFactory, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        size = (config.width, config.height) if config.width and config.height else None
        super().__init__(f"gstreamer:{config.source or '0'}", factory, size=size, clock=clock)
        self._config = config

    def _open_failed_hint(self) -> str:
        return (
            f"{self.name}: OpenCV cannot start the pipeline {jetson_pipeline(self._config)!r}; "
            "check the camera with `gst-launch-1.0 nvarguscamerasrc num-buffers=1 ! fakesink` "
            "and that nvargus-daemon is running"
        )


class GStreamerAppSinkCamera(BaseCamera):
    """The pipeline run by PyGObject; frames pulled from its appsink and copied out at once."""

    def __init__(self, config: CameraConfig, *, clock: Clock = SYSTEM_CLOCK) -> None:
        super().__init__(f"gstreamer:{config.source or '0'}", clock)
        self._config = config
        self._size = (config.width, config.height) if config.width and config.height else None
        self._gst: Any = None
        self._pipeline: Any = None
        self._sink: Any = None
        self._index = 0
        self._failures = 0

    @property
    def fps(self) -> float | None:
        return self._config.fps or DEFAULT_FPS

    def _open(self) -> None:
        description = jetson_pipeline(self._config)
        if f"name={SINK_NAME}" not in description:
            raise ConfigError(
                f"camera.source: without OpenCV GStreamer support the pipeline must end in "
                f"`appsink name={SINK_NAME}`"
            )
        gst = _import_gst()
        if not gst.is_initialized():
            gst.init(None)
        try:
            pipeline = gst.parse_launch(description)
        except Exception as exc:  # GLib.GError; gi gives no narrower importable type
            raise CameraUnavailableError(f"{self.name}: bad pipeline: {exc}") from exc
        sink = pipeline.get_by_name(SINK_NAME)
        if pipeline.set_state(gst.State.PLAYING) == gst.StateChangeReturn.FAILURE:
            pipeline.set_state(gst.State.NULL)
            raise CameraUnavailableError(
                f"{self.name}: the pipeline did not start ({_bus_error(gst, pipeline)}); check "
                "the camera with `gst-launch-1.0 nvarguscamerasrc num-buffers=1 ! fakesink`"
            )
        self._gst, self._pipeline, self._sink = gst, pipeline, sink
        self._index = 0
        self._failures = 0

    def _release(self) -> None:
        pipeline, self._pipeline, self._sink = self._pipeline, None, None
        if pipeline is not None:
            pipeline.set_state(self._gst.State.NULL)

    def _next(self) -> Frame:
        if self._sink is None:
            raise CameraUnavailableError(f"{self.name}: not open")
        gst = self._gst
        sample = self._sink.emit("try-pull-sample", int(PULL_TIMEOUT_S * gst.SECOND))
        index = self._index
        self._index += 1
        if sample is None:
            self._failures += 1
            if self._sink.get_property("eos") or self._failures >= MAX_FAILED_GRABS:
                raise CameraUnavailableError(
                    f"{self.name}: no frames ({_bus_error(gst, self._pipeline)})"
                )
            raise FrameError(f"{self.name}: no frame {index} within {PULL_TIMEOUT_S}s")
        self._failures = 0
        rgb = _sample_to_rgb(gst, sample, self.name)
        return self._frame(resize(rgb, self._size), index)


def _sample_to_rgb(gst: Any, sample: Any, what: str) -> Pixels:
    structure = sample.get_caps().get_structure(0)
    width, height = int(structure.get_value("width")), int(structure.get_value("height"))
    buffer = sample.get_buffer()
    ok, info = buffer.map(gst.MapFlags.READ)
    if not ok:
        raise FrameError(f"{what}: cannot map the frame buffer")
    try:
        data = np.frombuffer(info.data, dtype=np.uint8)
        stride = data.size // height if height else 0  # rows are padded to 4 bytes
        if stride < width * 3 or data.size < stride * height:
            raise FrameError(f"{what}: {data.size} bytes do not hold a {width}x{height} BGR frame")
        bgr = data[: stride * height].reshape(height, stride)[:, : width * 3]
        return bgr_to_rgb(bgr.reshape(height, width, 3), what)  # copies before unmap
    finally:
        buffer.unmap(info)


def _bus_error(gst: Any, pipeline: Any) -> str:
    bus = pipeline.get_bus() if pipeline is not None else None
    message = bus.pop_filtered(gst.MessageType.ERROR) if bus is not None else None
    if message is None:
        return "no error reported"
    err, debug = message.parse_error()
    return f"{err.message} ({debug})"


def _import_gst() -> Any:
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError) as exc:
        raise CameraUnavailableError(f"gstreamer: {INSTALL_HINT}") from exc
    return Gst
