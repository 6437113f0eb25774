"""`camveil bench --suite reid`: pipeline speed with the face observers off and on.

The same frames as the pipeline suite (:mod:`tools.bench_frames`: by default scikit-image's
astronaut tiled over the frame and panning, about six faces per frame at 1280x720), the real
detector behind the :class:`~agent.vision.guard.GuardedDetector`, the tracker and redaction, with
a sink that JPEG-encodes every redacted frame. The configurations (``--reid-modes``):

- ``off``: neither face observer;
- ``reid``: anonymous re-identification with the default ``[reid]`` settings (a new track is
  embedded once, then every 15 frames; the person detector on every 3rd frame);
- ``match``: enrolled matching with the default ``[enrolment]`` settings against a full
  jurisdiction-mode gallery (50 subjects x 5 random templates, so nobody in the frames matches
  and every track is tried again every 15 frames, as for passers-by);
- ``both``: both, through the one shared embedder;
- ``every-frame`` (only when named): re-identification embedding every face up to
  ``max_faces_per_frame`` on every frame, the worst case;
- ``reid-faces`` (only when named): ``reid`` without the person detector (``[reid] persons =
  false``), to see what counting people costs.

With an embedder on, the tracker's relinker listens to it, as in the daemon
(:mod:`agent.vision.relink`).

Each configuration has its own pipeline (tracker) and embedder, built once; the detector and the
frame source are shared. The configurations take turns: each round measures every configuration
for ``seconds``, in an order rotated by one per round, so that a load that comes and goes on a
shared machine weighs on all of them alike. A configuration's measurement ends when its
embedder has also finished the crops queued during it. Reported per configuration: frames per
second and the process's CPU time per frame (all threads: detector, pipeline, embedder) for
every round and their medians, the ``embed`` stage (per face, on the embedder's thread), drops,
and the machine's 1-minute load average before and after.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame
from agent.privacy.store import encode_jpeg
from agent.stats import PipelineStats
from agent.vision.embedding import DIMENSIONS
from agent.vision.embedworker import EmbedWorker
from agent.vision.factory import DetectorConfig, build_detector
from agent.vision.gallery import EnrolmentConfig, Gallery
from agent.vision.guard import GuardedDetector
from agent.vision.reid import ReidConfig, Reidentifier, open_reid
from agent.vision.relink import open_tracking
from agent.vision.verify import Verifier
from contract.envelope.keys import Identity
from contract.errors import ConfigError
from tools.bench_frames import frame_reader, resolve_source

MODES: Final = ("off", "reid", "match", "both")
"""The default configurations."""
ALL_MODES: Final = (*MODES, "every-frame", "reid-faces")
REID_MODES: Final = ("reid", "both", "every-frame", "reid-faces")
PURPOSE: Final = "benchmark of the face observers' cost"
GALLERY_SUBJECTS: Final = 50
GALLERY_TEMPLATES: Final = 5


def parse_modes(text: str) -> tuple[str, ...]:
    """``"off,both"`` -> ``("off", "both")``; ConfigError on an unknown or repeated name."""
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in ALL_MODES]
    if not modes or bad or len(set(modes)) != len(modes):
        raise ConfigError(
            f"bench --reid-modes: a list of distinct names from {', '.join(ALL_MODES)} "
            f"(got {text!r})"
        )
    return modes


def full_gallery(folder: Path, config: EnrolmentConfig) -> Gallery:
    """A throw-away gallery at the jurisdiction-mode cap, of random unit templates."""
    model = "00" * 32
    gallery = Gallery(folder / "gallery.sealed", Identity.generate("cv-bench-0001"), model)
    rng = np.random.default_rng(12)
    for i in range(GALLERY_SUBJECTS):
        t = rng.standard_normal((GALLERY_TEMPLATES, DIMENSIONS)).astype(np.float32)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        gallery.add(f"bench-{i:04d}", f"consent-{i:04d}", list(t), config, model)
    return gallery


@dataclass
class _Setup:
    mode: str
    stats: PipelineStats
    pipeline: Pipeline
    worker: EmbedWorker | None
    reid: Reidentifier | None
    fps: list[float]
    cpu_ms: list[float]
    frames: int = 0


def _setup(
    mode: str,
    read: Callable[[], Any],
    detector: GuardedDetector,
    gallery: Callable[[], Gallery],
    encode: Callable[[ProcessedFrame], None],
    stack: contextlib.ExitStack,
) -> _Setup:
    stats = PipelineStats()
    reid_config = ReidConfig(enabled=True, purpose=PURPOSE)
    if mode == "every-frame":
        reid_config = replace(reid_config, refresh_frames=1)
    if mode == "reid-faces":
        reid_config = replace(reid_config, persons=False)
    reid = open_reid(reid_config, stats) if mode in REID_MODES else None
    verifier = None
    if mode in ("match", "both"):
        enrolment = EnrolmentConfig(enabled=True, purpose=PURPOSE, legal_basis=PURPOSE)
        verifier = Verifier(enrolment, gallery(), lambda *_m: None, stats)
    privacy = PrivacyConfig()
    tracker, worker = open_tracking(privacy.tracker, (verifier, reid), stats)  # as the daemon
    if worker is not None:
        stack.enter_context(worker)
    pipeline = Pipeline(read, detector, encode, privacy, stats, faces=worker, tracker=tracker)
    return _Setup(mode, stats, pipeline, worker, reid, [], [])


def _measure(setup: _Setup, seconds: float, warmup: int) -> None:
    pipe, stats = setup.pipeline, setup.stats
    for _ in range(warmup):
        pipe.step()
    if setup.worker is not None:
        setup.worker.wait_idle(10.0)
    start = stats.frames_out
    t0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        pipe.step()
    elapsed = time.perf_counter() - t0
    if setup.worker is not None:
        setup.worker.wait_idle(10.0)  # the crops queued in this turn are this turn's cost
    cpu = time.process_time() - cpu0
    frames = stats.frames_out - start
    setup.frames += frames
    setup.fps.append(round(frames / elapsed, 2))
    setup.cpu_ms.append(round(cpu * 1000 / max(frames, 1), 1))


def bench_reid(
    *,
    width: int = 1280,
    height: int = 720,
    detector: DetectorConfig | None = None,
    seconds: float = 5.0,
    rounds: int = 3,
    modes: Sequence[str] = MODES,
    source: str = "auto",
    warmup: int = 3,
) -> dict[str, Any]:
    """Every configuration in ``modes`` measured ``rounds`` times, taking turns (module
    docstring); JSON-ready."""
    if rounds < 1 or not 0 < seconds <= 3600:
        raise ConfigError("bench --suite reid: --rounds >= 1 and --seconds in (0, 3600]")
    det = detector or DetectorConfig(threads=2)
    resolved = resolve_source(source)
    read, close = frame_reader(resolved, width, height)
    load_before = os.getloadavg()[0]
    gallery_cache: list[Gallery] = []

    def encode(processed: ProcessedFrame) -> None:
        encode_jpeg(processed.redacted, quality=85)

    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        stack.callback(close)

        def gallery() -> Gallery:
            if not gallery_cache:
                config = EnrolmentConfig(enabled=True, purpose=PURPOSE, legal_basis=PURPOSE)
                gallery_cache.append(full_gallery(Path(tmp), config))
            return gallery_cache[0]

        guard = stack.enter_context(GuardedDetector(build_detector(det), det.timeout))
        setups = [_setup(m, read, guard, gallery, encode, stack) for m in modes]
        for r in range(rounds):
            k = r % len(setups)
            for setup in setups[k:] + setups[:k]:
                _measure(setup, seconds, warmup)
        results = [_result(s) for s in setups]
        for g in gallery_cache:
            g.wipe()
    return {
        "size": f"{width}x{height}",
        "threads": det.threads,
        "model": det.model,
        "source": resolved,
        "seconds": seconds,
        "rounds": rounds,
        "load_1m_before": round(load_before, 2),
        "load_1m_after": round(os.getloadavg()[0], 2),
        "modes": results,
    }


def _result(setup: _Setup) -> dict[str, Any]:
    window = setup.reid.flush() if setup.reid is not None else None
    snap = setup.stats.snapshot()
    latency: dict[str, Any] = snap["latency"]  # type: ignore[assignment]
    return {
        "mode": setup.mode,
        "fps": statistics.median(setup.fps),
        "fps_rounds": setup.fps,
        "cpu_ms_per_frame": statistics.median(setup.cpu_ms),
        "cpu_ms_rounds": setup.cpu_ms,
        "frames": setup.frames,
        "detect_p50_ms": latency.get("detect", {}).get("p50_ms"),
        "embed_p50_ms": latency.get("embed", {}).get("p50_ms"),
        "embedded": latency.get("embed", {}).get("n", 0),
        "dropped": snap["dropped"],
        "visitors": None if window is None else window.unique,
    }


def format_reid(report: dict[str, Any]) -> str:
    """A readable table: one row per configuration."""
    lines = [
        f"reid suite: {report['size']}, detector {report['model']} on {report['threads']} "
        f"thread(s), source {report['source']}, {report['rounds']} round(s) x "
        f"{report['seconds']:g} s taking turns; load (1 min) {report['load_1m_before']} before, "
        f"{report['load_1m_after']} after",
        "medians over the rounds (each round in brackets); cpu = process CPU per frame, all "
        "threads",
    ]
    for m in report["modes"]:
        fps = " ".join(f"{v:.1f}" for v in m["fps_rounds"])
        cpu = " ".join(f"{v:.0f}" for v in m["cpu_ms_rounds"])
        embed = "-" if m["embed_p50_ms"] is None else f"{m['embed_p50_ms']:.1f} ms"
        drops = ", ".join(f"{k} {v}" for k, v in sorted(m["dropped"].items())) or "none"
        lines.append(
            f"  {m['mode']:<11} {m['fps']:5.1f} fps [{fps}]  cpu {m['cpu_ms_per_frame']:5.0f} "
            f"ms/frame [{cpu}]  faces embedded {m['embedded']} (p50 {embed})  drops: {drops}"
        )
    return "\n".join(lines)


__all__ = ["ALL_MODES", "MODES", "bench_reid", "format_reid", "full_gallery", "parse_modes"]
