"""One face embedder shared by the face observers: enrolled matching and re-identification.

After a frame was redacted, the pipeline hands its fresh face detections, with tracker ids, to
:meth:`EmbedWorker.observe`. Each client (:class:`EmbedClient`: the enrolled matcher of
:mod:`agent.vision.verify`, then the re-identifier of :mod:`agent.vision.reid`) first acts on
its finished results and says which tracks it wants embedded now (:meth:`EmbedClient.select`).
A face that both want is cropped once from the original pixels (redaction does not modify them),
put once into one bounded queue and embedded once, by one worker thread with one FaceNet
interpreter; each client then gets its own copy of the embedding
(:meth:`EmbedClient.embedded`, on the worker thread). The pipeline never waits for the worker.

Wiping: crops are zeroed once embedded or discarded, and the worker zeroes its own embedding
after handing out the copies (each client wipes its copy). A client can ask for the
interpreter's input and output tensors to be overwritten (:attr:`Selection.scrub`: the
re-identifier does at the end of each window): a blank crop is embedded behind the crops
already queued. The same happens when the worker stops.

Failure never reaches redaction, which has already happened. Every loss is counted in the
pipeline's ``dropped`` under the client's name (``verify``, ``reid``):

- ``<name>_failed``: the client's :meth:`~EmbedClient.select` raised; the frame is lost to it
  (the other client still gets its faces);
- ``<name>_bad_crop``: the face box could not be cropped;
- ``<name>_overload``: the queue was full, so this frame's remaining crops were dropped (the
  client asks again on a later frame);
- ``<name>_embed_failed``: the embedder raised, or the client's handling of the result did.

Queue size and interpreter threads are the larger of the clients' settings (``[reid]`` and
``[enrolment]`` ``queue_size`` and ``threads``).

Listeners are clients that never ask for a face of their own but get a copy of every embedding
the others asked for (the tracker's re-linking, :mod:`agent.vision.relink`): they cost no
embedder time, and their :meth:`~EmbedClient.select` runs every frame after the clients'.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from agent.stats import PipelineStats
from agent.vision.detection import Detection
from agent.vision.embedding import INPUT_SIZE, Embedding, align
from hw.frame import Frame

logger = logging.getLogger(__name__)


class CropEmbedder(Protocol):
    """What the worker needs of :class:`~agent.vision.embedding.FaceEmbedder`."""

    def embed_crop(self, crop: npt.NDArray[np.uint8]) -> Embedding: ...


@dataclass(frozen=True)
class Wanted:
    """A face a client wants embedded now; ``tag`` comes back with the result (the
    re-identifier's window number)."""

    track_id: int
    detection: Detection
    tag: int = 0


@dataclass(frozen=True)
class Selection:
    """A client's answer for one frame."""

    faces: Sequence[Wanted] = ()
    """In the client's order of preference."""
    scrub: bool = False
    """Overwrite the interpreter's tensors (behind the crops already queued)."""


class EmbedClient(Protocol):
    """A face observer fed by the shared worker (see the module docstring)."""

    @property
    def name(self) -> str:
        """Stage name and prefix of the client's drop counters (``reid``, ``verify``)."""
        ...

    @property
    def lost(self) -> str:
        """What a failure costs, for log lines ("re-identification")."""
        ...

    @property
    def threads(self) -> int:
        """Interpreter threads the client's config asks for."""
        ...

    @property
    def queue_size(self) -> int:
        """Crops the client's config lets wait."""
        ...

    def select(self, frame: Frame, faces: Sequence[tuple[int, Detection]]) -> Selection:
        """Pipeline thread, once per frame: act on finished results; the faces to embed now."""
        ...

    def queued(self, track_id: int) -> None:
        """Pipeline thread: the crop of ``track_id`` asked for in this frame is in the queue."""
        ...

    def embedded(self, track_id: int, ts: float, tag: int, embedding: Embedding | None) -> None:
        """Worker thread: the result for a crop taken at capture time ``ts`` (None: the
        embedder failed, already counted). The client owns ``embedding`` and must wipe it."""
        ...

    def close(self) -> None:
        """Wipe what the client holds (called once the worker has stopped)."""
        ...


@dataclass(frozen=True)
class _Job:
    track_id: int
    ts: float
    crop: npt.NDArray[np.uint8]
    takers: tuple[tuple[EmbedClient, int], ...]
    """The clients that asked, each with its tag."""


_SCRUB: Final = object()
_STOP: Final = object()


class EmbedWorker:
    """The shared embedder: :meth:`observe` on the pipeline thread, one worker thread behind
    one bounded queue. The constructor only stores; ``with`` starts the worker; exit (or
    :meth:`close`) stops it, scrubs the interpreter and closes the clients."""

    def __init__(
        self,
        embedder: CropEmbedder,
        clients: Sequence[EmbedClient],
        stats: PipelineStats | None = None,
        *,
        queue_size: int | None = None,
        margin: float = 0.2,
        use_landmarks: bool = False,
        listeners: Sequence[EmbedClient] = (),
    ) -> None:
        if not clients:
            raise ValueError("an EmbedWorker needs at least one client")
        self._listeners = tuple(listeners)
        self.clients = (*clients, *self._listeners)
        self._embedder = embedder
        self.stats = stats if stats is not None else PipelineStats()
        size = queue_size if queue_size is not None else max(c.queue_size for c in clients)
        self._jobs: queue.Queue[object] = queue.Queue(size)
        self._margin = margin
        self._use_landmarks = use_landmarks
        self._worker: threading.Thread | None = None
        self._closed = False

    # --- lifetime ----------------------------------------------------------------------------

    def __enter__(self) -> EmbedWorker:
        self._worker = threading.Thread(target=self._work, name="face-embedder", daemon=True)
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
        """Discard (and zero) the waiting crops, scrub, stop the worker, close the clients."""
        worker, self._worker = self._worker, None
        if worker is not None:
            self._discard_jobs()
            try:
                self._jobs.put(_STOP, timeout=1.0)  # the worker scrubs before it stops
            except queue.Full:
                logger.warning("face embedder did not take its stop message")
            worker.join(timeout=5.0)
        if not self._closed:
            self._closed = True
            for client in self.clients:
                client.close()

    def _discard_jobs(self) -> None:
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Job):
                item.crop.fill(0)
            self._jobs.task_done()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued crop was embedded and handed out (benchmarks, tests); False
        if that took longer than ``timeout`` seconds."""
        jobs = self._jobs
        with jobs.all_tasks_done:
            return jobs.all_tasks_done.wait_for(lambda: not jobs.unfinished_tasks, timeout)

    # --- the pipeline thread -----------------------------------------------------------------

    def observe(self, frame: Frame, faces: Sequence[tuple[int, Detection]]) -> None:
        """One redacted-for frame: ask each client, crop each wanted face once, queue it.
        Never waits for the embedder."""
        stats = self.stats
        wanted: dict[int, list[tuple[EmbedClient, int]]] = {}
        detections: dict[int, Detection] = {}
        scrub = False
        t0 = time.perf_counter()
        for client in self.clients:
            try:
                selection = client.select(frame, faces)
            except Exception as exc:  # only this client's use of the frame is lost
                stats.drop(f"{client.name}_failed")
                logger.warning("%s skipped frame %d: %s", client.lost, frame.index, exc)
            else:
                scrub = scrub or selection.scrub
                for want in selection.faces:
                    wanted.setdefault(want.track_id, []).append((client, want.tag))
                    detections.setdefault(want.track_id, want.detection)
            t1 = time.perf_counter()
            stats.time(client.name, t1 - t0)
            t0 = t1
        if scrub:
            with contextlib.suppress(queue.Full):  # else the next scrub or the stop does it
                self._jobs.put_nowait(_SCRUB)
        self._queue(frame, wanted, detections)
        stats.time("crop", time.perf_counter() - t0)

    def _queue(
        self,
        frame: Frame,
        wanted: dict[int, list[tuple[EmbedClient, int]]],
        detections: dict[int, Detection],
    ) -> None:
        order = list(wanted.items())
        for i, (track_id, takers) in enumerate(order):
            try:
                crop = align(frame.pixels, detections[track_id], self._margin, self._use_landmarks)
            except ValueError:
                for client, _tag in takers:
                    self.stats.drop(f"{client.name}_bad_crop")
                continue
            listening = tuple(
                (listener, 0)
                for listener in self._listeners
                if all(client is not listener for client, _tag in takers)
            )
            try:
                self._jobs.put_nowait(_Job(track_id, frame.ts, crop, (*takers, *listening)))
            except queue.Full:
                crop.fill(0)
                # every client that loses a crop of this frame counts one overload
                losers = {client.name: None for _, rest in order[i:] for client, _tag in rest}
                for name in losers:
                    self.stats.drop(f"{name}_overload")
                return
            for client, _tag in takers:
                client.queued(track_id)

    # --- the worker thread -------------------------------------------------------------------

    def _work(self) -> None:
        blank = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        while True:
            item = self._jobs.get()
            try:
                if item is _STOP or item is _SCRUB:
                    # overwrite the interpreter's input and output tensors; a model that refuses
                    # a blank crop only leaves them as they were
                    with contextlib.suppress(Exception):
                        self._embedder.embed_crop(blank).wipe()
                    if item is _STOP:
                        return
                    continue
                assert isinstance(item, _Job)
                self._embed(item)
            finally:
                self._jobs.task_done()

    def _embed(self, job: _Job) -> None:
        t0 = time.perf_counter()
        embedding: Embedding | None = None
        try:
            embedding = self._embedder.embed_crop(job.crop)
        except Exception as exc:  # the embedder failing only costs matches and statistics
            askers = [c for c, _tag in job.takers if all(c is not li for li in self._listeners)]
            for client in askers:
                self.stats.drop(f"{client.name}_embed_failed")
            lost = " and ".join(client.lost for client in askers)
            logger.warning("face embedding failed (%s); %s skip the face", exc, lost)
        finally:
            job.crop.fill(0)
        self.stats.time("embed", time.perf_counter() - t0)
        try:
            for client, tag in job.takers:
                own = None if embedding is None else embedding.copy()
                try:
                    client.embedded(job.track_id, job.ts, tag, own)
                except Exception as exc:  # one client's failure leaves the other its copy
                    if own is not None:
                        own.wipe()
                    self.stats.drop(f"{client.name}_embed_failed")
                    logger.warning("%s lost a face: %s", client.lost, exc)
        finally:
            if embedding is not None:
                embedding.wipe()


def open_embed_worker(
    clients: Sequence[EmbedClient | None],
    stats: PipelineStats | None = None,
    models_dir: Path | None = None,
    listeners: Sequence[EmbedClient | None] = (),
) -> EmbedWorker | None:
    """The shared worker for the clients that are on (None when none is: listeners alone do
    not start one): FaceNet int8, hash-checked against the manifest, loaded here once (enter
    the worker to start it)."""
    present = [c for c in clients if c is not None]
    if not present:
        return None
    from agent.vision.embedding import EmbedderConfig, FaceEmbedder
    from models import MODELS_DIR, verified_path

    embedder = FaceEmbedder(
        verified_path("facenet_int8", models_dir or MODELS_DIR),
        EmbedderConfig(num_threads=max(c.threads for c in present)),
    ).load()
    return EmbedWorker(
        embedder, present, stats, listeners=[li for li in listeners if li is not None]
    )


__all__ = [
    "CropEmbedder",
    "EmbedClient",
    "EmbedWorker",
    "Selection",
    "Wanted",
    "open_embed_worker",
]
