"""The privacy pipeline: camera -> detect -> track -> redact -> (match, re-identify) -> sink, and
the one place that wires it from configuration (:func:`open_frame_path`).

Fail closed: when detection fails for any reason (exception, timeout, overload, bad model) the
frame is dropped and counted, and nothing derived from its pixels reaches the sink. What reaches
the sink is a :class:`ProcessedFrame`: the redacted pixels and the detections they were redacted
for, flowing down together.

Enrolled matching (optional, :mod:`agent.vision.verify`) and re-identification (optional,
:mod:`agent.vision.reid`) see the original frame's fresh face detections *after* redaction,
through one shared embedder (:class:`agent.vision.embedworker.EmbedWorker`: one MobileFaceNet
embedder, one worker thread, one bounded queue): redaction never waits for them and does not
depend on them; the pipeline thread only crops faces (from the original pixels) into the queue.
If one of them raises, the frame still goes to the sink and the loss is counted
(``verify_failed``, ``reid_failed``; ``faces_failed`` if the shared worker itself raised): only
matches or visitor statistics suffer.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from agent.privacy.redact import RedactedFrame, RedactionConfig, redact
from agent.stats import PipelineStats
from agent.vision.detection import Box, Detection, Detector
from agent.vision.embedworker import EmbedWorker
from agent.vision.factory import DetectorConfig, build_detector
from agent.vision.guard import GuardedDetector
from agent.vision.track import TrackedRegion, Tracker, TrackerConfig
from contract.errors import CameraUnavailableError, EndOfStream, FrameError, PrivacyError
from hw.camera import open_camera
from hw.camera.base import Camera
from hw.camera.config import CameraConfig
from hw.frame import Frame

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessedFrame:
    """One frame out of the pipeline: its redacted pixels and what the detector found in it
    (before tracking: the hold-over regions are in ``redacted.regions``)."""

    redacted: RedactedFrame
    detections: tuple[Detection, ...]


Sink = Callable[[ProcessedFrame], None]


@dataclass(frozen=True)
class PrivacyConfig:
    """What gets redacted and how."""

    redaction: RedactionConfig = field(default_factory=RedactionConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    redact_person_heads: bool = True
    """Where a person's head is detected, redact it: a ``head`` detection's box as it is (the
    person detector of ``[detector] persons``, :mod:`agent.vision.heads`), the top
    ``head_fraction`` of a ``person`` detection's box."""
    head_fraction: float = 0.3
    """Share of a ``person`` box's height (from the top) treated as the head region. The shipped
    person detector gives ``head`` regions from its keypoints instead, which this does not
    change."""


def head_region(person: Box, fraction: float) -> Box:
    """The top ``fraction`` of a person box, where the head is."""
    return Box(person.x0, person.y0, person.x1, person.y0 + person.height * fraction)


def regions_to_redact(tracked: list[TrackedRegion], config: PrivacyConfig) -> list[Box]:
    """Face boxes plus (if configured) head regions, from the tracker's output."""
    out: list[Box] = []
    for region in tracked:
        if region.kind == "face":
            out.append(region.box)
        elif not config.redact_person_heads:
            continue
        elif region.kind == "head":
            out.append(region.box)
        else:
            out.append(head_region(region.box, config.head_fraction))
    return out


class FaceObserver(Protocol):
    """Sees each frame's tracked faces after redaction: the shared embedder of enrolled matching
    and re-identification (:class:`agent.vision.embedworker.EmbedWorker`)."""

    def observe(self, frame: Frame, faces: Sequence[tuple[int, Detection]]) -> None: ...


class Pipeline:
    """Pulls frames from ``read_frame`` until stopped; hands each RedactedFrame to ``sink``."""

    def __init__(
        self,
        read_frame: Callable[[], Frame],
        detector: Detector,
        sink: Sink,
        config: PrivacyConfig,
        stats: PipelineStats | None = None,
        clock: Callable[[], float] = time.perf_counter,
        faces: FaceObserver | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self._read = read_frame
        self._faces = faces  # after redaction, on the original frame
        self._detector = detector
        self._sink = sink
        self._config = config
        # given when the track relinker (agent.vision.relink) shares it; else made here
        self._tracker = tracker if tracker is not None else Tracker(config.tracker)
        self.stats = stats if stats is not None else PipelineStats()
        self._clock = clock
        self._stop = threading.Event()
        self.last_output_mono: float | None = None

    def stop(self) -> None:
        self._stop.set()

    def step(self) -> ProcessedFrame | None:
        """Process one frame. Returns what went to the sink, or None if it was dropped."""
        clock, stats = self._clock, self.stats
        t0 = clock()
        try:
            frame = self._read()
        except FrameError as exc:
            stats.drop("corrupt_frame")
            logger.warning("corrupt frame dropped: %s", exc)
            return None
        t1 = clock()
        stats.time("capture", t1 - t0)
        stats.frames_in += 1
        try:
            detections = self._detector.detect(frame.pixels)
        except PrivacyError as exc:
            stats.drop(type(exc).__name__)
            logger.warning("frame %d dropped (fail closed): %s", frame.index, exc)
            return None
        except Exception as exc:  # any detector failure drops the frame: fail closed
            stats.drop("DetectorFailedError")
            logger.warning("frame %d dropped, detector raised %s", frame.index, exc)
            return None
        t2 = clock()
        stats.time("detect", t2 - t1)
        tracked = self._tracker.update(detections)
        regions = regions_to_redact(tracked, self._config)
        t3 = clock()
        stats.time("track", t3 - t2)
        redacted = redact(frame, regions, self._config.redaction)
        t4 = clock()
        stats.time("redact", t4 - t3)
        faces = [
            (r.track_id, r.detection)
            for r in tracked
            if r.kind == "face" and r.detection is not None
        ]
        if self._faces is not None:
            try:
                self._faces.observe(frame, faces)
            except Exception as exc:  # only what the observers derive is lost, never redaction
                stats.drop("faces_failed")
                logger.warning("face observers skipped frame %d: %s", frame.index, exc)
            t5 = clock()
            stats.time("faces", t5 - t4)
            t4 = t5
        out = ProcessedFrame(redacted, tuple(detections))
        self._sink(out)
        stats.time("sink", clock() - t4)
        stats.frames_out += 1
        self.last_output_mono = time.monotonic()
        return out

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def run_once(self) -> bool:
        """Process one frame; False when the camera has ended or is gone for good."""
        try:
            self.step()
        except (CameraUnavailableError, EndOfStream) as exc:
            logger.info("camera finished or unavailable: %s", exc)
            self._tracker.reset()
            return False
        return True

    def run(self, max_frames: int | None = None) -> None:
        """Loop until :meth:`stop`, the camera ends, or ``max_frames`` frames were read."""
        n = 0
        while not self._stop.is_set() and (max_frames is None or n < max_frames):
            if not self.run_once():
                break
            n += 1


CameraFactory = Callable[[CameraConfig], Camera]
DetectorFactory = Callable[[DetectorConfig], Detector]


@dataclass
class FramePath:
    """An open frame path: camera -> guarded detector -> :class:`Pipeline` -> sink. Closing it
    closes the camera and the detector's worker (a context manager, or :meth:`close`)."""

    camera: Camera
    pipeline: Pipeline
    stack: contextlib.ExitStack = field(repr=False)

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> FramePath:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_frame_path(
    camera: CameraConfig,
    detector: DetectorConfig,
    privacy: PrivacyConfig,
    sink: Sink,
    *,
    stats: PipelineStats | None = None,
    camera_factory: CameraFactory = open_camera,
    detector_factory: DetectorFactory = build_detector,
    faces: EmbedWorker | None = None,
    tracker: Tracker | None = None,
) -> FramePath:
    """Load the detector (hash-checked), wrap it in the fail-closed guard, open the camera and
    build the pipeline: the one place where a camera-fed frame path is wired (the daemon and
    `camveil run`). Everything opened so far is closed again when a later step fails.
    ``faces``: the shared embedder of enrolled matching and re-identification
    (:func:`agent.vision.embedworker.open_embed_worker`); the frame path takes it over (starts
    it here, stops it and wipes its clients when closed); ``tracker``: the pipeline's tracker when
    made beforehand (the track relinker, :mod:`agent.vision.relink`, works on it)."""
    stack = contextlib.ExitStack()
    try:
        if faces is not None:
            stack.enter_context(faces)
        model = detector_factory(detector)
        guard = stack.enter_context(GuardedDetector(model, detector.timeout))
        cam = stack.enter_context(camera_factory(camera))
        pipeline = Pipeline(
            cam.read, guard, sink, privacy, stats=stats, faces=faces, tracker=tracker
        )
    except BaseException:
        stack.close()
        raise
    return FramePath(cam, pipeline, stack)
