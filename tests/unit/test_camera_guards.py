"""Hardware libraries are optional: hw.camera imports anywhere, backends explain what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from contract.errors import CameraUnavailableError
from hw.camera import CameraConfig, ReconnectingCamera, open_camera
from hw.camera import gstreamer as gst_mod
from hw.camera.gstreamer import GStreamerAppSinkCamera, gstreamer_camera
from hw.camera.picamera2 import PiCamera2Camera


def test_importing_every_backend_loads_no_hardware_library() -> None:
    code = (
        "import sys\n"
        "import hw.camera, hw.camera.picamera2, hw.camera.gstreamer, hw.camera.v4l2, "
        "hw.camera.replay\n"
        "loaded = sorted(m for m in ('picamera2', 'gi', 'libcamera') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_picamera2_missing_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails even on a Pi
    cam = PiCamera2Camera(CameraConfig(kind="picamera2", width=640, height=480))
    with pytest.raises(CameraUnavailableError) as info:
        cam.start()
    message = str(info.value)
    assert "sudo apt install python3-picamera2" in message
    assert "--system-site-packages" in message
    assert isinstance(info.value.__cause__, ImportError)


def test_picamera2_through_the_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    cam = open_camera(CameraConfig(kind="picamera2"))
    assert isinstance(cam, ReconnectingCamera)
    with pytest.raises(CameraUnavailableError, match="python3-picamera2"):
        cam.start()  # the first open is not retried: a missing library is reported at once


def test_gstreamer_missing_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gi", None)
    monkeypatch.setattr(gst_mod, "opencv_has_gstreamer", lambda: False)
    cam = gstreamer_camera(CameraConfig(kind="gstreamer"))
    assert isinstance(cam, GStreamerAppSinkCamera)
    with pytest.raises(CameraUnavailableError) as info:
        cam.start()
    message = str(info.value)
    assert "python3-gi" in message
    assert "opencv-python-headless" in message  # why the system OpenCV is not the route
    assert "--system-site-packages" in message
