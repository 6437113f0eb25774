"""Anonymous re-identification: link sightings of one person inside a short window, then forget.

Off by default (``[reid] enabled``, which also needs a ``purpose``). When on, the
:class:`Reidentifier` is a client of the shared face embedder
(:class:`~agent.vision.embedworker.EmbedWorker`): *after* a frame was redacted it sees the
frame's fresh face detections with their tracker ids (:meth:`Reidentifier.select`) and asks for
a crop of each track to be embedded, cut from the original pixels, by the worker thread; the
pipeline never waits for it. Finished embeddings are picked up on a later frame and linked by
:class:`VisitorRegistry`: a track whose face matches a visitor seen earlier in the window
(cosine >= ``threshold`` against any of that visitor's kept samples, and not in view at the same
time as one of that visitor's tracks) continues that visitor; otherwise it starts a new one.
Tracks that are never embedded (faces smaller than ``min_face_px``, or the embedder failing)
are not visitors by themselves.

With ``persons`` on (the default), a person detector (:mod:`agent.vision.persons`) also runs
every ``person_every`` frames, after redaction, and its people are tracked
(:mod:`agent.vision.persontrack`): a person track counts as the face visitor seen inside it, or,
with none, as one anonymous visitor; so people seen only from behind are counted too. No
embedding is made of a person. The person detector has no part in redaction: if it fails, only
that frame's person sightings are lost (``reid_persons_failed``).

A window lasts ``window_s`` of capture time (default 10 minutes, a whole number of presence
windows, so both end on the same frame). Each window has its own 32-byte random key; a visitor's
pseudonymous id is ``HMAC-SHA256(key, window start / visitor number)``, so ids of two windows
cannot be linked, even by someone who sees both. At the end of the window the registry keeps only
a :class:`~agent.privacy.visitors.VisitorWindow` (a dwell-time histogram); the sample bank (every
kept embedding) and the key are overwritten with zeros and dropped, and the shared interpreter's
tensors are overwritten by embedding a blank crop (:attr:`Selection.scrub`). Ids are not
published at all: presence events carry only the histogram (agent.events, with differential
privacy).

Failure: an exception in :meth:`Reidentifier.select` or in the embedder only loses the visitor
statistics for that frame or face, counted in the pipeline's ``dropped`` under ``reid_*`` keys
(:mod:`agent.vision.embedworker`). Redaction has already happened and does not depend on any of
it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import queue
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

import numpy as np
import numpy.typing as npt

from agent.privacy.visitors import DEFAULT_DWELL_EDGES_S, VisitorWindow, check_edges
from agent.stats import PipelineStats
from agent.vision.detection import Detection, Detector
from agent.vision.embedding import DIMENSIONS, Embedding
from agent.vision.embedworker import Selection, Wanted
from agent.vision.persontrack import PersonTracks
from contract.errors import ConfigError
from hw.frame import Frame

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD: Final = 0.48
"""Cosine similarity at or above which two faces are linked. MobileFaceNet int8 with landmark
alignment (docs/EMBEDDING.md): over every pair of the 1,583 LFW faces of the dev verification set
(1,250,180 impostor comparisons) 0.48 accepts 888 impostor pairs (FAR 7.1e-4, the rate FaceNet's
0.57 had) and 96.2% of the 1,973 same-person pairs; the hardest of the 705 listed negative pairs
scores 0.429, so none of them links. A window compares each new track with every kept sample,
so the low false-accept rate matters more than the recall: a missed link splits a person into
two visitors (counted twice), a false link merges two people."""
KEY_BYTES: Final = 32


@dataclass(frozen=True)
class ReidConfig:
    """``[reid]``: anonymous re-identification for unique-visitor counts and dwell times."""

    enabled: bool = False
    """Off by default: linking faces, even for minutes and under a rotating key, is processing
    of biometric data; switch it on only for a stated purpose (and legal basis)."""
    purpose: str = ""
    """Why visitors are counted (e.g. "footfall and dwell statistics for store layout, legal
    basis: legitimate interest, DPIA 2026-04"); required when enabled, logged at start."""
    window_s: float = 600.0
    """Length of one linking window; the key rotates and every embedding is wiped at its end.
    Must be a whole multiple of ``[events] presence_window_s``."""
    threshold: float = DEFAULT_THRESHOLD
    """Cosine similarity needed to link two faces (see DEFAULT_THRESHOLD for where 0.48 comes
    from)."""
    samples_per_visitor: int = 4
    """Embeddings kept per visitor (a ring); more samples link more poses, at more cost."""
    refresh_frames: int = 15
    """A linked track is embedded again every this many frames (a new sample)."""
    min_face_px: int = 40
    """Faces smaller than this (box width or height, pixels) are not embedded: too unreliable."""
    min_score: float = 0.5
    """Detections below this detector score are redacted but not embedded: the detector's own
    threshold is low on purpose (redact when in doubt), and its doubtful faces (backs of heads,
    profiles, look-alikes) would link unrelated people."""
    max_faces_per_frame: int = 4
    """At most this many crops are queued per frame (bounds the cost of crowds)."""
    queue_size: int = 8
    """Crops waiting for the embedder; when full, further crops are dropped (``reid_overload``).
    The embedder is shared with ``[enrolment]``: its queue takes the larger of the two sizes."""
    threads: int = 1
    """Interpreter threads of the embedder (shared with ``[enrolment]``: the larger count)."""
    dwell_buckets_s: tuple[int, ...] = DEFAULT_DWELL_EDGES_S
    """Edges (seconds) of the dwell-time histogram in presence events."""
    persons: bool = True
    """Also count people who show no face: a person detector (MediaPipe's BlazePose detector,
    ``models/pose_detection_int8.tflite``) runs every ``person_every`` frames, its people are
    tracked, a person track counts as the face visitor seen inside it or, with none, as one
    anonymous visitor (:mod:`agent.vision.persontrack`). No embedding is made of a person. On
    by default with ``[reid]``: without it a camera that sees people from behind counts almost
    nobody (the replay video: 1 visitor of 6 people); it costs one int8 224x224 inference (about
    8 ms on one core) every ``person_every`` frames, after redaction."""
    person_every: int = 3
    """Run the person detector on every this many frames (1: every frame)."""
    person_threshold: float = 0.5
    """Person detector score threshold (MediaPipe's)."""
    person_min_frames: int = 9
    """A person track counts as a visitor once detected on ``ceil(person_min_frames /
    person_every)`` runs (3 by default): it drops passing false alarms and a second box on a
    person walking in. On the replay video, 9 frames counts 6 of 6 people for every
    ``person_every`` from 1 to 8 (6 frames: 8 visitors at 6)."""

    def __post_init__(self) -> None:
        if self.enabled and len(self.purpose.strip()) < 8:
            raise ConfigError(
                '[reid] enabled = true needs purpose = "...": say why visitors are counted '
                "(and on which legal basis); it is logged when the agent starts"
            )
        if not 1.0 <= self.window_s <= 86400:
            raise ConfigError("[reid] window_s must be between 1 and 86400 seconds")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError("[reid] threshold must be between 0 and 1 (cosine similarity)")
        if not 1 <= self.samples_per_visitor <= 64:
            raise ConfigError("[reid] samples_per_visitor must be between 1 and 64")
        if self.refresh_frames < 1 or self.min_face_px < 8:
            raise ConfigError("[reid] refresh_frames must be >= 1 and min_face_px >= 8")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError("[reid] min_score must be between 0 and 1")
        if not 1 <= self.max_faces_per_frame <= 64 or not 1 <= self.queue_size <= 256:
            raise ConfigError("[reid] need 1 <= max_faces_per_frame <= 64, 1 <= queue_size <= 256")
        if not 1 <= self.threads <= 64:
            raise ConfigError("[reid] threads must be between 1 and 64")
        if not 1 <= self.person_every <= 100 or not 1 <= self.person_min_frames <= 1000:
            raise ConfigError(
                "[reid] person_every must be between 1 and 100, person_min_frames 1 and 1000"
            )
        if not 0.0 < self.person_threshold < 1.0:
            raise ConfigError("[reid] person_threshold must be between 0 and 1")
        try:
            check_edges(self.dwell_buckets_s)
        except ValueError as exc:
            raise ConfigError(f"[reid] dwell_buckets_s: {exc}") from None


def check_windows(reid: ReidConfig, presence_window_s: float) -> None:
    """ConfigError unless the re-identification window is a whole number of presence windows
    (so that a visitor window always ends on the frame that ends a presence window)."""
    if not reid.enabled:
        return
    ratio = reid.window_s / presence_window_s
    if ratio < 1 - 1e-9 or abs(ratio - round(ratio)) > 1e-6:
        raise ConfigError(
            f"[reid] window_s ({reid.window_s}) must be a whole multiple of [events] "
            f"presence_window_s ({presence_window_s})"
        )


@dataclass
class _Track:
    first: float
    last: float
    visitor: int | None = None
    pending: bool = False
    """A crop of this track is with the embedder."""
    last_embed_frame: int = -(10**9)


@dataclass
class _Visitor:
    id: str
    samples: int = 0
    tracks: list[int] = field(default_factory=list)


class VisitorRegistry:
    """One window's linking state. Single-threaded (the pipeline thread); see module docstring."""

    def __init__(self, config: ReidConfig, start: float, key: bytes | None = None) -> None:
        self.config = config
        self.start = start
        self.key = bytearray(key if key is not None else secrets.token_bytes(KEY_BYTES))
        self._tracks: dict[int, _Track] = {}
        self._visitors: list[_Visitor] = []
        self.bank: npt.NDArray[np.float32] = np.zeros((16, DIMENSIONS), np.float32)
        """Kept samples, one per row; ``_owner[row]`` is the visitor's index."""
        self._owner: npt.NDArray[np.int64] = np.full(16, -1, np.int64)
        self._rows = 0
        self.last_ts = start
        self.closed = False
        self.persons = PersonTracks.every(config.person_every, config.person_min_frames)
        """Person tracks (``[reid] persons``; empty when the person detector is off)."""

    # --- sightings -------------------------------------------------------------------------

    def seen(self, track_id: int, ts: float, frame_no: int) -> bool:
        """A fresh detection of ``track_id`` at ``ts``; True if a crop should be embedded now."""
        track = self._tracks.get(track_id)
        if track is None:
            track = self._tracks[track_id] = _Track(ts, ts)
        track.last = max(track.last, ts)
        self.last_ts = max(self.last_ts, ts)
        if track.pending:
            return False
        if track.visitor is None:
            return True
        return frame_no - track.last_embed_frame >= self.config.refresh_frames

    def persons_seen(
        self, ts: float, persons: Sequence[Detection], faces: Sequence[tuple[int, Detection]]
    ) -> None:
        """One run of the person detector at ``ts``, with the frame's fresh faces."""
        self.last_ts = max(self.last_ts, ts)
        self.persons.update(ts, persons, faces)

    def requested(self, track_id: int, frame_no: int) -> None:
        track = self._tracks.get(track_id)
        if track is not None:
            track.pending = True
            track.last_embed_frame = frame_no

    def failed(self, track_id: int) -> None:
        track = self._tracks.get(track_id)
        if track is not None:
            track.pending = False

    def link(self, track_id: int, embedding: Embedding) -> str | None:
        """Link the track's new embedding; returns the visitor's pseudonymous id (None when the
        track is unknown in this window). ``embedding`` is wiped after its vector is kept."""
        try:
            track = self._tracks.get(track_id)
            if track is None or self.closed:
                return None
            track.pending = False
            vector = embedding.vector
            sims = self.bank[: self._rows] @ vector if self._rows else np.zeros(0, np.float32)
            if track.visitor is None:
                match = self._best_visitor(track, sims)
                track.visitor = match if match is not None else self._new_visitor()
                self._visitors[track.visitor].tracks.append(track_id)
                self._keep(track.visitor, vector)
            else:
                own = sims[self._owner[: self._rows] == track.visitor]
                if own.size and float(own.max()) >= self.config.threshold:
                    self._keep(track.visitor, vector)
                # else: the tracker may have swapped people; keep no sample from it
            return self._visitors[track.visitor].id
        finally:
            embedding.wipe()

    def _best_visitor(self, track: _Track, sims: npt.NDArray[np.float32]) -> int | None:
        """The most similar visitor at or above the threshold that was not in view at the same
        time as ``track`` (two faces seen at once are two people)."""
        if not sims.size:
            return None
        best = np.full(len(self._visitors), -np.inf)
        np.maximum.at(best, self._owner[: self._rows], sims)
        for visitor in np.argsort(-best):
            if best[visitor] < self.config.threshold:
                return None
            others = (self._tracks[t] for t in self._visitors[visitor].tracks)
            if all(o.last < track.first or o.first > track.last for o in others):
                return int(visitor)
        return None

    def _new_visitor(self) -> int:
        index = len(self._visitors)
        message = f"{self.start!r}/{index}".encode()
        digest = hmac.new(self.key, message, hashlib.sha256).hexdigest()[:32]
        self._visitors.append(_Visitor(digest))
        return index

    def _keep(self, visitor: int, vector: npt.NDArray[np.float32]) -> None:
        """Store ``vector`` as a sample of ``visitor`` (a ring of ``samples_per_visitor``)."""
        v = self._visitors[visitor]
        k = self.config.samples_per_visitor
        rows = np.flatnonzero(self._owner[: self._rows] == visitor)
        if rows.size >= k:
            row = int(rows[v.samples % k])
        else:
            if self._rows == len(self.bank):
                self._grow()
            row = self._rows
            self._rows += 1
            self._owner[row] = visitor
        self.bank[row] = vector
        v.samples += 1

    def _grow(self) -> None:
        old_bank, old_owner = self.bank, self._owner
        self.bank = np.zeros((2 * len(old_bank), DIMENSIONS), np.float32)
        self.bank[: len(old_bank)] = old_bank
        self._owner = np.full(2 * len(old_owner), -1, np.int64)
        self._owner[: len(old_owner)] = old_owner
        old_bank.fill(0.0)

    # --- the window's end ------------------------------------------------------------------

    def visitor_ids(self) -> list[str]:
        return [v.id for v in self._visitors]

    def dwell_times(self) -> list[float]:
        """Per visitor: last sighting minus first, over all its face tracks and the person
        tracks its faces were seen in, inside the window; then one per anonymous person
        (:mod:`agent.vision.persontrack`)."""
        linked, anonymous = self.persons.visitors(self._visitor_of)
        out = []
        for index, v in enumerate(self._visitors):
            tracks = [self._tracks[t] for t in v.tracks]
            first = min(t.first for t in tracks)
            last = max(t.last for t in tracks)
            if index in linked:
                first, last = min(first, linked[index][0]), max(last, linked[index][1])
            out.append(last - first)
        return out + anonymous

    def _visitor_of(self, track_id: int) -> int | None:
        track = self._tracks.get(track_id)
        return track.visitor if track is not None else None

    def close(self, end: float) -> VisitorWindow:
        """The window's histogram; then every embedding and the key are zeroed and dropped."""
        window = VisitorWindow.of(
            self.start, max(end, self.start), self.dwell_times(), self.config.dwell_buckets_s
        )
        self.wipe()
        return window

    def wipe(self) -> None:
        self.bank.fill(0.0)
        self.key[:] = bytes(len(self.key))
        self.bank = np.zeros((0, DIMENSIONS), np.float32)
        self._owner = np.zeros(0, np.int64)
        self._rows = 0
        self._tracks.clear()
        self._visitors.clear()
        self.persons.clear()
        self.closed = True


class Reidentifier:
    """Owns the window's :class:`VisitorRegistry`; a client of the shared
    :class:`~agent.vision.embedworker.EmbedWorker`.

    :meth:`select`, :meth:`take_closed` and :meth:`flush` are called by the pipeline thread
    (the sink runs on it too), :meth:`embedded` by the worker thread. The constructor only
    stores; :meth:`close` (the worker calls it when it stops; also on ``with`` exit) wipes
    everything.
    """

    name = "reid"
    lost = "re-identification"

    def __init__(
        self,
        config: ReidConfig,
        stats: PipelineStats | None = None,
        persons: Detector | None = None,
    ) -> None:
        self.config = config
        self.stats = stats if stats is not None else PipelineStats()
        self._persons = persons
        """The person detector (``[reid] persons``), run on the pipeline thread."""
        self._results: queue.SimpleQueue[tuple[int, int, Embedding | None]] = queue.SimpleQueue()
        self.registry: VisitorRegistry | None = None
        self._epoch = 0
        self._frame_no = 0
        self._closed: VisitorWindow | None = None
        self._scrub = False

    @property
    def threads(self) -> int:
        return self.config.threads

    @property
    def queue_size(self) -> int:
        return self.config.queue_size

    # --- lifetime --------------------------------------------------------------------------

    def __enter__(self) -> Reidentifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self.registry is not None:
            self.registry.wipe()
            self.registry = None
        self._epoch += 1
        self._drain()
        self._scrub_persons()

    def _scrub_persons(self) -> None:
        """Run the person detector on a black image, so that its interpreter's tensors no
        longer hold the last frame."""
        if self._persons is not None:
            try:
                self._persons.detect(np.zeros((8, 8, 3), np.uint8))
            except Exception:  # the interpreter is unusable anyway; nothing more to do
                logger.warning("person detector scrub failed", exc_info=True)

    # --- the pipeline thread ---------------------------------------------------------------

    def select(self, frame: Frame, faces: Sequence[tuple[int, Detection]]) -> Selection:
        """One redacted-for frame: its capture time and fresh face detections with track ids;
        links the embeddings that came back and returns the faces to embed now."""
        ts = frame.ts
        self._frame_no += 1
        self._drain()  # results that came back before this frame belong to their window
        registry = self.registry
        if registry is None:
            registry = self._open(ts)
        elif ts >= registry.start + self.config.window_s:
            skipped = math.floor((ts - registry.start) / self.config.window_s)
            self._rotate(registry.start + self.config.window_s)
            registry = self._open(registry.start + skipped * self.config.window_s)
        if self._persons is not None and (self._frame_no - 1) % self.config.person_every == 0:
            self._find_persons(frame, registry, faces)
        wanted: list[Wanted] = []
        for track_id, det in faces:
            if not registry.seen(track_id, ts, self._frame_no):
                continue
            if min(det.box.width, det.box.height) < self.config.min_face_px:
                continue
            if det.score < self.config.min_score:
                continue
            if len(wanted) >= self.config.max_faces_per_frame:
                break
            wanted.append(Wanted(track_id, det, self._epoch))
        scrub, self._scrub = self._scrub, False
        return Selection(wanted, scrub)

    def _find_persons(
        self, frame: Frame, registry: VisitorRegistry, faces: Sequence[tuple[int, Detection]]
    ) -> None:
        """Person detection for counting only: a failure loses this frame's person sightings
        (``reid_persons_failed``); redaction has already happened without it."""
        assert self._persons is not None
        t0 = time.perf_counter()
        try:
            persons = self._persons.detect(frame.pixels)
        except Exception as exc:
            self.stats.drop("reid_persons_failed")
            logger.warning("person detection skipped frame %d: %s", frame.index, exc)
        else:
            registry.persons_seen(frame.ts, persons, faces)
        self.stats.time("persons", time.perf_counter() - t0)

    def queued(self, track_id: int) -> None:
        if self.registry is not None:
            self.registry.requested(track_id, self._frame_no)

    def take_closed(self) -> VisitorWindow | None:
        """The last window that ended (once), for the presence event that ends with it."""
        closed, self._closed = self._closed, None
        return closed

    def flush(self) -> VisitorWindow | None:
        """End the current window at its last frame (at stop or before a swap)."""
        registry = self.registry
        if registry is not None:
            self._drain()
            self._rotate(registry.last_ts)
        return self.take_closed()

    def _open(self, start: float) -> VisitorRegistry:
        self.registry = VisitorRegistry(self.config, start)
        return self.registry

    def _rotate(self, end: float) -> None:
        registry = self.registry
        assert registry is not None
        if self._closed is not None:
            self.stats.drop("reid_window_unreported")
        self._closed = registry.close(end)
        self.registry = None
        self._epoch += 1
        self._scrub = True  # the worker overwrites the model's tensors on the next frame
        self._scrub_persons()

    def _drain(self) -> None:
        registry = self.registry
        while True:
            try:
                epoch, track_id, embedding = self._results.get_nowait()
            except queue.Empty:
                return
            if embedding is None:
                if registry is not None and epoch == self._epoch:
                    registry.failed(track_id)
                continue
            if registry is None or epoch != self._epoch:
                embedding.wipe()  # computed for a window that has ended
                continue
            registry.link(track_id, embedding)

    # --- the worker thread -----------------------------------------------------------------

    def embedded(self, track_id: int, ts: float, tag: int, embedding: Embedding | None) -> None:
        """Hand the result to the pipeline thread (linked there, on the next frame)."""
        self._results.put((tag, track_id, embedding))


def open_reid(config: ReidConfig, stats: PipelineStats | None = None) -> Reidentifier | None:
    """The configured :class:`Reidentifier` (None when ``[reid]`` is off); it embeds through
    the shared worker (:func:`agent.vision.embedworker.open_embed_worker`). With ``persons``
    on it loads the person detector (hash checked: ModelError if it differs)."""
    if not config.enabled:
        return None
    persons: Detector | None = None
    if config.persons:
        from agent.vision.persons import PersonDetectorConfig, build_person_detector

        persons = build_person_detector(
            PersonDetectorConfig(score_threshold=config.person_threshold)
        )
    logger.info(
        "anonymous re-identification on: window %.0f s, threshold %.2f, persons %s, purpose: %s",
        config.window_s,
        config.threshold,
        f"every {config.person_every} frames" if persons is not None else "off",
        config.purpose,
    )
    return Reidentifier(config, stats, persons)


__all__ = [
    "DEFAULT_THRESHOLD",
    "ReidConfig",
    "Reidentifier",
    "VisitorRegistry",
    "check_windows",
    "open_reid",
]
