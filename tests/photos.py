"""Real photos for tests, from PyPI packages only (never from ../shared).

- ``astronaut``, ``camera`` (faces) and ``coffee`` (no face) come from scikit-image's bundled
  data (``pip install scikit-image``, a dev dependency);
- ``obama``, ``obama2``, ``obama3``, ``biden``, ``obama_partial_face``, ``obama_partial_face2``
  are the test images of the ``face_recognition==1.3.0`` sdist, fetched once with
  ``pip download`` into ``<repo>/.cache/pypi`` (gitignored).

:func:`photo` returns HxWx3 uint8 RGB. A photo that cannot be had raises
:class:`PhotoUnavailableError` with the command that fixes it: tests fail loudly, never skip.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "pypi"
SKIMAGE_PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket")
FACE_RECOGNITION = "face_recognition==1.3.0"
FACE_RECOGNITION_SDIST = "face_recognition-1.3.0.tar.gz"
FACE_RECOGNITION_PHOTOS = (
    "obama",
    "obama2",
    "obama3",
    "biden",
    "obama_partial_face",
    "obama_partial_face2",
)


class PhotoUnavailableError(RuntimeError):
    """A test photo cannot be loaded; the message says how to get it."""


def photo(name: str) -> npt.NDArray[np.uint8]:
    """The named photo as a fresh HxWx3 uint8 RGB array."""
    if name in SKIMAGE_PHOTOS:
        img = _skimage(name)
    elif name in FACE_RECOGNITION_PHOTOS:
        img = _face_recognition(name)
    else:
        known = ", ".join(SKIMAGE_PHOTOS + FACE_RECOGNITION_PHOTOS)
        raise KeyError(f"unknown test photo {name!r}; known: {known}")
    return img.copy()


@cache
def _skimage(name: str) -> npt.NDArray[np.uint8]:
    try:
        import skimage.data
    except ImportError as exc:
        raise PhotoUnavailableError(
            f"photo {name!r} needs scikit-image: `{sys.executable} -m pip install scikit-image`"
        ) from exc
    return _rgb(np.asarray(getattr(skimage.data, name)()))


def face_recognition_sdist() -> Path:
    """The face_recognition 1.3.0 sdist, downloaded into the repo's .cache on first use."""
    path = CACHE / FACE_RECOGNITION_SDIST
    if path.is_file():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += ["-q", "-d", str(CACHE), FACE_RECOGNITION]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not path.is_file():
        raise PhotoUnavailableError(
            f"cannot download {FACE_RECOGNITION} (its test images are test photos): "
            f"{done.stderr.strip()[-400:]}\nfix: `{' '.join(cmd)}` with access to PyPI"
        )
    return path


@cache
def _face_recognition(name: str) -> npt.NDArray[np.uint8]:
    from PIL import Image

    member = f"face_recognition-1.3.0/tests/test_images/{name}.jpg"
    with tarfile.open(face_recognition_sdist()) as tf:
        fh = tf.extractfile(member)
        if fh is None:
            raise PhotoUnavailableError(f"{member} is missing from {FACE_RECOGNITION_SDIST}")
        data = fh.read()
    return _rgb(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def _rgb(img: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3], dtype=np.uint8)
