"""On a real Raspberry Pi with a CSI camera: frames through picamera2 (skipped elsewhere).

Run on the Pi with ``.venv/bin/pytest -m device tests/device``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from hw.camera import CameraConfig, ReconnectingCamera, open_camera
from hw.camera.picamera2 import PiCamera2Camera


def _is_raspberry_pi() -> bool:
    model = Path("/proc/device-tree/model")
    try:
        return "Raspberry Pi" in model.read_bytes().decode(errors="replace")
    except OSError:
        return False


pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(not _is_raspberry_pi(), reason="needs a Raspberry Pi with a CSI camera"),
]


def test_picamera2_delivers_rgb_frames_at_the_configured_size() -> None:
    cfg = CameraConfig(kind="picamera2", width=640, height=480, fps=15, reconnect=False)
    with PiCamera2Camera(cfg) as cam:
        frames = [cam.read() for _ in range(20)]
        stats = cam.stats
    assert all(f.pixels.shape == (480, 640, 3) and f.pixels.dtype == np.uint8 for f in frames)
    assert all(b.index > a.index for a, b in itertools.pairwise(frames))
    assert all(b.mono >= a.mono for a, b in itertools.pairwise(frames))
    assert stats.delivered == 20
    assert frames[-1].pixels.std() > 0  # an image, not a blank buffer
    elapsed = frames[-1].mono - frames[0].mono
    assert elapsed > 19 / 15 * 0.5  # paced by the sensor, not as fast as possible


def test_picamera2_through_the_factory_with_reconnect() -> None:
    cam = open_camera(CameraConfig(kind="picamera2", width=640, height=480))
    assert isinstance(cam, ReconnectingCamera)
    with cam:
        frame = cam.read()
    assert frame.pixels.shape == (480, 640, 3)
    assert cam.stats.reconnects == 0
