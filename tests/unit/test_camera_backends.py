"""The live backends (V4L2, picamera2, GStreamer) driven through fakes of their libraries."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest

from contract.errors import CameraUnavailableError, ConfigError, FrameError
from hw.camera import CameraConfig, CameraStats, FakeClock
from hw.camera import gstreamer as gst_mod
from hw.camera.gstreamer import (
    GStreamerAppSinkCamera,
    GStreamerOpenCVCamera,
    gstreamer_camera,
    jetson_pipeline,
)
from hw.camera.opencv_capture import MAX_FAILED_GRABS
from hw.camera.picamera2 import PiCamera2Camera
from hw.camera.v4l2 import V4L2Camera, device_of

BLUE_BGR = (255, 0, 0)


def _bgr(h: int = 48, w: int = 64, colour: tuple[int, int, int] = BLUE_BGR) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = colour
    return img


class FakeCapture:
    """Stands in for cv2.VideoCapture: plays a script of frames (None = a failed read)."""

    def __init__(self, frames: list[np.ndarray | None], opened: bool = True) -> None:
        self.frames, self.opened = list(frames), opened
        self.props: dict[int, float] = {}
        self.released = False

    def isOpened(self) -> bool:
        return self.opened

    def read(self) -> tuple[bool, object]:
        frame = self.frames.pop(0) if self.frames else None
        return frame is not None, frame

    def set(self, prop: int, value: float, /) -> bool:
        self.props[prop] = value
        return True

    def get(self, prop: int, /) -> float:
        return self.props.get(prop, 0.0)

    def release(self) -> None:
        self.released = True


# ---- V4L2 -------------------------------------------------------------------------------------


def test_v4l2_configures_then_delivers_rgb(tmp_path: Path) -> None:
    node = tmp_path / "video0"
    node.touch()
    cap = FakeCapture([_bgr(), _bgr()])
    cfg = CameraConfig(kind="v4l2", source=str(node), width=64, height=48, fps=30, fourcc="MJPG")
    with V4L2Camera(cfg, capture_factory=lambda: cap, clock=FakeClock()) as cam:
        frame = cam.read()
        assert cam.fps == 30.0
        assert cam.name == f"v4l2:{node}"
    assert cap.released
    assert cap.props[cv2.CAP_PROP_FOURCC] == cv2.VideoWriter.fourcc(*"MJPG")
    assert cap.props[cv2.CAP_PROP_FRAME_WIDTH] == 64
    assert cap.props[cv2.CAP_PROP_FRAME_HEIGHT] == 48
    assert cap.props[cv2.CAP_PROP_BUFFERSIZE] == 1
    assert frame.pixels[0, 0].tolist() == [0, 0, 255]  # BGR blue is RGB blue
    assert frame.index == 0


def test_v4l2_resizes_when_the_driver_ignores_the_size(tmp_path: Path) -> None:
    cap = FakeCapture([_bgr(96, 128)])
    cfg = CameraConfig(kind="v4l2", source="0", width=64, height=48)
    with V4L2Camera(cfg, capture_factory=lambda: cap) as cam:
        assert cam.read().pixels.shape == (48, 64, 3)


def test_v4l2_failed_reads_are_lost_frames_then_a_lost_camera(tmp_path: Path) -> None:
    node = tmp_path / "video0"
    node.touch()
    cap = FakeCapture([_bgr(), None, _bgr()] + [None] * MAX_FAILED_GRABS)
    cfg = CameraConfig(kind="v4l2", source=str(node))
    with V4L2Camera(cfg, capture_factory=lambda: cap) as cam:
        assert cam.read().index == 0
        with pytest.raises(FrameError):
            cam.read()
        assert cam.read().index == 2
        for _ in range(MAX_FAILED_GRABS - 1):
            with pytest.raises(FrameError):
                cam.read()
        with pytest.raises(CameraUnavailableError, match="stopped delivering"):
            cam.read()
        assert cam.stats == CameraStats(delivered=2, lost=MAX_FAILED_GRABS, corrupt=5)


def test_v4l2_unplugged_device_is_lost_at_once(tmp_path: Path) -> None:
    node = tmp_path / "video0"
    node.touch()
    cap = FakeCapture([_bgr()])
    with V4L2Camera(CameraConfig(kind="v4l2", source=str(node)), capture_factory=lambda: cap) as c:
        c.read()
        node.unlink()
        with pytest.raises(CameraUnavailableError):
            c.read()


def test_v4l2_cannot_open_says_why(tmp_path: Path) -> None:
    cfg = CameraConfig(kind="v4l2", source=str(tmp_path / "video7"))
    cap = FakeCapture([], opened=False)
    with pytest.raises(CameraUnavailableError, match="v4l2-ctl --list-devices"):
        V4L2Camera(cfg, capture_factory=lambda: cap).start()
    assert cap.released
    (tmp_path / "video7").touch()
    with pytest.raises(CameraUnavailableError, match="video` group"):
        V4L2Camera(cfg, capture_factory=lambda: FakeCapture([], opened=False)).start()


def test_device_of() -> None:
    assert device_of("") == 0
    assert device_of("2") == 2
    assert device_of("/dev/video4") == "/dev/video4"


# ---- picamera2 --------------------------------------------------------------------------------


class FakeRequest:
    def __init__(self, array: np.ndarray, metadata: dict[str, Any]) -> None:
        self.array, self.metadata, self.released = array, metadata, False

    def make_array(self, name: str) -> np.ndarray:
        assert name == "main" and not self.released
        return self.array

    def get_metadata(self) -> dict[str, Any]:
        return self.metadata


class FakePicamera2:
    cameras: ClassVar[list[dict[str, Any]]] = [{"Model": "imx708"}]
    instances: ClassVar[list[FakePicamera2]] = []

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return FakePicamera2.cameras

    def __init__(self, number: int) -> None:
        self.number, self.config, self.started, self.closed = number, None, False, False
        self.requests: list[FakeRequest] = []
        self.fail: Exception | None = None
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any], controls: dict[str, Any]) -> Any:
        return {"main": main, "controls": controls}

    def configure(self, config: Any) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True

    @contextlib.contextmanager
    def captured_request(self) -> Iterator[FakeRequest]:
        if self.fail is not None:
            raise self.fail
        req = self.requests.pop(0)
        try:
            yield req
        finally:
            req.released = True


def _md(n: int, duration_us: int = 33_333) -> dict[str, Any]:
    return {"SensorTimestamp": 5_000_000_000 + n * duration_us * 1000, "FrameDuration": duration_us}


def test_picamera2_copies_out_releases_and_converts_to_rgb() -> None:
    FakePicamera2.instances.clear()
    cfg = CameraConfig(kind="picamera2", width=64, height=48, fps=30)
    cam = PiCamera2Camera(cfg, picamera2_class=FakePicamera2, clock=FakeClock())
    with cam:
        pi = FakePicamera2.instances[-1]
        assert pi.config == {
            "main": {"format": "RGB888", "size": (64, 48)},
            "controls": {"FrameRate": 30.0},
        }
        reqs = [FakeRequest(_bgr(), _md(0)), FakeRequest(_bgr(), _md(1))]
        pi.requests = list(reqs)
        first = cam.read()
        assert reqs[0].released
        assert first.pixels[0, 0].tolist() == [0, 0, 255]  # "RGB888" is B,G,R in memory
        assert not np.shares_memory(first.pixels, reqs[0].array)
        assert cam.read().index == 1
        assert cam.fps == pytest.approx(30.0, rel=1e-3)
    assert pi.closed and not pi.started


def test_picamera2_sensor_timestamp_gaps_are_lost_frames() -> None:
    FakePicamera2.instances.clear()
    with PiCamera2Camera(CameraConfig(kind="picamera2"), picamera2_class=FakePicamera2) as cam:
        pi = FakePicamera2.instances[-1]
        pi.requests = [FakeRequest(_bgr(), _md(n)) for n in (0, 1, 4, 5)]
        assert [cam.read().index for _ in range(4)] == [0, 1, 4, 5]
        assert cam.stats == CameraStats(delivered=4, lost=2)


def test_picamera2_failures() -> None:
    FakePicamera2.instances.clear()
    with PiCamera2Camera(CameraConfig(kind="picamera2"), picamera2_class=FakePicamera2) as cam:
        pi = FakePicamera2.instances[-1]
        pi.requests = [FakeRequest(np.zeros((4, 4), np.uint8), _md(0))]
        with pytest.raises(FrameError):
            cam.read()
        pi.fail = RuntimeError("Camera frontend has timed out!")
        with pytest.raises(CameraUnavailableError, match="timed out"):
            cam.read()

    class NoCamera(FakePicamera2):
        cameras: ClassVar[list[dict[str, Any]]] = []

        @staticmethod
        def global_camera_info() -> list[dict[str, Any]]:
            return []

    with pytest.raises(CameraUnavailableError, match="list-cameras"):
        PiCamera2Camera(CameraConfig(kind="picamera2"), picamera2_class=NoCamera).start()
    with pytest.raises(CameraUnavailableError, match="camera number"):
        PiCamera2Camera(
            CameraConfig(kind="picamera2", source="front"), picamera2_class=NoCamera
        ).start()


# ---- GStreamer --------------------------------------------------------------------------------


def test_jetson_pipeline() -> None:
    pipe = jetson_pipeline(
        CameraConfig(kind="gstreamer", source="1", width=640, height=480, fps=29.97)
    )
    assert pipe.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=640,height=480,framerate=2997/100" in pipe
    assert "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR" in pipe
    assert pipe.endswith("appsink name=camveil_sink drop=true max-buffers=1 sync=false")
    default = jetson_pipeline(CameraConfig(kind="gstreamer"))
    assert "sensor-id=0" in default and "width=1280,height=720,framerate=30/1" in default
    custom = "videotestsrc ! videoconvert ! video/x-raw,format=BGR ! appsink"
    assert jetson_pipeline(CameraConfig(kind="gstreamer", source=custom)) == custom
    with pytest.raises(ConfigError, match="sensor id"):
        jetson_pipeline(CameraConfig(kind="gstreamer", source="front"))


def test_gstreamer_through_opencv() -> None:
    cap = FakeCapture([_bgr()])
    cam = gstreamer_camera(CameraConfig(kind="gstreamer"), capture_factory=lambda: cap)
    assert isinstance(cam, GStreamerOpenCVCamera)
    with cam:
        assert cam.read().pixels[0, 0].tolist() == [0, 0, 255]
    with pytest.raises(CameraUnavailableError, match="nvargus-daemon"):
        gstreamer_camera(
            CameraConfig(kind="gstreamer"), capture_factory=lambda: FakeCapture([], opened=False)
        ).start()


def _fake_gst(samples: list[Any], playing_fails: bool = False) -> Any:
    """Just enough of gi.repository.Gst for GStreamerAppSinkCamera."""
    failure = object()
    sink = SimpleNamespace(
        emit=lambda signal, timeout: samples.pop(0) if samples else None,
        get_property=lambda name: False,
    )
    bus = SimpleNamespace(pop_filtered=lambda kind: None)
    states: list[str] = []
    pipeline = SimpleNamespace(
        get_by_name=lambda name: sink,
        get_bus=lambda: bus,
        set_state=lambda s: (states.append(s), failure if playing_fails else "ok")[1],
    )
    return SimpleNamespace(
        is_initialized=lambda: True,
        parse_launch=lambda description: pipeline,
        State=SimpleNamespace(PLAYING="PLAYING", NULL="NULL"),
        StateChangeReturn=SimpleNamespace(FAILURE=failure),
        MapFlags=SimpleNamespace(READ=1),
        MessageType=SimpleNamespace(ERROR=2),
        SECOND=1_000_000_000,
        states=states,
    )


def _sample(bgr: np.ndarray, stride: int) -> Any:
    h, w, _ = bgr.shape
    rows = np.zeros((h, stride), np.uint8)
    rows[:, : w * 3] = bgr.reshape(h, w * 3)
    info = SimpleNamespace(data=rows.tobytes())
    unmapped: list[bool] = []
    buffer = SimpleNamespace(map=lambda flags: (True, info), unmap=lambda i: unmapped.append(True))
    structure = SimpleNamespace(get_value=lambda key: {"width": w, "height": h}[key])
    return SimpleNamespace(
        get_caps=lambda: SimpleNamespace(get_structure=lambda i: structure),
        get_buffer=lambda: buffer,
        unmapped=unmapped,
    )


def test_gstreamer_appsink_copies_padded_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = _bgr(3, 5)  # 15 bytes per row, padded to 16 by GStreamer
    odd[1, 2] = (0, 255, 0)
    samples = [_sample(odd, stride=16)]
    gst = _fake_gst(list(samples))
    monkeypatch.setattr(gst_mod, "_import_gst", lambda: gst)
    cam = GStreamerAppSinkCamera(CameraConfig(kind="gstreamer"))
    with cam:
        frame = cam.read()
        for _ in range(MAX_FAILED_GRABS - 1):
            with pytest.raises(FrameError):
                cam.read()  # no sample within the timeout
        with pytest.raises(CameraUnavailableError):
            cam.read()
    assert frame.pixels.shape == (3, 5, 3)
    assert frame.pixels[0, 0].tolist() == [0, 0, 255]
    assert frame.pixels[1, 2].tolist() == [0, 255, 0]
    assert samples[0].unmapped == [True]
    assert gst.states == ["PLAYING", "NULL"]


def test_gstreamer_appsink_pipeline_that_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gst_mod, "_import_gst", lambda: _fake_gst([], playing_fails=True))
    with pytest.raises(CameraUnavailableError, match="did not start"):
        GStreamerAppSinkCamera(CameraConfig(kind="gstreamer")).start()
    custom = CameraConfig(kind="gstreamer", source="videotestsrc ! appsink")
    with pytest.raises(ConfigError, match="camveil_sink"):
        GStreamerAppSinkCamera(custom).start()
