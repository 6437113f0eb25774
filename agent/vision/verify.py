"""Matching faces in view against the enrolled gallery (opt-in: ``[enrolment]``).

Modelled on :mod:`agent.vision.reid`: the pipeline hands each frame's fresh face detections,
with tracker ids, to :meth:`Verifier.observe` after the frame was redacted (the crops are cut
from the original pixels, which redaction does not modify). Per track a crop is queued to a
worker thread that embeds it with FaceNet int8 and compares it with every template of the
:class:`~agent.vision.gallery.Gallery`; the pipeline never waits. Results are picked up on a
later frame: a score at or above ``threshold`` calls ``on_match(subject, score, ts)`` once per
track (and at most once per subject per ``cooldown_s``); an unmatched track is tried again every
``refresh_frames`` frames. Embeddings are wiped as soon as they are compared; only the subject id
and the score leave this module.

Failure: an exception here or in the embedder only loses matches (counted in the pipeline's
``dropped`` under ``verify_*``); redaction has already happened and does not depend on it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import numpy as np
import numpy.typing as npt

from agent.stats import PipelineStats
from agent.vision.detection import Detection
from agent.vision.embedding import INPUT_SIZE, align
from agent.vision.gallery import EnrolmentConfig, Gallery
from agent.vision.reid import CropEmbedder
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


@dataclass(frozen=True)
class _Job:
    track_id: int
    ts: float
    crop: npt.NDArray[np.uint8]


_STOP: Final = object()


class Verifier:
    """Owns the matcher's worker thread; :meth:`observe` runs on the pipeline thread. The
    constructor only stores; ``with`` starts the worker, exit stops it."""

    def __init__(
        self,
        config: EnrolmentConfig,
        embedder: CropEmbedder,
        gallery: Gallery,
        on_match: OnMatch,
        stats: PipelineStats | None = None,
        *,
        margin: float = 0.2,
    ) -> None:
        self.config = config
        self._embedder = embedder
        self.gallery = gallery
        self._on_match = on_match
        self.stats = stats if stats is not None else PipelineStats()
        self._margin = margin
        self._jobs: queue.Queue[object] = queue.Queue(config.queue_size)
        self._results: queue.SimpleQueue[tuple[int, float, tuple[str, float] | None]] = (
            queue.SimpleQueue()
        )
        self._worker: threading.Thread | None = None
        self._tracks: dict[int, _Track] = {}
        self._last_event: dict[str, float] = {}
        self._frame_no = 0

    def __enter__(self) -> Verifier:
        self._worker = threading.Thread(target=self._work, name="verify-embedder", daemon=True)
        self._worker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            while True:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Job):
                    item.crop.fill(0)
            with contextlib.suppress(queue.Full):
                self._jobs.put(_STOP, timeout=1.0)
            worker.join(timeout=5.0)
        self.drain()
        self._tracks.clear()

    # --- the pipeline thread -------------------------------------------------------------

    def observe(self, frame: Frame, faces: Sequence[tuple[int, Detection]]) -> None:
        """One frame's fresh face detections with track ids; never waits for the embedder."""
        self._frame_no += 1
        n = self._frame_no
        self.drain()
        cfg = self.config
        for track_id, det in faces:
            track = self._tracks.get(track_id)
            if track is None:
                track = self._tracks[track_id] = _Track(n)
            track.last_seen = n
            if track.matched or track.pending or n - track.last_embed < cfg.refresh_frames:
                continue
            if min(det.box.width, det.box.height) < cfg.min_face_px or det.score < cfg.min_score:
                continue
            try:
                crop = align(frame.pixels, det, self._margin, False)
            except ValueError:
                self.stats.drop("verify_bad_crop")
                continue
            try:
                self._jobs.put_nowait(_Job(track_id, frame.ts, crop))
            except queue.Full:
                crop.fill(0)
                self.stats.drop("verify_overload")
                break
            track.pending, track.last_embed = True, n
        if n % 64 == 0:
            for tid in [t for t, tr in self._tracks.items() if n - tr.last_seen > FORGET_FRAMES]:
                del self._tracks[tid]

    def drain(self) -> None:
        """Act on finished comparisons (called by :meth:`observe`; tests call it to settle)."""
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

    def _work(self) -> None:
        blank = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        while True:
            item = self._jobs.get()
            if item is _STOP:
                with contextlib.suppress(Exception):  # scrub the interpreter's tensors
                    self._embedder.embed_crop(blank).wipe()
                return
            assert isinstance(item, _Job)
            best: tuple[str, float] | None = None
            try:
                embedding = self._embedder.embed_crop(item.crop)
                try:
                    best = self.gallery.best(embedding)
                finally:
                    embedding.wipe()
            except Exception as exc:  # the matcher failing only costs matches
                self.stats.drop("verify_embed_failed")
                logger.warning("face matching failed (%s); the face is not matched", exc)
            finally:
                item.crop.fill(0)
            self._results.put((item.track_id, item.ts, best))


def open_verifier(
    config: EnrolmentConfig,
    gallery: Gallery | None,
    on_match: OnMatch,
    stats: PipelineStats | None = None,
    models_dir: Path | None = None,
) -> Verifier | None:
    """The configured :class:`Verifier` (None when ``[enrolment]`` is off or there is no
    gallery): FaceNet int8, hash-checked, loaded here (enter it to start its worker)."""
    if not config.enabled or gallery is None:
        return None
    from agent.vision.embedding import MODEL, EmbedderConfig, FaceEmbedder
    from models import MODELS_DIR, verified_path

    embedder = FaceEmbedder(
        verified_path(MODEL, models_dir or MODELS_DIR),
        EmbedderConfig(num_threads=config.threads),
    ).load()
    return Verifier(config, embedder, gallery, on_match, stats)


__all__ = ["OnMatch", "Verifier", "open_verifier"]
