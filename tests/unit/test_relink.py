"""Keeping a face track through an occlusion with its embedding, on a synthetic sequence: the real
pipeline (tracker, redaction), the shared embedder with the re-identifier asking for faces, the
colour embedder of test_reid ("the same person" is "the same colour") and a scripted detector.

A face walks, is hidden for 1.5 s (far longer than the tracker's hold-over), and comes back
elsewhere. With the relinker its new track takes the old id; another face, or the same face
after longer than ``relink_s``, keeps a new id; what is redacted is the same with and without it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame
from agent.stats import PipelineStats
from agent.vision.detection import Box, Detection
from agent.vision.embedding import Embedding
from agent.vision.embedworker import EmbedWorker, Selection
from agent.vision.reid import ReidConfig, Reidentifier
from agent.vision.relink import TrackLinker
from agent.vision.track import Tracker, TrackerConfig
from hw.frame import Frame
from tests.unit.test_reid import ColourEmbedder

FPS = 10.0
REID = ReidConfig(enabled=True, purpose="unit test of visitor counting", window_s=600.0)


@dataclass(frozen=True)
class Shot:
    """One frame of the script: a face of grey level ``colour`` at ``x``, or nobody."""

    colour: int | None = None
    x: int = 0


def script(gap_frames: int, back_colour: int = 128) -> list[Shot]:
    walk = [Shot(128, 60 + 4 * i) for i in range(10)]
    hidden = [Shot()] * gap_frames
    back = [Shot(back_colour, 420 + 4 * i) for i in range(10)]
    return walk + hidden + back


def pixels(shot: Shot) -> np.ndarray:
    px = np.full((480, 640, 3), 30, np.uint8)
    if shot.colour is not None:
        px[100:180, shot.x : shot.x + 80] = shot.colour
    return px


class Scripted:
    """The detector: the face's box wherever the script puts one."""

    def __init__(self, shots: Sequence[Shot]) -> None:
        self._shots = iter(shots)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        shot = next(self._shots)
        if shot.colour is None:
            return []
        return [Detection(Box(shot.x + 8, 108, shot.x + 72, 172), 0.9)]


@dataclass
class Ids:
    """A listener that records each frame's face track ids."""

    name: str = "ids"
    lost: str = "nothing"
    threads: int = 1
    queue_size: int = 1
    frames: list[list[int]] = field(default_factory=list)

    def select(self, frame: Frame, faces: Sequence[tuple[int, Detection]]) -> Selection:
        self.frames.append([t for t, _d in faces])
        return Selection()

    def queued(self, track_id: int) -> None: ...

    def embedded(self, track_id: int, ts: float, tag: int, embedding: object) -> None:
        if embedding is not None:
            embedding.wipe()  # type: ignore[attr-defined]

    def close(self) -> None: ...


@dataclass
class Run:
    ids: list[list[int]]
    out: list[ProcessedFrame]
    unique: int | None
    relinked: int
    stats: PipelineStats


def run(shots: list[Shot], relink: bool, config: TrackerConfig | None = None) -> Run:
    config = config or TrackerConfig()
    stats = PipelineStats()
    tracker = Tracker(config)
    reid = Reidentifier(REID, stats)
    linker = TrackLinker(config, tracker, stats)
    ids = Ids()
    listeners = [linker, ids] if relink else [ids]
    out: list[ProcessedFrame] = []
    frames = iter(Frame(pixels(s), i, i / FPS, time.monotonic()) for i, s in enumerate(shots))
    with EmbedWorker(ColourEmbedder(), [reid], stats, listeners=listeners) as worker:
        pipe = Pipeline(
            lambda: next(frames),
            Scripted(shots),
            out.append,
            PrivacyConfig(tracker=config),
            stats,
            faces=worker,
            tracker=tracker,
        )
        for _ in shots:
            pipe.step()
            assert worker.wait_idle(5.0)  # results reach the clients before the next frame
        window = reid.flush()
    return Run(ids.frames, out, None if window is None else window.unique, linker.relinked, stats)


def face_ids(r: Run, start: int) -> set[int]:
    return {t for frame in r.ids[start:] for t in frame}


def test_a_face_back_from_behind_an_occluder_keeps_its_track() -> None:
    shots = script(gap_frames=15)  # hidden 1.5 s; the hold-over ends its track after 8 frames
    plain = run(shots, relink=False)
    linked = run(shots, relink=True)
    assert face_ids(plain, 0) == {1, 2}, "without the relinker the face comes back as track 2"
    assert linked.relinked == 1
    # frame 25 starts track 2; its embedding is back on frame 26; from frame 27 it is track 1
    assert linked.ids[25] == [2] and linked.ids[26] == [2]
    assert face_ids(linked, 27) == {1}
    assert plain.unique == linked.unique == 1
    # redaction is the same frame by frame: only the id changed
    assert len(plain.out) == len(linked.out) == len(shots)
    for a, b in zip(plain.out, linked.out, strict=True):
        assert np.array_equal(a.redacted.pixels, b.redacted.pixels)
        assert a.redacted.regions == b.redacted.regions
    assert not any(k.startswith("relink") for k in linked.stats.dropped)


def test_another_face_or_a_long_absence_starts_a_new_track() -> None:
    other = run(script(gap_frames=15, back_colour=64), relink=True)
    assert other.relinked == 0 and face_ids(other, 27) == {2}
    late = run(script(gap_frames=40), relink=True)  # 4 s: longer than relink_s (2 s)
    assert late.relinked == 0 and face_ids(late, 52) == {2}
    longer = run(script(gap_frames=40), relink=True, config=TrackerConfig(relink_s=5.0))
    assert longer.relinked == 1 and face_ids(longer, 52) == {1}


def test_the_relinker_forgets_and_wipes_what_it_kept() -> None:
    config = TrackerConfig()
    tracker = Tracker(config)
    linker = TrackLinker(config, tracker)
    face = Detection(Box(0, 0, 64, 64), 0.9)
    blank = np.zeros((480, 640, 3), np.uint8)

    def at(ts: float) -> Frame:
        return Frame(blank, int(ts * FPS), ts, time.monotonic())

    tracker.update([face])  # track 1
    linker.select(at(0.0), [(1, face)])
    linker.embedded(1, 0.0, 0, Embedding(np.ones(512)))
    linker.select(at(0.1), [(1, face)])
    kept = linker._seen[1].vector
    assert kept is not None and kept.any()
    tracker.reset()  # the track is gone; after relink_s it is forgotten, its vector zeroed
    linker.select(at(3.0), [])
    assert not kept.any() and 1 not in linker._seen
    tracker.update([face])  # track 2
    linker.select(at(3.1), [(2, face)])
    linker.embedded(2, 3.1, 0, Embedding(np.ones(512)))
    linker.select(at(3.2), [(2, face)])
    second = linker._seen[2].vector
    assert second is not None and second.any()
    in_flight = Embedding(np.ones(512))
    linker.embedded(2, 3.2, 0, in_flight)  # not picked up before close: wiped too
    linker.close()
    assert not second.any() and not in_flight.vector.any() and not linker._seen


@pytest.mark.parametrize(("key", "value"), [("relink_s", -1.0), ("relink_threshold", 1.0)])
def test_bad_relink_settings_are_refused(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=key):
        TrackerConfig(**{key: value})
