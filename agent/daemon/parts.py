"""One generation of the frame path (camera, detector, pipeline) and its sink, and the slot the
pipeline thread runs it from: a ``set_config`` or ``restart_pipeline`` builds a new generation
first and swaps it in between two frames (:meth:`PartsSlot.swap`)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from agent.config import AgentConfig
from agent.frame_sink import FrameSink
from agent.pipeline import CameraFactory, DetectorFactory, FramePath, Pipeline, open_frame_path
from agent.publisher import Emitter
from agent.stats import PipelineStats
from agent.vision.reid import open_reid
from agent.vision.relink import open_tracking
from agent.vision.verify import Verifier
from hw.camera.base import Camera

logger = logging.getLogger(__name__)


@dataclass
class Parts:
    """One generation of the frame path (camera, detector, pipeline) and its sink."""

    config: AgentConfig
    path: FramePath
    sink: FrameSink

    @property
    def camera(self) -> Camera:
        return self.path.camera

    @property
    def pipeline(self) -> Pipeline:
        return self.path.pipeline

    def close(self) -> None:
        self.path.close()


def build_parts(
    config: AgentConfig,
    emitter: Emitter,
    stats: PipelineStats,
    *,
    camera_factory: CameraFactory,
    detector_factory: DetectorFactory,
    verifier: Verifier | None = None,
) -> Parts:
    """Load the detector and open the camera; nothing is shared with the running parts.
    ``verifier``: enrolled verification's matcher (None: off). It and the re-identifier share
    one embedder (MobileFaceNet and its landmark model, one worker thread), loaded here when
    either is on; the tracker's relinker then listens to it too (``[privacy.tracker]
    relink_s``)."""
    reid = open_reid(config.reid, stats)
    tracker, faces = open_tracking(config.privacy.tracker, (verifier, reid), stats)
    sink = FrameSink(config.events, emitter, visitors=reid)
    path = open_frame_path(
        config.camera,
        config.detector,
        config.privacy,
        sink,
        stats=stats,
        camera_factory=camera_factory,
        detector_factory=detector_factory,
        faces=faces,
        tracker=tracker,
    )
    return Parts(config, path, sink)


class PartsSlot:
    """The running generation. The pipeline thread (:meth:`run`) holds the lock while it
    processes a frame; :meth:`swap` takes it between two frames."""

    def __init__(self) -> None:
        self.current: Parts | None = None
        self._lock = threading.Lock()  # held while a frame is processed, and for a swap
        self._swap_waiting = threading.Event()

    def swap(self, new: Parts) -> Parts:
        """Install ``new`` between two frames; returns the previous parts (still open)."""
        self._swap_waiting.set()  # the pipeline thread yields the lock after its frame
        try:
            with self._lock:
                old, self.current = self.current, new
        finally:
            self._swap_waiting.clear()
        assert old is not None
        return old

    def run(self, stop: threading.Event, max_frames: int | None) -> None:
        """The pipeline thread: one frame at a time until ``stop``, the end of the camera or
        ``max_frames`` frames; sets ``stop`` when it ends (the agent stops with it)."""
        frames = 0
        try:
            while not stop.is_set():
                with self._lock:
                    parts = self.current
                    assert parts is not None
                    ok = parts.pipeline.run_once()
                frames += 1
                if self._swap_waiting.is_set():
                    time.sleep(0.005)  # let the waiting swap take the lock (locks are not fair)
                if not ok:
                    logger.info("camera ended: stopping")
                    break
                if max_frames is not None and frames >= max_frames:
                    break
        except Exception:
            logger.exception("pipeline thread failed: stopping the agent")
        finally:
            stop.set()
