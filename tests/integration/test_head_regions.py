"""``[detector] persons``: the real int8 person detector (pose_detection_int8) beside the real
face detector, on real photos, through the guard and the pipeline. Where the face detector finds
nothing, the head region placed from the person's keypoints holds the face and the redacted
output overwrites it; where it finds the face, no head region is added."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame
from agent.vision.detection import Box, Detector
from agent.vision.factory import DetectorConfig, build_detector
from agent.vision.guard import GuardedDetector
from camveil.__main__ import main
from hw.frame import Frame
from tests.photos import photo


@pytest.fixture(scope="module")
def faces() -> Detector:
    return build_detector(DetectorConfig())


@pytest.fixture(scope="module")
def blind() -> Detector:
    """Persons on, and a face threshold no face in the test photos reaches: a face detector
    that misses every face, as it does on people seen from behind."""
    return build_detector(DetectorConfig(persons=True, threshold=0.99))


def _inside(inner: Box, outer: Box) -> bool:
    return (
        outer.x0 <= inner.x0
        and outer.y0 <= inner.y0
        and inner.x1 <= outer.x1
        and inner.y1 <= outer.y1
    )


@pytest.mark.parametrize("name", ["astronaut", "obama", "biden"])
def test_a_missed_face_is_overwritten_by_its_head_region(
    faces: Detector, blind: Detector, name: str
) -> None:
    rgb = photo(name)
    (face,) = [d.box for d in faces.detect(rgb) if d.score > 0.5]
    out: list[ProcessedFrame] = []

    def read() -> Frame:
        return Frame(rgb.copy(), index=0, ts=0.0, mono=0.0, source=name)

    with GuardedDetector(blind, timeout=30.0) as guard:
        processed = Pipeline(read, guard, out.append, PrivacyConfig()).step()
    assert processed is not None
    assert [d.kind for d in processed.detections] == ["head"]  # no face found, one head
    head = processed.detections[0].box
    assert _inside(face, head)
    assert head.area < 6 * face.area  # a head, not the whole person
    x0, y0, x1, y1 = (round(v) for v in (face.x0, face.y0, face.x1, face.y1))
    assert not (rgb[y0:y1, x0:x1] == 0).all()  # the photo is not black there...
    assert (processed.redacted.pixels[y0:y1, x0:x1] == 0).all()  # ...the output is
    assert (processed.redacted.pixels[-20:] == rgb[-20:]).all()  # the body below is left


def test_a_found_face_gets_no_head_region() -> None:
    found = build_detector(DetectorConfig(persons=True)).detect(photo("astronaut"))
    assert [d.kind for d in found if d.score > 0.5] == ["face"]
    assert all(d.kind == "face" for d in found)


def test_no_person_no_head_region(blind: Detector) -> None:
    assert blind.detect(photo("coffee")) == []


def test_camveil_redact_persons_overwrites_a_face_the_face_detector_misses(
    faces: Detector, tmp_path: Path
) -> None:
    rgb = photo("astronaut")
    (face,) = [d.box for d in faces.detect(rgb) if d.score > 0.5]
    src, out = tmp_path / "astronaut.png", tmp_path / "out"
    Image.fromarray(rgb).save(src)
    x0, y0, x1, y1 = (round(v) for v in (face.x0, face.y0, face.x1, face.y1))
    for persons, face_left in (([], True), (["--persons"], False)):
        args = ["redact", str(src), "--out", str(out), "--threshold", "0.99", "--no-progress"]
        assert main([*args, *persons]) == 0
        with Image.open(out / "astronaut.png") as img:
            written = np.asarray(img.convert("RGB"))
        assert (written[y0:y1, x0:x1] == rgb[y0:y1, x0:x1]).all() == face_left
        assert not persons or (written[y0:y1, x0:x1] == 0).all()
