"""Head regions from the person detector's keypoints: where the box goes, how the pipeline
redacts, tracks and merges them, and that a failing person detector drops the frame."""

from __future__ import annotations

import numpy as np
import pytest

from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame, regions_to_redact
from agent.privacy.redact import RedactionConfig
from agent.vision.detection import Box, Detection
from agent.vision.guard import GuardedDetector
from agent.vision.heads import HeadDetector, HeadGeometry, WithHeads, head_box, heads_of
from agent.vision.tiling import merge
from agent.vision.track import TrackedRegion, Tracker, TrackerConfig
from contract.errors import DetectorFailedError
from hw.frame import Frame


def _person(top: tuple[float, float], shoulders: tuple[float, float], score: float = 0.8):  # type: ignore[no-untyped-def]
    """A person detection as agent.vision.persons makes it: box centre, hip, top point,
    shoulder centre, upper-body point."""
    hip = (shoulders[0] + 2 * (shoulders[0] - top[0]), shoulders[1] + 2 * (shoulders[1] - top[1]))
    points = ((0.0, 0.0), hip, top, shoulders, (0.0, 0.0))
    return Detection(Box(0, 0, 10, 10), score, kind="person", landmarks=points)


def test_an_upright_head_sits_between_the_top_point_and_the_shoulders() -> None:
    box = head_box((100.0, 0.0), (100.0, 100.0), HeadGeometry(along=0.4, length=1.0, width=0.7))
    assert box == Box(65.0, -10.0, 135.0, 90.0)


def test_the_box_follows_the_body_axis_whichever_way_it_points() -> None:
    geometry = HeadGeometry()
    upright = head_box((100.0, 0.0), (100.0, 100.0), geometry)
    lying = head_box((0.0, 100.0), (100.0, 100.0), geometry)  # head to the left
    upside_down = head_box((100.0, 100.0), (100.0, 0.0), geometry)
    assert upright is not None and lying is not None and upside_down is not None
    assert (upright.width, upright.height) == (75.0, 100.0)
    assert (lying.width, lying.height) == (100.0, 75.0)  # long along the body's axis
    assert (lying.x0 + lying.x1) / 2 == 40.0 and (lying.y0 + lying.y1) / 2 == 100.0
    assert (upside_down.y0 + upside_down.y1) / 2 == 60.0
    leaning = head_box((0.0, 0.0), (60.0, 80.0), geometry)  # 100 long, leaning 37 degrees
    assert leaning is not None
    # the rotated 100 x 75 rectangle's corners all lie inside the box
    assert leaning.width == pytest.approx(0.6 * 100 + 0.8 * 75)
    assert leaning.height == pytest.approx(0.8 * 100 + 0.6 * 75)


def test_no_axis_no_head() -> None:
    assert head_box((5.0, 5.0), (5.0, 5.0), HeadGeometry()) is None
    assert head_box((float("nan"), 5.0), (5.0, 9.0), HeadGeometry()) is None


@pytest.mark.parametrize(
    ("along", "length", "width"), [(-0.1, 1, 1), (1.1, 1, 1), (0.4, 0, 1), (0.4, 1, 2.5)]
)
def test_geometry_out_of_range_is_refused(along: float, length: float, width: float) -> None:
    with pytest.raises(ValueError, match="must be in"):
        HeadGeometry(along=along, length=length, width=width)


def test_every_person_with_keypoints_gives_one_head_with_its_score() -> None:
    persons = [
        _person((100.0, 0.0), (100.0, 100.0), 0.9),
        Detection(Box(0, 0, 5, 5), 0.7, kind="person"),  # no keypoints: nothing to place
        Detection(Box(0, 0, 5, 5), 0.7),  # a face is not a person
    ]
    (head,) = heads_of(persons, HeadGeometry())
    assert head.kind == "head" and head.score == 0.9
    assert head.box == Box(62.5, -10.0, 137.5, 90.0)
    assert head.landmarks == persons[0].landmarks


class _Fixed:
    def __init__(self, detections: list[Detection]) -> None:
        self.detections = detections

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return list(self.detections)


class _Broken:
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        raise RuntimeError("person model crashed")


FACE = Detection(Box(20, 20, 40, 40), 0.9)


def test_faces_come_first_then_the_heads_whose_face_was_not_found() -> None:
    # head of the first person: x 7.5..52.5, y -6..54, holding FACE's centre (30, 30)
    found = _person((30.0, 0.0), (30.0, 60.0))
    missed = _person((100.0, 0.0), (100.0, 60.0))  # its face was not found
    both = WithHeads(_Fixed([FACE]), HeadDetector(_Fixed([found, missed])))
    out = both.detect(np.zeros((64, 128, 3), np.uint8))
    assert [d.kind for d in out] == ["face", "head"]
    assert out[1].box.x0 > 70  # the missed face's head, not the found one's
    alone = WithHeads(_Fixed([]), HeadDetector(_Fixed([found, missed])))
    assert [d.kind for d in alone.detect(np.zeros((64, 128, 3), np.uint8))] == ["head", "head"]


def test_a_failing_person_detector_drops_the_frame_through_the_guard() -> None:
    both = WithHeads(_Fixed([FACE]), HeadDetector(_Broken()))
    rgb = np.zeros((64, 64, 3), np.uint8)
    with GuardedDetector(both, timeout=5.0) as guard:
        with pytest.raises(DetectorFailedError, match="person model crashed"):
            guard.detect(rgb)
        out: list[ProcessedFrame] = []

        def read() -> Frame:
            return Frame(np.full((64, 64, 3), 200, np.uint8), index=0, ts=0.0, mono=0.0, source="t")

        pipeline = Pipeline(read, guard, out.append, PrivacyConfig())
        assert pipeline.step() is None
    assert out == []  # the face was found, but nothing of the frame left
    assert pipeline.stats.dropped["DetectorFailedError"] == 1


def test_a_head_region_is_redacted_as_it_is_and_only_with_redact_person_heads() -> None:
    head = TrackedRegion(1, "head", Box(10, 10, 30, 30), 0)
    person = TrackedRegion(2, "person", Box(40, 0, 60, 100), 0)
    face = TrackedRegion(3, "face", Box(0, 0, 5, 5), 0)
    on = PrivacyConfig(head_fraction=0.3)
    assert regions_to_redact([face, head, person], on) == [
        face.box,
        head.box,  # not cut to its top 30%: it is a head already
        Box(40, 0, 60, 30),  # a person box still gives its top head_fraction
    ]
    off = PrivacyConfig(redact_person_heads=False)
    assert regions_to_redact([face, head, person], off) == [face.box]


def test_a_missed_head_is_held_over_like_a_face_and_never_continues_a_face_track() -> None:
    tracker = Tracker(TrackerConfig(hold_frames=2))
    head = Detection(Box(10, 10, 30, 30), 0.8, kind="head")
    (first,) = tracker.update([head])
    held = tracker.update([])
    assert [(r.kind, r.missed, r.track_id) for r in held] == [("head", 1, first.track_id)]
    assert held[0].box.x0 <= 10 and held[0].box.x1 >= 30  # grown, not shrunk
    # a face at the very place of the held head starts its own track
    regions = tracker.update([Detection(Box(10, 10, 30, 30), 0.9)])
    assert sorted((r.kind, r.missed) for r in regions) == [("face", 0), ("head", 2)]
    assert len(tracker.update([])) == 1  # the head is gone after its 2 frames of hold-over


def test_heads_are_never_merged_into_faces() -> None:
    face = Detection(Box(20, 20, 40, 40), 0.9)
    head = Detection(Box(15, 15, 45, 45), 0.8, kind="head")
    merged = merge([face, head], iou=0.3, contain=0.8)
    assert sorted(d.kind for d in merged) == ["face", "head"]


def test_a_pipeline_holds_a_head_region_over_a_missed_frame() -> None:
    person = _person((30.0, 0.0), (30.0, 50.0))
    script = [[person], []]
    calls = iter(script)

    class Persons:
        def detect(self, rgb: np.ndarray) -> list[Detection]:
            return next(calls)

    frames = iter(range(2))

    def read() -> Frame:
        i = next(frames)
        return Frame(np.full((64, 64, 3), 200, np.uint8), index=i, ts=0.0, mono=0.0, source="t")

    out: list[ProcessedFrame] = []
    cfg = PrivacyConfig(redaction=RedactionConfig(margin=0.0))
    pipeline = Pipeline(read, WithHeads(_Fixed([]), HeadDetector(Persons())), out.append, cfg)
    pipeline.step()
    pipeline.step()
    # head box: centre (30, 20), 37.5 wide, 50 high -> x 11.25..48.75, y -5..45
    for frame in out:
        assert (frame.redacted.pixels[0:44, 12:48] == 0).all()
        assert (frame.redacted.pixels[52:] == 200).all()  # below it, even grown when held
    assert [d.kind for d in out[0].detections] == ["head"] and out[1].detections == ()
