"""Batch redaction of image and video files (the engine behind `camveil redact`).

- :func:`find_inputs` turns the paths a user gave (files and folders, recursed) into
  :class:`InputFile` items, each with the relative path its output takes under the output folder;
- :func:`redact_image` decodes one image with Pillow (EXIF orientation applied), detects, redacts
  and writes a lossless PNG through :func:`agent.privacy.store.write_png`;
- :func:`redact_video` decodes a video with OpenCV and runs the real
  :class:`~agent.pipeline.Pipeline` over it (detect, track with hold-over, redact) into a
  :class:`~agent.privacy.store.VideoSink` (H.264, the source's frame rate, no audio), written
  under a temporary name and renamed at the end;
- :func:`redact_files` does the above for every input and reports each file's outcome.

Fail closed: a detector failure on an image writes nothing for it; on a video frame, the frame is
dropped (counted) and the video goes on. Pixels only reach the disk as a ``RedactedFrame`` through
``agent.privacy.store``. A file that cannot be decoded or written is reported and skipped; the
others go on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame, regions_to_redact
from agent.privacy.redact import redact
from agent.privacy.store import ImageFormat, VideoSink, write_animation, write_image
from agent.stats import PipelineStats
from agent.vision.detection import Detection, Detector
from agent.vision.track import TrackedRegion
from contract.errors import DetectorFailedError, EndOfStream, InputFileError
from hw.frame import Frame

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
"""Files with these extensions are decoded as videos (with OpenCV)."""
IMAGE_OUTPUT_SUFFIX = ".png"
VIDEO_OUTPUT_SUFFIX = ".mp4"
DEFAULT_FPS = 25.0
"""Frame rate written when a video does not declare a usable one."""

MediaKind = Literal["image", "video"]


@dataclass(frozen=True)
class InputFile:
    """One file to redact: where it is, and its path relative to the output folder (with its
    original suffix; the output suffix is chosen once the file's kind is known)."""

    path: Path
    rel: Path
    explicit: bool
    """Named on the command line (not found by walking a folder): an unreadable explicit file is
    always a failure, a folder's file that is neither image nor video is only noted."""


@dataclass
class FileResult:
    """What happened to one input file."""

    source: InputFile
    kind: MediaKind | None = None
    output: Path | None = None
    """The file written, or ``None`` if nothing was written."""
    error: str | None = None
    """Why the file failed (nothing was written for it); ``None`` on success."""
    ignored: bool = False
    """A file found in a folder that is neither an image nor a video: not an error."""
    frames_in: int = 0
    frames_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    """Video frames not written, by reason (fail closed)."""
    regions: int = 0
    """Regions overwritten (over all frames of a video), hold-over regions included."""
    faces: int = 0
    """Faces the detector found (summed over the frames written)."""
    declared_frames: int | None = None
    """A video's frame count as its container declares it (may be approximate)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def frames_dropped(self) -> int:
        return sum(self.dropped.values())


class Progress(Protocol):
    """Hooks through which a front end shows progress; every method is called on one thread."""

    def file_started(self, item: InputFile, kind: MediaKind, total_frames: int | None) -> None:
        """A file is about to be processed (``total_frames``: a video's declared frame count)."""

    def frame_done(self) -> None:
        """One video frame was read (written or dropped)."""

    def file_finished(self, result: FileResult) -> None:
        """A file is done (successfully, failed or ignored)."""


class NoProgress:
    """A :class:`Progress` that shows nothing."""

    def file_started(self, item: InputFile, kind: MediaKind, total_frames: int | None) -> None:
        pass

    def frame_done(self) -> None:
        pass

    def file_finished(self, result: FileResult) -> None:
        pass


# --- finding inputs -------------------------------------------------------------------------


def find_inputs(inputs: Sequence[Path], out_dir: Path) -> list[InputFile]:
    """Expand files and folders (recursively, sorted, hidden entries skipped) into input files.

    A single file's relative path is its name; a folder's files keep their path relative to that
    folder. When the output folder sits inside an input folder, its files are skipped (earlier
    outputs are not redacted again). Raises :class:`InputFileError` for a path that does not
    exist, and for an output folder that is a file or one of the input folders.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise InputFileError(f"--out {out_dir} is a file; give a folder (it is created if absent)")
    out_resolved = out_dir.resolve()
    items: list[InputFile] = []
    for given in inputs:
        if given.is_dir():
            if given.resolve() == out_resolved:
                raise InputFileError(
                    f"{given} is both an input folder and the output folder: "
                    "choose another --out, the outputs would mix with (or replace) the inputs"
                )
            out_inside = _is_within(out_resolved, given.resolve())
            for path in _walk(given):
                if not (out_inside and _is_within(path.resolve(), out_resolved)):
                    items.append(InputFile(path, path.relative_to(given), explicit=False))
        elif given.is_file():
            items.append(InputFile(given, Path(given.name), explicit=True))
        else:
            raise InputFileError(f"{given}: no such file or folder")
    return items


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def output_path(
    out_dir: Path, item: InputFile, kind: MediaKind, fmt: ImageFormat | None = None
) -> Path:
    """Where ``item``'s output goes: its relative path, ``.png`` (or ``fmt``'s suffix) for
    images, ``.mp4`` for videos."""
    if kind == "image":
        suffix = fmt.suffix if fmt is not None else IMAGE_OUTPUT_SUFFIX
    else:
        suffix = VIDEO_OUTPUT_SUFFIX
    return out_dir / item.rel.with_suffix(suffix)


def guess_kind(path: Path) -> MediaKind | None:
    """``video`` or ``image`` from the extension; ``None`` when the extension does not say."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in Image.registered_extensions():
        return "image"
    return None


# --- detection ------------------------------------------------------------------------------


def detect_checked(detector: Detector, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
    """``detector.detect`` whose every failure (exception, wrong result type) is a
    :class:`DetectorFailedError`, so that callers fail closed on one exception type."""
    try:
        result = detector.detect(rgb)
    except Exception as exc:
        raise DetectorFailedError(f"detector raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, list) or not all(isinstance(d, Detection) for d in result):
        raise DetectorFailedError("detector returned something other than a list of Detection")
    return result


class CheckedDetector:
    """A :class:`Detector` that raises :class:`DetectorFailedError` for every failure."""

    def __init__(self, inner: Detector) -> None:
        self._inner = inner

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        return detect_checked(self._inner, rgb)


# --- images ---------------------------------------------------------------------------------


MAX_IMAGE_FRAMES: Final = 10_000
"""An animated or multi-page image with more frames is refused (convert it to a video)."""


@dataclass(frozen=True)
class Still:
    """A decoded image file: one frame, or every frame of an animation / multi-page file."""

    frames: tuple[npt.NDArray[np.uint8], ...]
    durations_ms: tuple[int, ...] = ()
    """Per-frame display time of an animation (empty for a single image)."""
    loop: int = 0

    @property
    def animated(self) -> bool:
        return len(self.frames) > 1


def load_still(path: Path) -> Still:
    """Decode an image file to RGB uint8 frames (EXIF orientation applied, alpha dropped). Every
    frame of an animated GIF/PNG/WebP or multi-page TIFF is decoded: none is silently left out.
    Raises :class:`InputFileError` if Pillow cannot decode it or it has too many frames."""
    try:
        with Image.open(path) as img:
            n = int(getattr(img, "n_frames", 1))
            if n > MAX_IMAGE_FRAMES:
                raise InputFileError(
                    f"animated image of {n} frames (more than {MAX_IMAGE_FRAMES}): convert it to "
                    "a video first (for example: ffmpeg -i INPUT out.mp4)"
                )
            frames, durations = [], []
            for page in ImageSequence.Iterator(img):
                page.load()
                frames.append(np.asarray(ImageOps.exif_transpose(page).convert("RGB")).copy())
                durations.append(int(page.info.get("duration", 100) or 100))
            loop = int(img.info.get("loop", 0) or 0)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise InputFileError(f"cannot decode image ({_reason(exc)})") from exc
    if not frames:
        raise InputFileError("cannot decode image (no frames)")
    if len(frames) == 1:
        return Still((frames[0],))
    return Still(tuple(frames), tuple(durations), loop)


def load_image(path: Path) -> npt.NDArray[np.uint8]:
    """The first frame of an image file as RGB uint8 (see :func:`load_still` for all frames)."""
    return load_still(path).frames[0]


def redact_image(
    detector: Detector,
    item: InputFile,
    out_dir: Path,
    config: PrivacyConfig,
    fmt: ImageFormat | None = None,
) -> FileResult:
    """Detect and redact one image (every frame of an animated one) and write it losslessly
    (PNG by default; an animation as an animated PNG / WebP with its timing). Never raises for
    a bad file or a failing detector: the result says what went wrong, and nothing is written in
    that case (one failed frame of an animation fails the whole file). Safe to call from several
    threads if ``detector`` is (see :class:`Serialized`)."""
    result = FileResult(item, kind="image")
    try:
        still = load_still(item.path)
    except InputFileError as exc:
        result.error = str(exc)
        return result
    result.frames_in = len(still.frames)
    ts = _mtime(item.path)
    redacted = []
    faces = 0
    for index, pixels in enumerate(still.frames):
        frame = Frame(pixels, index=index, ts=ts, mono=0.0, source=str(item.path))
        try:
            detections = detect_checked(detector, frame.pixels)
        except DetectorFailedError as exc:
            where = f" on frame {index + 1} of {len(still.frames)}" if still.animated else ""
            result.error = f"not written, fail closed{where}: {exc}"
            result.dropped = {type(exc).__name__: 1}
            return result
        tracked = [TrackedRegion(0, d.kind, d.box, 0) for d in detections]
        redacted.append(redact(frame, regions_to_redact(tracked, config), config.redaction))
        faces += sum(d.kind == "face" for d in detections)
    dst = output_path(out_dir, item, "image", fmt)
    try:
        if still.animated:
            write_animation(redacted, dst, still.durations_ms, still.loop, fmt)
        else:
            write_image(redacted[0], dst, fmt)
    except OSError as exc:
        result.error = f"cannot write {dst} ({_reason(exc)})"
        return result
    result.output = dst
    result.frames_out = len(redacted)
    result.regions = sum(len(r.regions) for r in redacted)
    result.faces = faces
    return result


# --- videos ---------------------------------------------------------------------------------


def open_video(path: Path) -> Any:
    """An opened ``cv2.VideoCapture``; raises :class:`InputFileError` if OpenCV cannot open it."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InputFileError("cannot open video (OpenCV found no decoder for it)")
    return cap


def redact_video(
    detector: Detector,
    item: InputFile,
    out_dir: Path,
    config: PrivacyConfig,
    progress: Progress | None = None,
    cap: Any = None,
) -> FileResult:
    """Redact every frame of a video through the pipeline (with tracker hold-over) into an mp4.

    Frames whose detection fails are dropped (counted in ``result.dropped``). Audio is not copied.
    The output is written as a hidden ``.part`` file and renamed when complete; on any failure it is
    removed. ``cap`` is an already opened ``cv2.VideoCapture`` (else the file is opened here).
    """
    import cv2

    progress = progress or NoProgress()
    result = FileResult(item, kind="video")
    try:
        cap = cap if cap is not None else open_video(item.path)
    except InputFileError as exc:
        result.error = str(exc)
        return result
    dst = output_path(out_dir, item, "video")
    tmp = dst.with_name(f".{dst.stem}.part{dst.suffix}")
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        if not (np.isfinite(fps) and 0 < fps <= 1000):
            logger.warning(
                "%s declares no usable frame rate; writing %s fps", item.path, DEFAULT_FPS
            )
            fps = DEFAULT_FPS
        declared = float(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        result.declared_frames = int(declared) if np.isfinite(declared) and declared > 0 else None
        progress.file_started(item, "video", result.declared_frames)
        index = 0

        def read_frame() -> Frame:
            nonlocal index
            ok, bgr = cap.read()
            if not ok or bgr is None:
                raise EndOfStream(f"{item.path}: end of video")
            progress.frame_done()
            rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            frame = Frame(rgb, index=index, ts=index / fps, mono=index / fps, source=str(item.path))
            index += 1
            return frame

        stats = PipelineStats()
        regions = faces = 0
        with VideoSink(tmp, fps) as sink:

            def write(processed: ProcessedFrame) -> None:
                nonlocal regions, faces
                sink.write(processed.redacted)
                regions += len(processed.redacted.regions)
                faces += sum(d.kind == "face" for d in processed.detections)

            Pipeline(read_frame, CheckedDetector(detector), write, config, stats).run()
        result.frames_in = stats.frames_in
        result.frames_out = sink.frames
        result.dropped = dict(stats.dropped)
        result.regions = regions
        result.faces = faces
        if stats.frames_in == 0:
            result.error = "cannot decode video (no frame could be read)"
        elif sink.frames == 0:
            result.error = (
                f"not written, fail closed: all {stats.frames_in} frames dropped "
                f"({_fmt_counts(result.dropped)})"
            )
        else:
            tmp.replace(dst)
            result.output = dst
    except (OSError, ValueError) as exc:
        result.error = f"cannot write {dst} ({_reason(exc)})"
    finally:
        cap.release()
        if result.output is None:
            with suppress(OSError):
                tmp.unlink()
    return result


# --- all files ------------------------------------------------------------------------------


def classify(item: InputFile) -> tuple[MediaKind | None, Any, str | None]:
    """Whether ``item`` is an image or a video: from its extension, or, for an unknown one, an
    image if Pillow decodes it, else a video if OpenCV opens it (that capture is returned, to be
    passed on to :func:`redact_video`). ``(None, None, reason)`` when it is neither."""
    kind = guess_kind(item.path)
    if kind is not None:
        return kind, None, None
    try:
        load_image(item.path)
        return "image", None, None
    except InputFileError as image_error:
        try:
            return "video", open_video(item.path), None
        except InputFileError:
            return None, None, f"not an image or a video ({image_error})"


class Serialized:
    """A :class:`Detector` that one thread at a time may call (a TFLite interpreter is not
    thread-safe); decoding, redaction and encoding of other images overlap with it."""

    def __init__(self, inner: Detector) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def detect(self, rgb: npt.NDArray[np.uint8]) -> list[Detection]:
        with self._lock:
            return self._inner.detect(rgb)


def default_jobs() -> int:
    """Images in flight at once: the CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def redact_files(
    detector: Detector,
    items: Sequence[InputFile],
    out_dir: Path,
    config: PrivacyConfig,
    progress: Progress | None = None,
    *,
    fmt: ImageFormat | None = None,
    jobs: int = 1,
) -> list[FileResult]:
    """Redact every item; one file's failure does not stop the others.

    Images are processed ``jobs`` at a time on threads: one decodes while another is in the
    detector (serialized) and a third encodes. Results and progress keep the input order, and
    every fail-closed rule of :func:`redact_image` holds per image. Videos run one at a time.

    A file found in a folder that is neither an image nor a video is ignored (noted in its result);
    named explicitly, it fails. Two inputs whose outputs would have the same path: the second one
    fails, so that nothing this run wrote is overwritten; an output never replaces its own input.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    progress = progress or NoProgress()
    results: list[FileResult] = []
    claimed: dict[Path, Path] = {}
    shared = Serialized(detector) if jobs > 1 else detector
    pending: deque[Future[FileResult]] = deque()

    def finish(future: Future[FileResult]) -> None:
        result = future.result()  # redact_image never raises for a file's own problems
        results.append(result)
        progress.file_finished(result)

    def finish_all(keep: int = 0) -> None:
        while len(pending) > keep:
            finish(pending.popleft())

    def done_now(result: FileResult) -> Future[FileResult]:
        future: Future[FileResult] = Future()
        future.set_result(result)
        return future

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="redact") as pool:
        for item in items:
            kind, cap, why_not = classify(item)
            result = FileResult(item, kind=kind)
            if kind is None:
                result.error = why_not if item.explicit else None
                result.ignored = not item.explicit
                pending.append(done_now(result))
                continue
            dst = output_path(out_dir, item, kind, fmt)
            if dst in claimed:
                result.error = f"its output {dst} is already claimed by {claimed[dst]}"
            elif dst.resolve() == item.path.resolve():
                result.error = f"its output {dst} would overwrite the input itself"
            elif kind == "image":
                claimed[dst] = item.path
                progress.file_started(item, "image", None)
                pending.append(pool.submit(redact_image, shared, item, out_dir, config, fmt))
                finish_all(keep=2 * jobs)  # bounded: at most 2 x jobs decoded images in memory
                continue
            else:
                finish_all()  # a video shows its own progress: the images before it are done
                claimed[dst] = item.path
                result = redact_video(detector, item, out_dir, config, progress, cap=cap)
                cap = None
            if cap is not None:
                cap.release()
            pending.append(done_now(result))
        finish_all()
    return results


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def _fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
