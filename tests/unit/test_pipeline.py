"""Pipeline: fail closed on every detector failure; only RedactedFrames reach the sink."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame
from agent.privacy.redact import RedactedFrame, RedactionConfig
from agent.vision.detection import Box, Detection
from agent.vision.guard import GuardedDetector
from agent.vision.track import TrackerConfig
from contract.errors import CameraUnavailableError, FrameError
from hw.frame import Frame

FACE = Box(20, 20, 40, 40)


def _frames(n: int | None = None):  # type: ignore[no-untyped-def]
    counter = itertools.count() if n is None else iter(range(n))

    def read() -> Frame:
        try:
            i = next(counter)
        except StopIteration:
            raise CameraUnavailableError("end of test stream") from None
        px = np.full((64, 64, 3), 200, np.uint8)
        return Frame(px, index=i, ts=float(i), mono=float(i), source="t")

    return read


class Scripted:
    """Detects the face on frames listed in ``hits``; raises on frames in ``raises``."""

    def __init__(self, hits: set[int], raises: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.hits, self.raises, self.calls = hits, raises, 0

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        i = self.calls
        self.calls += 1
        if i in self.raises:
            raise RuntimeError("model crashed")
        return [Detection(FACE, 0.9)] if i in self.hits else []


def _run(detector, n: int, cfg: PrivacyConfig | None = None):  # type: ignore[no-untyped-def]
    """Run the pipeline over ``n`` frames; returns it and the redacted frames its sink got."""
    out: list[ProcessedFrame] = []
    p = Pipeline(_frames(n), detector, out.append, cfg or PrivacyConfig())
    p.run()
    return p, [o.redacted for o in out]


def test_detector_exception_drops_the_frame_and_nothing_reaches_the_sink() -> None:
    p, out = _run(Scripted(hits={0, 1, 2, 3}, raises={1, 2}), 4)
    assert [f.index for f in out] == [0, 3]  # type: ignore[attr-defined]
    assert p.stats.dropped["DetectorFailedError"] == 2
    assert p.stats.frames_in == 4 and p.stats.frames_out == 2


def test_only_redacted_frames_reach_the_sink_with_the_face_filled() -> None:
    _, out = _run(Scripted(hits={0}), 1, PrivacyConfig(redaction=RedactionConfig(margin=0.0)))
    (rf,) = out
    assert isinstance(rf, RedactedFrame)
    assert (rf.pixels[20:40, 20:40] == 0).all()
    assert (rf.pixels[:20] == 200).all()


def test_hold_over_keeps_a_missed_face_redacted() -> None:
    cfg = PrivacyConfig(tracker=TrackerConfig(hold_frames=2), redaction=RedactionConfig(margin=0))
    _, out = _run(Scripted(hits={0, 1}), 6, cfg)
    covered = [bool((f.pixels[25:35, 25:35] == 0).all()) for f in out]  # type: ignore[attr-defined]
    assert covered == [True, True, True, True, False, False]


def test_timeout_drops_frames_fail_closed() -> None:
    gate = threading.Event()

    class Slow:
        def detect(self, rgb: np.ndarray) -> list[Detection]:
            gate.wait(2)
            return [Detection(FACE, 0.9)]

    with GuardedDetector(Slow(), timeout=0.02) as guard:
        p, out = _run(guard, 3)
    gate.set()
    assert out == []
    assert p.stats.dropped["DetectorTimeoutError"] == 1
    assert p.stats.dropped["DetectorOverloadError"] == 2


def test_corrupt_frames_are_counted_and_skipped() -> None:
    calls = itertools.count()

    def read() -> Frame:
        i = next(calls)
        if i == 3:
            raise CameraUnavailableError("gone")
        if i == 1:
            raise FrameError("bad jpeg")
        return Frame(np.zeros((8, 8, 3), np.uint8), index=i, ts=0.0, mono=0.0)

    out: list[object] = []
    p = Pipeline(read, Scripted(hits=set()), out.append, PrivacyConfig())
    p.run()
    assert len(out) == 2
    assert p.stats.dropped["corrupt_frame"] == 1


def test_sink_gets_only_the_redacted_type() -> None:
    seen: list[ProcessedFrame] = []
    p = Pipeline(_frames(2), Scripted(hits={0}), seen.append, PrivacyConfig())
    p.run()
    assert [type(o) for o in seen] == [ProcessedFrame, ProcessedFrame]
    assert [type(o.redacted) for o in seen] == [RedactedFrame, RedactedFrame]


def test_detections_flow_down_with_their_frame() -> None:
    """The sink gets each frame's own detections (not the tracker's hold-over regions)."""
    cfg = PrivacyConfig(tracker=TrackerConfig(hold_frames=2))
    seen: list[ProcessedFrame] = []
    Pipeline(_frames(3), Scripted(hits={0}), seen.append, cfg).run()
    assert [len(o.detections) for o in seen] == [1, 0, 0]
    assert seen[0].detections[0].box == FACE
    assert [len(o.redacted.regions) for o in seen] == [1, 1, 1]  # held over


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_person_without_face_gets_its_head_redacted(fraction: float) -> None:
    class Person:
        def detect(self, rgb: np.ndarray) -> list[Detection]:
            return [Detection(Box(10, 0, 50, 64), 0.8, "person")]

    cfg = PrivacyConfig(head_fraction=fraction, redaction=RedactionConfig(margin=0))
    _, out = _run(Person(), 1, cfg)
    head_rows = int(64 * fraction)
    assert (out[0].pixels[:head_rows, 10:50] == 0).all()  # type: ignore[attr-defined]
    assert (out[0].pixels[head_rows + 1 :, 10:50] == 200).all()  # type: ignore[attr-defined]
