"""Counting people who show no face (``[reid] persons``), without the models: person tracks and
their link to face visitors, the registry's counts, when the detector runs, its failures, the
config, and the person detector's decoding on crafted model outputs.

The real BlazePose detector runs in tests/integration/test_reid_persons.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame
from agent.stats import PipelineStats
from agent.vision.detection import Box, Detection
from agent.vision.embedding import DIMENSIONS, Embedding
from agent.vision.persons import (
    INPUT_SIZE,
    NUM_ANCHORS,
    PersonDetector,
    PersonDetectorConfig,
    anchor_centres,
)
from agent.vision.persontrack import PersonTracks
from agent.vision.reid import ReidConfig, Reidentifier, VisitorRegistry
from contract.errors import ConfigError
from hw.frame import Frame
from hw.runtime import TensorInfo

CFG = ReidConfig(enabled=True, purpose="unit test of person counting", window_s=60.0)


def body(x: float, y: float = 100.0, w: float = 100.0, h: float = 300.0) -> Detection:
    """A person at (x, y) (top left), head centre at the top centre of the box."""
    return Detection(
        Box(x, y, x + w, y + h), 0.9, kind="person", landmarks=((x + w / 2, y + 0.1 * h),)
    )


def face(x: float, y: float = 110.0, size: float = 40.0) -> Detection:
    return Detection(Box(x, y, x + size, y + size), 0.9)


def unit(i: int) -> Embedding:
    v = np.zeros(DIMENSIONS, np.float32)
    v[i] = 1.0
    return Embedding(v)


# --- person tracks ---------------------------------------------------------------------------


def test_a_person_with_no_face_is_one_anonymous_visitor() -> None:
    tracks = PersonTracks(min_hits=3)
    for i in range(10):
        tracks.update(100.0 + i, [body(50.0 + 5 * i)], [])
    linked, anonymous = tracks.visitors(lambda _t: None)
    assert linked == {} and anonymous == [9.0]


def test_a_person_seen_fewer_than_min_hits_times_is_not_counted() -> None:
    tracks = PersonTracks(min_hits=3)
    tracks.update(100.0, [body(50.0)], [])
    tracks.update(101.0, [body(52.0)], [])
    assert tracks.visitors(lambda _t: None) == ({}, [])


def test_a_person_whose_face_is_a_visitor_counts_as_that_visitor() -> None:
    tracks = PersonTracks(min_hits=1)
    for i in range(5):  # the face shows in the middle of the visit only
        faces = [(7, face(80.0))] if i == 2 else []
        tracks.update(100.0 + i, [body(50.0)], faces)
    linked, anonymous = tracks.visitors({7: 0}.get)
    assert anonymous == []
    assert linked == {0: (100.0, 104.0)}  # the person's sightings widen the visitor's dwell


def test_a_face_whose_track_never_became_a_visitor_leaves_the_person_anonymous() -> None:
    tracks = PersonTracks(min_hits=1)
    tracks.update(100.0, [body(50.0)], [(7, face(80.0))])
    assert tracks.visitors(lambda _t: None) == ({}, [0.0])


def test_a_face_goes_to_the_person_whose_head_is_nearest() -> None:
    tracks = PersonTracks(min_hits=1)
    # two overlapping people; the face sits in both boxes, at the second one's head
    tracks.update(100.0, [body(50.0), body(120.0)], [(7, face(150.0, 120.0))])
    linked, anonymous = tracks.visitors({7: 0}.get)
    assert linked == {0: (100.0, 100.0)} and anonymous == [0.0]


def test_a_face_outside_every_person_is_attributed_to_none() -> None:
    tracks = PersonTracks(min_hits=1)
    tracks.update(100.0, [body(50.0)], [(7, face(400.0))])
    assert tracks.visitors({7: 0}.get) == ({}, [0.0])


def test_a_person_growing_in_from_the_edge_stays_one_track() -> None:
    """A sliver at the frame's edge that becomes a whole body in a few runs (IoU 0.14 with the
    next box: the faces' IoU of 0.2 would split it)."""
    tracks = PersonTracks(min_hits=1)
    tracks.update(100.0, [Detection(Box(253, 289, 311, 405), 0.9, kind="person")], [])
    tracks.update(100.3, [Detection(Box(212, 207, 423, 432), 0.9, kind="person")], [])
    tracks.update(100.6, [Detection(Box(243, 166, 446, 432), 0.9, kind="person")], [])
    assert tracks.visitors(lambda _t: None) == ({}, [pytest.approx(0.6)])


def test_two_people_one_after_the_other_are_two_visitors() -> None:
    tracks = PersonTracks(hold_runs=2, min_hits=2)
    for i in range(4):
        tracks.update(100.0 + i, [body(50.0)], [])
    for i in range(5):  # gone longer than the hold-over
        tracks.update(104.0 + i, [], [])
    for i in range(4):
        tracks.update(109.0 + i, [body(400.0)], [])
    assert tracks.visitors(lambda _t: None) == ({}, [3.0, 3.0])


def test_face_detections_are_not_person_tracks() -> None:
    tracks = PersonTracks(min_hits=1)
    tracks.update(100.0, [face(50.0)], [])
    assert tracks.visitors(lambda _t: None) == ({}, [])


# --- the registry ----------------------------------------------------------------------------


def test_registry_counts_face_visitors_once_and_faceless_people_each() -> None:
    reg = VisitorRegistry(CFG, start=100.0)
    # person A shows a face (track 1, embedded); person B never does
    for i in range(6):
        ts = 100.0 + i
        faces = [(1, face(80.0))] if i < 2 else []
        for track_id, _f in faces:
            reg.seen(track_id, ts, i)
        reg.persons_seen(ts, [body(50.0), body(400.0)], faces)
    reg.link(1, unit(0))
    window = reg.close(106.0)
    assert window.unique == 2
    assert reg.bank.size == 0  # wiped


def test_registry_without_person_sightings_counts_faces_as_before() -> None:
    reg = VisitorRegistry(CFG, start=100.0)
    reg.seen(1, 100.0, 0)
    reg.seen(2, 101.0, 1)
    reg.link(1, unit(0))
    reg.link(2, unit(1))
    assert reg.close(102.0).unique == 2


# --- the re-identifier: when the detector runs, and its failures ------------------------------


class CountingDetector:
    """A person detector that finds one person and counts its calls (or raises)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("person model exploded")
        return [body(50.0)]


def frame(i: int) -> Frame:
    return Frame(np.zeros((480, 640, 3), np.uint8), i, 1000.0 + i * 0.1, 0.0)


def test_the_person_detector_runs_every_person_every_frames() -> None:
    det = CountingDetector()
    reid = Reidentifier(
        ReidConfig(enabled=True, purpose="unit test of person counting", person_every=3),
        PipelineStats(),
        det,
    )
    for i in range(9):
        reid.select(frame(i), [])
    assert det.calls == 3
    window = reid.flush()
    assert window is not None and window.unique == 1
    reid.close()
    assert det.calls == 5  # the window's end and the close each run it once on a black image


def test_a_failing_person_detector_loses_only_the_person_counts() -> None:
    """Redaction, the sink and face re-identification go on; the failures are counted."""
    stats = PipelineStats()
    reid = Reidentifier(CFG, stats, CountingDetector(fail=True))
    face_box = Box(100, 100, 160, 170)

    class OneFace:
        def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
            return [Detection(face_box, 0.9)]

    class Observer:
        def observe(self, fr: Frame, faces: Sequence[tuple[int, Detection]]) -> None:
            reid.select(fr, faces)

    out: list[ProcessedFrame] = []
    frames = iter(
        Frame(np.full((240, 320, 3), 200, np.uint8), i, 1000.0 + i, 0.0) for i in range(4)
    )
    pipe = Pipeline(
        lambda: next(frames), OneFace(), out.append, PrivacyConfig(), stats, faces=Observer()
    )
    for _ in range(4):
        pipe.step()
    assert len(out) == 4 and stats.frames_out == 4
    assert all(len(p.redacted.regions) == 1 for p in out)
    assert stats.dropped["reid_persons_failed"] == 2  # frames 1 and 4 (person_every 3)
    assert reid.registry is not None and 1 in reid.registry._tracks  # faces still followed


def test_reid_config_checks_the_person_keys() -> None:
    with pytest.raises(ConfigError, match="person_every"):
        ReidConfig(person_every=0)
    with pytest.raises(ConfigError, match="person_threshold"):
        ReidConfig(person_threshold=1.0)
    assert ReidConfig().persons  # on by default with [reid]


# --- decoding --------------------------------------------------------------------------------


class Scripted:
    """A runtime that returns crafted model outputs (the decoder's known answer)."""

    def __init__(self, regs: npt.NDArray[np.float32], logits: npt.NDArray[np.float32]) -> None:
        f32 = np.dtype(np.float32)
        self.inputs = [TensorInfo(0, "input_1", (1, INPUT_SIZE, INPUT_SIZE, 3), f32, 0.0, 0)]
        self.outputs = [
            TensorInfo(1, "Identity", (1, NUM_ANCHORS, 12), f32, 0.0, 0),
            TensorInfo(2, "Identity_1", (1, NUM_ANCHORS, 1), f32, 0.0, 0),
        ]
        self._out = [regs[None], logits[None, :, None]]

    def run(self, *_inputs: Any) -> list[npt.NDArray[np.float32]]:
        return self._out

    def resize_input(self, shape: tuple[int, ...]) -> None:
        raise AssertionError("the person detector has a fixed input")


def test_anchors_follow_the_model_layout() -> None:
    a = anchor_centres()
    assert a.shape == (NUM_ANCHORS, 2)
    assert tuple(a[0]) == (4.0, 4.0) and tuple(a[1]) == (4.0, 4.0)  # 2 per 28x28 cell
    assert tuple(a[28 * 28 * 2]) == (8.0, 8.0)  # first 14x14 cell
    assert tuple(a[-1]) == (208.0, 208.0)  # last 7x7 cell (6 anchors)


def test_decoding_puts_the_person_box_around_the_body_circle() -> None:
    regs = np.zeros((NUM_ANCHORS, 12), np.float32)
    logits = np.full(NUM_ANCHORS, -10.0, np.float32)
    k = 28 * 28 * 2 + 14 * 14 * 2 + (3 * 7 + 3) * 6  # a 7x7 anchor at (112, 112)
    a = anchor_centres()[k]
    assert tuple(a) == (112.0, 112.0)
    logits[k] = 4.0
    regs[k, :4] = (0.0, -60.0, 30.0, 30.0)  # head box centred at (112, 52)
    regs[k, 4:8] = (0.0, 20.0, 0.0, -60.0)  # hip (112, 132); radius 80
    det = PersonDetector(Path("scripted.tflite"), PersonDetectorConfig())
    det.load(Scripted(regs, logits))  # type: ignore[arg-type]
    # a 448x448 image: the letterbox halves it, so image = input * 2
    found = det.detect(np.zeros((448, 448, 3), np.uint8))
    assert len(found) == 1
    p = found[0]
    assert p.kind == "person" and p.score == pytest.approx(1 / (1 + np.exp(-4.0)))
    assert (p.box.x0, p.box.y0, p.box.x1, p.box.y1) == pytest.approx((144, 104, 304, 424))
    assert p.landmarks is not None and p.landmarks[0] == pytest.approx((224, 104))


def test_a_box_inside_a_stronger_person_is_the_same_person() -> None:
    regs = np.zeros((NUM_ANCHORS, 12), np.float32)
    logits = np.full(NUM_ANCHORS, -10.0, np.float32)
    big = 28 * 28 * 2 + 14 * 14 * 2 + (3 * 7 + 3) * 6
    small = 28 * 28 * 2 + (7 * 14 + 7) * 2  # a 14x14 anchor at (120, 120)
    logits[big], logits[small] = 4.0, 1.0
    regs[big, :4] = (0.0, -60.0, 30.0, 30.0)
    regs[big, 4:8] = (0.0, 20.0, 0.0, -60.0)
    regs[small, :4] = (0.0, 0.0, 10.0, 10.0)  # a head box far from the big one's
    regs[small, 4:8] = (0.0, 10.0, 0.0, -10.0)  # a small body inside the big one
    det = PersonDetector(Path("scripted.tflite")).load(Scripted(regs, logits))  # type: ignore[arg-type]
    assert len(det.detect(np.zeros((224, 224, 3), np.uint8))) == 1


def test_hold_over_and_hits_are_given_in_frames() -> None:
    assert (PersonTracks.every(3, 9).min_hits, PersonTracks.every(1, 9).min_hits) == (3, 9)
    assert PersonTracks.every(4, 9).min_hits == 3  # ceil(9 / 4)
    assert PersonTracks.every(100, 9).min_hits == 1
    tracks = PersonTracks.every(4, 1, hold_frames=8)  # two runs of hold-over
    tracks.update(100.0, [body(50.0)], [])
    tracks.update(100.4, [], [])
    tracks.update(100.8, [], [])
    tracks.update(101.2, [body(52.0)], [])  # within the hold-over: the same person
    assert tracks.visitors(lambda _t: None) == ({}, [pytest.approx(1.2)])
    tracks = PersonTracks.every(4, 1, hold_frames=4)  # one run
    tracks.update(100.0, [body(50.0)], [])
    tracks.update(100.4, [], [])
    tracks.update(100.8, [], [])
    tracks.update(101.2, [body(52.0)], [])  # too late: a second person
    assert tracks.visitors(lambda _t: None) == ({}, [0.0, 0.0])
