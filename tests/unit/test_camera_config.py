"""CameraConfig validation (errors name the key and the fix) and the open_camera factory."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from contract.errors import ConfigError
from hw.camera import CameraConfig, ReconnectingCamera, SyntheticCamera, open_camera
from hw.camera.config import CameraConfig as Direct
from hw.camera.gstreamer import GStreamerAppSinkCamera


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"kind": "usb"}, "camera.kind"),
        ({"width": 0, "height": 480}, "camera.width"),
        ({"width": 641, "height": 480}, "camera.width"),
        ({"width": 640, "height": 99999}, "camera.height"),
        ({"width": 640}, "camera.width / camera.height"),
        ({"width": 640.0, "height": 480}, "camera.width"),
        ({"width": True, "height": 480}, "camera.width"),
        ({"fps": 0}, "camera.fps"),
        ({"fps": float("nan")}, "camera.fps"),
        ({"fps": "30"}, "camera.fps"),
        ({"loop": 1, "kind": "replay", "source": "x"}, "camera.loop"),
        ({"realtime": "yes"}, "camera.realtime"),
        ({"kind": "v4l2", "fourcc": "MJPEG"}, "camera.fourcc"),
        ({"kind": "synthetic", "fourcc": "MJPG"}, "camera.fourcc"),
        ({"kind": "replay"}, "camera.source"),
        ({"loop": True}, "camera.loop"),
        ({"source": 3}, "camera.source"),
        ({"backoff_initial_s": 0}, "camera.backoff_initial_s"),
        ({"backoff_initial_s": 5.0, "backoff_max_s": 1.0}, "camera.backoff_max_s"),
        ({"kind": "rtsp"}, "camera.source"),
        ({"kind": "rtsp", "source": "http://cam/stream"}, "camera.source"),
        ({"kind": "rtsp", "source": "rtsp:///stream"}, "camera.source"),
        ({"kind": "rtsp", "source": "rtsp://cam:99999/x"}, "camera.source"),
        (
            {"kind": "rtsp", "source": "rtsp://cam/x", "rtsp_transport": "http"},
            "camera.rtsp_transport",
        ),
        ({"kind": "rtsp", "source": "rtsp://cam/x", "timeout_s": 0}, "camera.timeout_s"),
    ],
)
def test_invalid_values_name_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        CameraConfig(**kwargs)
    assert str(info.value).startswith(key + ":"), str(info.value)


def test_defaults_are_valid_and_frozen() -> None:
    cfg = CameraConfig()
    assert cfg.kind == "synthetic" and cfg.reconnect and cfg.realtime and not cfg.loop
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.width = 3  # type: ignore[misc]
    assert Direct is CameraConfig


def test_every_field_is_documented() -> None:
    source = inspect.getsource(CameraConfig)
    for f in dataclasses.fields(CameraConfig):
        after = source.split(f"\n    {f.name}: ", 1)[1].splitlines()
        assert after[1].strip().startswith('"""'), f"camera.{f.name} has no docstring"


def test_open_camera_picks_the_backend() -> None:
    assert isinstance(open_camera(CameraConfig()), ReconnectingCamera)
    assert isinstance(open_camera(CameraConfig(reconnect=False)), SyntheticCamera)
    kinds = {
        "replay": "ReplayCamera",
        "v4l2": "V4L2Camera",
        "picamera2": "PiCamera2Camera",
    }
    for kind, cls in kinds.items():
        cfg = CameraConfig(kind=kind, source="x" if kind == "replay" else "", reconnect=False)  # type: ignore[arg-type]
        assert type(open_camera(cfg)).__name__ == cls
    gst = open_camera(CameraConfig(kind="gstreamer", reconnect=False))
    assert isinstance(gst, GStreamerAppSinkCamera)  # pip OpenCV has no GStreamer


def test_an_rtsp_password_stays_out_of_the_camera_name() -> None:
    from hw.camera.rtsp import redact_url

    url = "rtsp://admin:s3cret@192.168.1.64:554/Streaming/Channels/101"
    assert redact_url(url) == "rtsp://admin:***@192.168.1.64:554/Streaming/Channels/101"
    assert redact_url("rtsp://[fe80::1]:554/x") == "rtsp://[fe80::1]:554/x"
    assert redact_url("rtsps://u:p@[fe80::1]/x") == "rtsps://u:***@[fe80::1]/x"
    config = CameraConfig(kind="rtsp", source=url)
    for camera in (open_camera(config), open_camera(dataclasses.replace(config, reconnect=False))):
        assert "s3cret" not in camera.name and "admin:***@192.168.1.64" in camera.name
