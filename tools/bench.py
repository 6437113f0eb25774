"""`camveil bench`: speed and memory of the privacy pipeline, and of the envelope.

Pipeline suite: for each frame size and interpreter thread count, the real
:class:`~agent.pipeline.Pipeline` (the configured detector behind the same
:class:`~agent.vision.guard.GuardedDetector` as ``camveil run``, the tracker, redaction) runs for a
number of seconds, with a sink that JPEG-encodes every redacted frame
(:func:`agent.privacy.store.encode_jpeg`, timed as the stage ``encode``). Reported per case:
frames per second, p50/p99 latency of ``capture``, ``detect``, ``track``, ``redact`` and
``encode``, drops, and the process's peak RSS. :func:`run_cases` measures each case in a fresh
Python process, so that the peak RSS belongs to that case alone.

Frames: ``photo`` tiles a real photograph (scikit-image's astronaut, which must be installed) over
the frame and pans across it, so detection, redaction and JPEG see real content with several faces
(a live camera's capture is a buffer copy, which the ``capture`` stage measures here too); the
path of an image tiles that image instead; the path of a video or of an image folder replays it
through :mod:`hw.camera`'s replay camera (looping, resized to the case's size; ``capture`` then
includes decoding); ``synthetic`` uses :mod:`hw.camera`'s synthetic camera (flat shapes, no faces:
JPEG is faster on it than on real content). ``auto`` is ``photo`` when scikit-image is installed,
else ``synthetic``.

Envelope suite: :mod:`tools.bench_envelope` (seal/open per second, outbox throughput with
durability on, capture -> PUBACK latency against a local mosquitto).
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame
from agent.privacy.store import encode_jpeg
from agent.stats import PipelineStats
from agent.vision.detection import Detector
from agent.vision.factory import DetectorConfig, build_detector
from agent.vision.guard import GuardedDetector
from contract.errors import CamveilError, ConfigError
from tools.bench_frames import frame_reader, resolve_source

logger = logging.getLogger(__name__)

STAGES = ("capture", "detect", "track", "redact", "encode")
DEFAULT_SIZES = ((640, 480), (1280, 720), (1920, 1080))
DEFAULT_THREADS = (1, 2)


@dataclass(frozen=True)
class BenchCase:
    """One configuration: frame size and interpreter threads."""

    width: int
    height: int
    threads: int

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height} t{self.threads}"


@dataclass(frozen=True)
class BenchSettings:
    """What every case runs with."""

    seconds: float = 5.0
    """Measured seconds per case (after the warm-up)."""
    warmup_frames: int = 3
    """Frames processed before measuring (model and allocator warm-up)."""
    source: str = "auto"
    """``auto``, ``photo``, ``synthetic``, the path of an image to tile, or of a video or image
    folder to replay."""
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    """The detector; its ``threads`` is replaced by each case's."""
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    jpeg_quality: int = 85

    def __post_init__(self) -> None:
        if not 0 < self.seconds <= 3600:
            raise ConfigError(f"bench --seconds {self.seconds}: use a value in (0, 3600]")
        if self.warmup_frames < 0:
            raise ConfigError("bench warm-up frames must be >= 0")


@dataclass
class CaseResult:
    """The measurements of one case (JSON-ready through :meth:`to_dict`)."""

    size: str
    threads: int
    model: str
    source: str
    seconds: float
    frames: int
    fps: float
    dropped: dict[str, int]
    stages: dict[str, dict[str, float | None]]
    """Per stage: ``p50_ms``, ``p99_ms``, ``n``."""
    peak_rss_mb: float
    """Peak resident memory of the process that ran the case (ru_maxrss)."""
    base_rss_mb: float | None = None
    """Peak RSS before the detector was loaded and frames made (the interpreter and imports)."""
    subprocess: bool = False
    """Measured in a fresh process (peak RSS is this case's alone)."""
    load_1m: float | None = None
    """The machine's 1-minute load average when the case started: above the CPU count, other
    processes competed for the CPU and the numbers are pessimistic."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"640x480,1280x720"`` -> ``[(640, 480), (1280, 720)]``; ConfigError on a bad item."""
    sizes: list[tuple[int, int]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            w_text, h_text = item.lower().split("x")
            width, height = int(w_text), int(h_text)
        except ValueError:
            raise ConfigError(
                f"bench --sizes: {item!r} is not WIDTHxHEIGHT (e.g. 640x480)"
            ) from None
        if not (16 <= width <= 8192 and 16 <= height <= 8192) or width % 2 or height % 2:
            raise ConfigError(
                f"bench --sizes: {item!r} must be even numbers of pixels between 16 and 8192"
            )
        sizes.append((width, height))
    if not sizes:
        raise ConfigError("bench --sizes: give at least one size, e.g. 640x480")
    return sizes


def parse_threads(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; ConfigError on a bad item."""
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(
            f"bench --threads: {text!r} is not a list of numbers (e.g. 1,2)"
        ) from None
    if not threads or any(not 1 <= t <= 64 for t in threads):
        raise ConfigError(f"bench --threads: {text!r}: give thread counts between 1 and 64")
    return threads


def cases(sizes: Sequence[tuple[int, int]], threads: Sequence[int]) -> list[BenchCase]:
    return [BenchCase(w, h, t) for (w, h) in sizes for t in threads]


# --- one case -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import os
    import platform

    delegated: bool | None = None
    try:
        from hw.runtime import TFLiteRuntime, runtime_name
        from models import verified_path

        runtime = runtime_name()
        delegated = TFLiteRuntime(verified_path("centerface_int8")).load().delegated
    except CamveilError:
        runtime = "none"
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "tflite_runtime": runtime,
        "xnnpack": delegated,
        "load_1m": _load_1m(),
    }


def _load_1m() -> float | None:
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss`` is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024
    return round(kib * scale, 1)


def run_case(
    case: BenchCase,
    settings: BenchSettings,
    detector: Detector | None = None,
    *,
    base_rss_mb: float | None = None,
) -> CaseResult:
    """Measure one case in this process. ``detector``: use this one instead of building the
    configured model (its ``threads`` then is only a label)."""
    load_1m = _load_1m()
    source = resolve_source(settings.source)
    det_config = replace(settings.detector, threads=case.threads)
    inner = detector if detector is not None else build_detector(det_config)
    read, close_source = frame_reader(source, case.width, case.height)
    stats = PipelineStats()
    quality = settings.jpeg_quality

    def encode(processed: ProcessedFrame) -> None:
        t0 = time.perf_counter()
        encode_jpeg(processed.redacted, quality=quality)
        stats.time("encode", time.perf_counter() - t0)

    try:
        with GuardedDetector(inner, det_config.timeout) as guard:
            warm = Pipeline(read, guard, lambda _frame: None, settings.privacy, PipelineStats())
            for _ in range(settings.warmup_frames):
                warm.step()
            pipeline = Pipeline(read, guard, encode, settings.privacy, stats)
            start = time.perf_counter()
            deadline = start + settings.seconds
            while time.perf_counter() < deadline:
                pipeline.step()
            elapsed = time.perf_counter() - start
    finally:
        close_source()
    snap = stats.snapshot()
    latency: dict[str, dict[str, float | None]] = snap["latency"]  # type: ignore[assignment]
    stages = {name: latency.get(name, {"p50_ms": None, "p99_ms": None, "n": 0}) for name in STAGES}
    return CaseResult(
        size=f"{case.width}x{case.height}",
        threads=case.threads,
        model=det_config.model if detector is None else type(detector).__name__,
        source=source,
        seconds=round(elapsed, 3),
        frames=stats.frames_out,
        fps=round(stats.frames_out / elapsed, 2) if elapsed > 0 else 0.0,
        dropped=dict(stats.dropped),
        stages=stages,
        peak_rss_mb=peak_rss_mb(),
        base_rss_mb=base_rss_mb,
        load_1m=load_1m,
    )


# --- every case, each in a fresh process -----------------------------------------------------


def child_argv(case: BenchCase, settings: BenchSettings) -> list[str]:
    """The command line that measures ``case`` in a fresh process (``camveil bench --_one``)."""
    det = settings.detector
    red = settings.privacy.redaction
    argv = [
        sys.executable, "-m", "camveil", "bench",
        "--_one", f"{case.width}x{case.height}:{case.threads}",
        "--seconds", repr(settings.seconds),
        "--warmup", str(settings.warmup_frames),
        "--source", settings.source,
        "--model", det.model,
        "--scale", repr(det.scale),
        "--extra-scale", repr(det.extra_scale),
        "--partner", det.partner,
        "--partner-threshold", repr(det.partner_threshold),
        "--tile", str(det.tile),
        "--margin", repr(red.margin),
        "--fill", red.fill.value,
    ]  # fmt: skip
    if det.threshold is not None:
        argv += ["--threshold", repr(det.threshold)]
    if det.small_threshold is not None:
        argv += ["--small-threshold", repr(det.small_threshold)]
    if det.persons:
        argv += ["--persons"]
    return argv


def run_case_subprocess(case: BenchCase, settings: BenchSettings) -> CaseResult:
    """Measure ``case`` in a fresh Python process; its peak RSS is that case's alone."""
    argv = child_argv(case, settings)
    budget = settings.seconds + 120.0
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and module, no shell
            argv, capture_output=True, text=True, timeout=budget, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CamveilError(f"bench case {case.label} did not finish in {budget:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise CamveilError(f"bench case {case.label} failed (exit {done.returncode}):\n{tail}")
    try:
        raw = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise CamveilError(f"bench case {case.label} printed no result") from exc
    raw["subprocess"] = True
    return CaseResult(**raw)


def run_cases(
    case_list: Sequence[BenchCase],
    settings: BenchSettings,
    on_case: Callable[[BenchCase, CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Every case, each in its own process, in order."""
    results: list[CaseResult] = []
    for case in case_list:
        result = run_case_subprocess(case, settings)
        results.append(result)
        if on_case is not None:
            on_case(case, result)
    return results


# --- report -----------------------------------------------------------------------------------


def format_table(pipeline: Sequence[CaseResult], envelope: dict[str, Any] | None) -> str:
    """A readable report: one row per case, p50/p99 in ms per stage."""
    lines: list[str] = []
    if pipeline:
        first = pipeline[0]
        lines.append(f"pipeline: model {first.model}, source {first.source}, p50/p99 in ms")
        head = ["size", "thr", "fps", *STAGES, "drops", "peak RSS", "load"]
        rows = [head]
        for r in pipeline:
            cells = [r.size, str(r.threads), f"{r.fps:.1f}"]
            for stage in STAGES:
                s = r.stages.get(stage, {})
                cells.append(f"{_num(s.get('p50_ms'))}/{_num(s.get('p99_ms'))}")
            cells.append(str(sum(r.dropped.values())))
            cells.append(f"{r.peak_rss_mb:.0f} MiB")
            cells.append(_num(r.load_1m))
            rows.append(cells)
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        for row in rows:
            lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    if envelope is not None:
        from tools.bench_envelope import format_envelope

        if lines:
            lines.append("")
        lines.extend(format_envelope(envelope))
    return "\n".join(lines)


def _num(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
