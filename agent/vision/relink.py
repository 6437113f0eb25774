"""Keeping a face track through an occlusion with its embedding (``[privacy.tracker] relink_s``).

The IoU tracker (:mod:`agent.vision.track`) holds a missed face for ``hold_frames`` and then ends
its track; when the face comes back (from behind a pillar, after turning away) it starts a new
track with a new id. With face embeddings on (``[reid]`` or ``[enrolment]``), the
:class:`TrackLinker` listens to the shared embedder (:class:`~agent.vision.embedworker.EmbedWorker`:
it never asks for a crop of its own, it gets a copy of every embedding the observers asked for)
and keeps, per face track, its latest embedding. When the first embedding of a new track arrives
and a track that ended less than ``relink_s`` before the new one began has an embedding at
cosine >= ``relink_threshold`` with it, the new track takes the old track's id
(:meth:`~agent.vision.track.Tracker.relink`), from the next frame on.

What it changes: ids. Re-identification sees one track, not two (a person behind a pillar is one
visitor even when the new track's embedding alone would not link), and enrolled matching keeps
a matched track matched (no second comparison and match). Redaction does not change: every
detection is redacted and every track is held over whatever its id, and a relink only renames a
track (its box, velocity and hold-over stay as they were); the test checks that the redacted
regions are the same with and without it.

Memory: one embedding per face track seen in the last ``relink_s`` seconds (a few KiB), on the
pipeline thread; each is overwritten with zeros when replaced, when its track is forgotten and
when the frame path closes. Failures only cost the relink (counted ``relink_failed``).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

from agent.stats import PipelineStats
from agent.vision.detection import Detection
from agent.vision.embedding import Embedding
from agent.vision.embedworker import EmbedClient, EmbedWorker, Selection, open_embed_worker
from agent.vision.track import Tracker, TrackerConfig
from hw.frame import Frame

logger = logging.getLogger(__name__)


@dataclass
class _Seen:
    first: float
    last: float
    vector: npt.NDArray[np.float32] | None = None
    tried: bool = False
    """The track's first embedding has been compared with the ended tracks."""

    def wipe(self) -> None:
        if self.vector is not None:
            self.vector.fill(0.0)
            self.vector = None


class TrackLinker:
    """A listener of the shared embedder (see the module docstring). :meth:`select` runs on the
    pipeline thread after the tracker's update, :meth:`embedded` on the worker thread."""

    name = "relink"
    lost = "track relinking"
    threads = 1
    queue_size = 1

    def __init__(
        self, config: TrackerConfig, tracker: Tracker, stats: PipelineStats | None = None
    ) -> None:
        self.config = config
        self._tracker = tracker
        self.stats = stats if stats is not None else PipelineStats()
        self._results: queue.SimpleQueue[tuple[int, Embedding | None]] = queue.SimpleQueue()
        self._seen: dict[int, _Seen] = {}
        self.relinked = 0

    def __enter__(self) -> TrackLinker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._drain(None)
        for seen in self._seen.values():
            seen.wipe()
        self._seen.clear()

    # --- the pipeline thread ---------------------------------------------------------------

    def select(self, frame: Frame, faces: Sequence[tuple[int, Detection]]) -> Selection:
        ts = frame.ts
        for track_id, _det in faces:
            seen = self._seen.get(track_id)
            if seen is None:
                self._seen[track_id] = _Seen(ts, ts)
            else:
                seen.last = max(seen.last, ts)
        live = self._tracker.track_ids()
        self._drain(live)
        for track_id in [t for t, s in self._seen.items() if t not in live]:
            if ts - self._seen[track_id].last > self.config.relink_s:
                self._seen.pop(track_id).wipe()
        return Selection()

    def queued(self, track_id: int) -> None:
        """Never called: a listener asks for nothing."""

    def _drain(self, live: set[int] | None) -> None:
        while True:
            try:
                track_id, embedding = self._results.get_nowait()
            except queue.Empty:
                return
            if embedding is None:
                continue
            try:
                seen = self._seen.get(track_id)
                if seen is None or live is None:
                    continue
                if not seen.tried and track_id in live:
                    seen.tried = True
                    if self._relink(track_id, seen, embedding.vector, live):
                        continue
                if seen.vector is None:
                    seen.vector = np.empty_like(embedding.vector)
                seen.vector[:] = embedding.vector
            finally:
                embedding.wipe()

    def _relink(
        self, track_id: int, seen: _Seen, vector: npt.NDArray[np.float32], live: set[int]
    ) -> bool:
        """Continue the ended track that ``track_id``'s face matches best, if any."""
        best, best_sim = None, self.config.relink_threshold
        for old_id, old in self._seen.items():
            if old_id in live or old.vector is None or old.last >= seen.first:
                continue
            if seen.first - old.last > self.config.relink_s:
                continue
            sim = float(np.dot(old.vector, vector))
            if sim >= best_sim:
                best, best_sim = old_id, sim
        if best is None or not self._tracker.relink(track_id, best):
            return False
        old = self._seen.pop(best)
        old.last = seen.last
        old.tried = True
        if old.vector is None:  # unreachable: candidates have a vector
            old.vector = np.empty_like(vector)
        old.vector[:] = vector
        del self._seen[track_id]
        self._seen[best] = old
        self.relinked += 1
        logger.debug("face track %d continues track %d (cosine %.2f)", track_id, best, best_sim)
        return True

    # --- the worker thread -------------------------------------------------------------------

    def embedded(self, track_id: int, ts: float, tag: int, embedding: Embedding | None) -> None:
        self._results.put((track_id, embedding))


def open_tracking(
    config: TrackerConfig,
    clients: Sequence[EmbedClient | None],
    stats: PipelineStats | None = None,
) -> tuple[Tracker, EmbedWorker | None]:
    """The tracker and the shared face embedder for ``clients`` (None when none is on), with
    the tracker's relinker listening to the embedder when ``relink_s`` is set: the daemon's
    wiring, written once for it and the benches."""
    tracker = Tracker(config)
    relinker = TrackLinker(config, tracker, stats)
    listeners = (relinker,) if config.relink_s else ()
    return tracker, open_embed_worker(clients, stats, listeners=listeners)


__all__ = ["TrackLinker", "open_tracking"]
