"""Pixel conversions shared by the backends: validate, BGR -> RGB, resize. All return new arrays."""

from __future__ import annotations

import cv2
import numpy as np

from contract.errors import FrameError
from hw.frame import Pixels


def bgr_to_rgb(bgr: object, what: str) -> Pixels:
    """A contiguous RGB copy of a ``HxWx3`` uint8 BGR array (OpenCV, picamera2 "RGB888").

    Raises FrameError (naming ``what``) for anything else: a capture that returned garbage.
    """
    arr = as_image(bgr, what)
    return np.ascontiguousarray(arr[..., ::-1])


def as_image(arr: object, what: str) -> Pixels:
    """``arr`` itself if it is a non-empty ``HxWx3`` uint8 array; FrameError otherwise."""
    if not isinstance(arr, np.ndarray):
        raise FrameError(f"{what}: no image data (got {type(arr).__name__})")
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise FrameError(f"{what}: expected HxWx3 uint8 pixels, got {arr.dtype} {arr.shape}")
    return arr


def resize(rgb: Pixels, size: tuple[int, int] | None) -> Pixels:
    """``rgb`` resized to ``size`` = (width, height); area filter to shrink; ``None``: as is."""
    if size is None or (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    shrink = size[0] < rgb.shape[1] or size[1] < rgb.shape[0]
    out = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return as_image(np.ascontiguousarray(out), "resize")
