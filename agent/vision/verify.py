"""Matching faces in view against the enrolled gallery (opt-in: ``[enrolment]``).

The :class:`Verifier` is a client of the shared face embedder
(:class:`~agent.vision.embedworker.EmbedWorker`), as re-identification is: after a frame was
redacted it sees the frame's fresh face detections with tracker ids (:meth:`Verifier.select`)
and asks for a crop of each track to be embedded (cut from the original pixels, which redaction
does not modify). On the worker thread the embedding is compared with every template of the
:class:`~agent.vision.gallery.Gallery` and wiped at once; the pipeline never waits. Results are
picked up on a later frame: a score at or above ``threshold`` calls ``on_match(subject, score,
ts)`` once per track (and at most once per subject per ``cooldown_s``); an unmatched track is
tried again every ``refresh_frames`` frames. Only the subject id and the score leave this module.

Failure: an exception here or in the embedder only loses matches (counted in the pipeline's
``dropped`` under ``verify_*``); redaction has already happened and does not depend on it.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from agent.stats import PipelineStats
from agent.vision.detection import Detection
from agent.vision.embedding import Embedding
from agent.vision.embedworker import Selection, Wanted
from agent.vision.gallery import EnrolmentConfig, Gallery
from hw.frame import Frame

logger = logging.getLogger(__name__)

OnMatch = Callable[[str, float, float], None]
"""``(subject, score, capture ts)``."""
FORGET_FRAMES: Final = 300
"""A track unseen for this many frames is forgotten."""


@dataclass
class _Track:
    last_seen: int
    last_embed: int = -(10**9)
    pending: bool = False
    matched: bool = False


class Verifier:
    """The matcher: :meth:`select` and :meth:`drain` run on the pipeline thread,
    :meth:`embedded` on the shared worker's thread. The constructor only stores; :meth:`close`
    (the worker calls it when it stops; also on ``with`` exit) forgets the tracks."""

    name = "verify"
    lost = "enrolled matching"

    def __init__(
        self,
        config: EnrolmentConfig,
        gallery: Gallery,
        on_match: OnMatch,
        stats: PipelineStats | None = None,
    ) -> None:
        self.config = config
        self.gallery = gallery
        self._on_match = on_match
        self.stats = stats if stats is not None else PipelineStats()
        self._results: queue.SimpleQueue[tuple[int, float, tuple[str, float] | None]] = (
            queue.SimpleQueue()
        )
        self._tracks: dict[int, _Track] = {}
        self._last_event: dict[str, float] = {}
        self._frame_no = 0

    @property
    def threads(self) -> int:
        return self.config.threads

    @property
    def queue_size(self) -> int:
        return self.config.queue_size

    def __enter__(self) -> Verifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.drain()
        self._tracks.clear()

    # --- the pipeline thread -------------------------------------------------------------

    def select(self, frame: Frame, faces: Sequence[tuple[int, Detection]]) -> Selection:
        """One frame's fresh face detections with track ids: act on finished comparisons and
        return the faces to embed now."""
        self._frame_no += 1
        n = self._frame_no
        self.drain()
        cfg = self.config
        wanted: list[Wanted] = []
        for track_id, det in faces:
            track = self._tracks.get(track_id)
            if track is None:
                track = self._tracks[track_id] = _Track(n)
            track.last_seen = n
            if track.matched or track.pending or n - track.last_embed < cfg.refresh_frames:
                continue
            if min(det.box.width, det.box.height) < cfg.min_face_px or det.score < cfg.min_score:
                continue
            wanted.append(Wanted(track_id, det))
        if n % 64 == 0:
            for tid in [t for t, tr in self._tracks.items() if n - tr.last_seen > FORGET_FRAMES]:
                del self._tracks[tid]
        return Selection(wanted)

    def queued(self, track_id: int) -> None:
        track = self._tracks.get(track_id)
        if track is not None:
            track.pending, track.last_embed = True, self._frame_no

    def drain(self) -> None:
        """Act on finished comparisons (called by :meth:`select`; tests call it to settle)."""
        while True:
            try:
                track_id, ts, best = self._results.get_nowait()
            except queue.Empty:
                return
            track = self._tracks.get(track_id)
            if track is not None:
                track.pending = False
            if best is None or best[1] < self.config.threshold:
                continue
            if track is not None:
                track.matched = True
            subject, score = best
            last = self._last_event.get(subject)
            if last is not None and 0 <= ts - last < self.config.cooldown_s:
                self.stats.drop("verify_cooldown")
                continue
            self._last_event[subject] = ts
            self._on_match(subject, score, ts)

    # --- the worker thread ---------------------------------------------------------------

    def embedded(self, track_id: int, ts: float, tag: int, embedding: Embedding | None) -> None:
        """Compare with the gallery, wipe the embedding, hand the best score to :meth:`drain`."""
        best: tuple[str, float] | None = None
        if embedding is not None:
            try:
                best = self.gallery.best(embedding)
            except Exception as exc:  # the matcher failing only costs matches
                self.stats.drop("verify_embed_failed")
                logger.warning("face matching failed (%s); the face is not matched", exc)
            finally:
                embedding.wipe()
        self._results.put((track_id, ts, best))


def open_verifier(
    config: EnrolmentConfig,
    gallery: Gallery | None,
    on_match: OnMatch,
    stats: PipelineStats | None = None,
) -> Verifier | None:
    """The configured :class:`Verifier` (None when ``[enrolment]`` is off or there is no
    gallery); it embeds through the shared worker
    (:func:`agent.vision.embedworker.open_embed_worker`)."""
    if not config.enabled or gallery is None:
        return None
    return Verifier(config, gallery, on_match, stats)


__all__ = ["OnMatch", "Verifier", "open_verifier"]
