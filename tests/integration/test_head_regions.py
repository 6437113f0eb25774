"""``[detector] persons``: the real int8 person detector (pose_detection_int8) beside the real
face detector, on real photos. The head region it places from its keypoints holds the face the
face detector found, and the redacted output overwrites that face even when the face box alone
is not redacted."""

from __future__ import annotations

import pytest

from agent.pipeline import PrivacyConfig, regions_to_redact
from agent.privacy.redact import redact
from agent.vision.detection import Box, Detection, Detector
from agent.vision.factory import DetectorConfig, build_detector
from agent.vision.track import TrackedRegion
from hw.frame import Frame
from tests.photos import photo


@pytest.fixture(scope="module")
def detector() -> Detector:
    return build_detector(DetectorConfig(persons=True))


def _inside(inner: Box, outer: Box) -> bool:
    return (
        outer.x0 <= inner.x0
        and outer.y0 <= inner.y0
        and inner.x1 <= outer.x1
        and inner.y1 <= outer.y1
    )


@pytest.mark.parametrize("name", ["astronaut", "obama", "biden"])
def test_the_head_region_covers_the_face_and_is_overwritten(detector: Detector, name: str) -> None:
    rgb = photo(name)
    found = detector.detect(rgb)
    faces = [d for d in found if d.kind == "face" and d.score > 0.5]
    heads = [d for d in found if d.kind == "head"]
    assert len(faces) == 1 and len(heads) == 1, found
    face, head = faces[0].box, heads[0].box
    assert _inside(face, head)
    # not the whole person either: a head is at most about twice a face's size
    assert head.area < 6 * face.area
    # redact the head region alone (as if the face detector had missed): the face is gone
    frame = Frame(rgb, index=0, ts=0.0, mono=0.0, source=name)
    only_head = [TrackedRegion(1, "head", head, 0)]
    out = redact(frame, regions_to_redact(only_head, PrivacyConfig()), PrivacyConfig().redaction)
    x0, y0, x1, y1 = (round(v) for v in (face.x0, face.y0, face.x1, face.y1))
    assert (out.pixels[y0:y1, x0:x1] == 0).all()
    assert not (rgb[y0:y1, x0:x1] == 0).all()  # the photo itself was not black there
    assert (out.pixels[-20:] == rgb[-20:]).all()  # the body below the head is left


def test_no_person_no_head_region(detector: Detector) -> None:
    assert [d for d in detector.detect(photo("coffee")) if d.kind == "head"] == []


def test_heads_only_when_asked_for() -> None:
    found: list[Detection] = build_detector(DetectorConfig()).detect(photo("astronaut"))
    assert [d.kind for d in found if d.score > 0.5] == ["face"]
    assert all(d.kind == "face" for d in found)
