"""Frame sources of the pipeline bench (`camveil bench`): a real photo tiled and panned over the
frame, an image file tiled the same way, a video or image folder replayed through
:mod:`hw.camera`'s replay camera, or its synthetic camera. See :mod:`tools.bench`."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import ConfigError, InputFileError
from hw.frame import Frame, Pixels

PAN_STEP = 7
"""Pixels the tiled photo moves per frame (so consecutive frames differ, as in a live scene)."""


def resolve_source(source: str) -> str:
    """``auto`` -> ``photo`` if scikit-image is installed, else ``synthetic``."""
    if source != "auto":
        return source
    try:
        importlib.import_module("skimage.data")
    except ImportError:
        return "synthetic"
    return "photo"


def load_photo(source: str) -> Pixels:
    """The RGB image a ``photo`` or path source tiles."""
    if source == "photo":
        try:
            skdata: Any = importlib.import_module("skimage.data")
        except ImportError as exc:
            raise ConfigError(
                "bench --source photo needs scikit-image (pip install scikit-image); "
                "or use --source synthetic or --source PATH_TO_IMAGE"
            ) from exc
        return np.ascontiguousarray(skdata.astronaut(), dtype=np.uint8)
    from agent.batch import load_image

    try:
        return load_image(Path(source))
    except InputFileError as exc:
        raise ConfigError(f"bench --source {source}: {exc}") from exc


class TiledPhoto:
    """A frame source: ``photo`` repeated over the frame, panning ``PAN_STEP`` px per frame."""

    def __init__(self, photo: Pixels, width: int, height: int, name: str = "photo") -> None:
        ph, pw = photo.shape[:2]
        reps_y = -(-(height + ph) // ph)
        reps_x = -(-(width + pw) // pw)
        self._canvas = np.tile(photo, (reps_y, reps_x, 1))
        self._period = (ph, pw)
        self._size = (width, height)
        self._index = 0
        self._name = name

    def read(self) -> Frame:
        i = self._index
        self._index += 1
        width, height = self._size
        ph, pw = self._period
        dx, dy = (i * PAN_STEP) % pw, (i * PAN_STEP // 2) % ph
        pixels = self._canvas[dy : dy + height, dx : dx + width].copy()
        now = time.monotonic()
        return Frame(pixels, index=i, ts=time.time(), mono=now, source=self._name)


def is_replay(source: str) -> bool:
    """A path that the replay camera plays: a folder, or a file that is not a still image."""
    if source in ("auto", "photo", "synthetic"):
        return False
    from agent.batch import guess_kind

    path = Path(source)
    return path.is_dir() or (path.is_file() and guess_kind(path) != "image")


def check_source(source: str) -> None:
    """Raise ConfigError (before any case runs) if ``source`` cannot give frames."""
    resolved = resolve_source(source)
    if resolved == "synthetic":
        return
    if resolved != "photo" and not Path(resolved).exists():
        raise ConfigError(
            f"bench --source {resolved}: no such file or folder; use auto, photo, synthetic, "
            "or the path of an image, a video or an image folder"
        )
    if not is_replay(resolved):
        load_photo(resolved)


def frame_reader(
    source: str, width: int, height: int
) -> tuple[Callable[[], Frame], Callable[[], None]]:
    """``(read, close)`` for the resolved ``source`` at the given size."""
    if source == "synthetic" or is_replay(source):
        from hw.camera import CameraConfig, open_camera

        if source == "synthetic":
            config = CameraConfig(
                kind="synthetic", width=width, height=height, realtime=False, reconnect=False
            )
        else:
            config = CameraConfig(
                kind="replay",
                source=source,
                width=width,
                height=height,
                loop=True,
                realtime=False,
                reconnect=False,
            )
        camera = open_camera(config)
        camera.start()
        return camera.read, camera.close
    tiled = TiledPhoto(load_photo(source), width, height, name=source)
    return tiled.read, lambda: None
