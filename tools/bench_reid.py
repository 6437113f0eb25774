"""Pipeline speed with anonymous re-identification off and on (`python -m tools.bench_reid`).

The same frames as `camveil bench` (:mod:`tools.bench_frames`: by default scikit-image's
astronaut tiled over the frame and panning, several faces per frame), the real detector behind
the :class:`~agent.vision.guard.GuardedDetector`, the tracker and redaction, with the sink
JPEG-encoding every redacted frame as `camveil bench` does. Each mode runs for ``--seconds``
after a warm-up: ``off`` (no re-identifier), ``on`` (the default ``[reid]`` settings: a new track
is embedded once, then every 15 frames) and ``every-frame`` (``refresh_frames = 1``: every face up
to ``max_faces_per_frame`` is embedded on every frame, the worst case). The embedder's own worker
thread runs beside the pipeline; ``reid_overload`` counts crops it could not take in time. Besides
frames per second, the process's CPU time per frame (all threads) is reported: on a shared
machine it says more about the cost than the frame rate does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any

from agent.pipeline import Pipeline, PrivacyConfig, ProcessedFrame
from agent.privacy.store import encode_jpeg
from agent.stats import PipelineStats
from agent.vision.factory import DetectorConfig, build_detector
from agent.vision.guard import GuardedDetector
from agent.vision.reid import ReidConfig, open_reid
from tools.bench_frames import frame_reader, resolve_source

MODES = ("off", "on", "every-frame")


def run_mode(
    mode: str, width: int, height: int, threads: int, seconds: float, source: str = "auto"
) -> dict[str, Any]:
    """Frames per second and stage latencies of one mode."""
    detector = DetectorConfig(threads=threads)
    reid_config = ReidConfig(enabled=True, purpose="benchmark of re-identification cost")
    if mode == "every-frame":
        reid_config = replace(reid_config, refresh_frames=1)
    stats = PipelineStats()
    reid = open_reid(reid_config, stats) if mode != "off" else None
    read, close = frame_reader(resolve_source(source), width, height)

    def encode(processed: ProcessedFrame) -> None:
        encode_jpeg(processed.redacted, quality=85)

    try:
        with GuardedDetector(build_detector(detector), detector.timeout) as guard:
            if reid is not None:
                reid.__enter__()
            try:
                pipe = Pipeline(read, guard, encode, PrivacyConfig(), stats, reid=reid)
                for _ in range(5):
                    pipe.step()
                start_frames = stats.frames_out
                t0, cpu0 = time.perf_counter(), time.process_time()
                while time.perf_counter() - t0 < seconds:
                    pipe.step()
                elapsed = time.perf_counter() - t0
                cpu = time.process_time() - cpu0
                window = reid.flush() if reid is not None else None
            finally:
                if reid is not None:
                    reid.close()
    finally:
        close()
    snap = stats.snapshot()
    frames = stats.frames_out - start_frames
    return {
        "mode": mode,
        "size": f"{width}x{height}",
        "threads": threads,
        "fps": round(frames / elapsed, 2),
        "frames": frames,
        "cpu_ms_per_frame": round(cpu * 1000 / max(frames, 1), 1),
        "latency": snap["latency"],
        "dropped": snap["dropped"],
        "visitors": None if window is None else window.unique,
        "load_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_reid", description=__doc__)
    parser.add_argument("--size", default="1280x720", help="frame size WxH (default 1280x720)")
    parser.add_argument("--threads", type=int, default=2, help="detector interpreter threads")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per mode")
    parser.add_argument("--source", default="auto", help="as `camveil bench --source`")
    parser.add_argument("--modes", default=",".join(MODES), help="off,on,every-frame")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    results = [
        run_mode(m.strip(), width, height, args.threads, args.seconds, args.source)
        for m in args.modes.split(",")
    ]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            lat = r["latency"]
            reid_ms = lat.get("reid", {}).get("p50_ms")
            print(
                f"{r['mode']:<12} {r['size']} t{r['threads']}: {r['fps']:6.2f} fps  "
                f"cpu {r['cpu_ms_per_frame']} ms/frame  "
                f"detect p50 {lat['detect']['p50_ms']} ms  reid p50 {reid_ms} ms  "
                f"visitors {r['visitors']}  dropped {r['dropped']}  load {r['load_1m']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
