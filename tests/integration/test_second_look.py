"""The second look (tools/second_look.py) with the real CenterFace and YuNet on real photos.

Photos come from PyPI packages (tests/photos.py), never from ../shared.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.vision.centerface import CenterFaceConfig, CenterFaceDetector
from agent.vision.guard import GuardedDetector
from agent.vision.yunet import YuNetDetector
from contract.errors import DetectorFailedError
from models import verified_path
from tools.second_look import SecondLookConfig, SecondLookDetector

try:
    from tests.photos import photo
except ModuleNotFoundError:  # `pytest` (not `python -m pytest`) without a tests/conftest.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.photos import photo

# Eileen Collins' face in skimage.data.astronaut() (512 x 512), hairline to chin
FACE = (180.0, 60.0, 270.0, 180.0)


def _small_astronaut() -> npt.NDArray[np.uint8]:
    """The astronaut photo at 1/8 size (64 x 64): her face is about 14 px."""
    small = cv2.resize(photo("astronaut"), (64, 64), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small)


def _centerface(threshold: float) -> CenterFaceDetector:
    config = CenterFaceConfig(score_threshold=threshold, small_score_threshold=threshold)
    return CenterFaceDetector(verified_path("centerface_int8"), config).load()


@pytest.fixture(scope="module")
def yunet() -> YuNetDetector:
    return YuNetDetector(verified_path("yunet_int8")).load()


def test_an_uncertain_small_face_is_kept_and_clutter_is_not(yunet: YuNetDetector) -> None:
    """The astronaut at 1/8 size (a 14 px face): CenterFace scores her face under 0.5 and also
    boxes clutter above 0.05. With the threshold at 0.5 every one of them is uncertain: YuNet
    confirms the face and none of the clutter."""
    small = _small_astronaut()
    centerface = _centerface(0.5)
    assert centerface.detect(small) == []  # the face is below the threshold
    cand = centerface.candidates(small, floor=0.05)
    on_face = [_centre_in(b, [v / 8 for v in FACE]) for b in cand.boxes]
    assert any(on_face) and not all(on_face)  # the band holds the face and some clutter

    kept = SecondLookDetector(centerface, yunet, SecondLookConfig()).detect(small)
    assert kept, "the face was not confirmed"
    for d in kept:
        box = (d.box.x0, d.box.y0, d.box.x1, d.box.y1)
        assert _centre_in(box, [v / 8 for v in FACE]), d  # nothing off her face
        assert d.score < 0.5  # CenterFace's own box and score


def test_no_face_photos_keep_nothing(yunet: YuNetDetector) -> None:
    detector = SecondLookDetector(_centerface(0.5), yunet, SecondLookConfig(band_low=0.02))
    for name in ("coffee", "chelsea", "rocket"):
        assert detector.detect(photo(name)) == []


def test_confident_detections_stay_without_a_look(yunet: YuNetDetector) -> None:
    img = photo("obama")
    centerface = _centerface(0.12)
    sure = centerface.detect(img)
    looked = SecondLookDetector(centerface, yunet, SecondLookConfig()).detect(img)
    assert sure and all(d in looked for d in sure)


def test_an_error_in_the_second_look_drops_the_frame() -> None:
    """A verifier that cannot run (its model never loaded) fails the frame, as any detector
    error does: the guard raises and the pipeline drops the frame (fail closed)."""
    unloaded = YuNetDetector(verified_path("yunet_int8"))
    img = _small_astronaut()
    detector = SecondLookDetector(_centerface(0.5), unloaded, SecondLookConfig())
    with GuardedDetector(detector, timeout=30.0) as guarded, pytest.raises(DetectorFailedError):
        guarded.detect(img)


def _centre_in(box: Iterable[float], region: list[float]) -> bool:
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]
