"""`camveil bench [--json] [--suite pipeline|envelope|anchor|reid|ingest|all] [--seconds S]
[--sizes ...] [--threads ...] [--rounds N] [--reid-modes ...] [--latency-events N]
[--latency-rate R] [--units N] [--events-per-unit N]`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agent.pipeline import PrivacyConfig
from camveil.cli.common import add_detector_arguments, detector_config, redaction_config
from camveil.cli.logs import progress_on
from contract.errors import ConfigError
from models import MODELS_DIR, verified_path
from tools.bench import (
    BenchCase,
    BenchSettings,
    CaseResult,
    cases,
    format_table,
    machine,
    parse_sizes,
    parse_threads,
    peak_rss_mb,
    run_case,
    run_cases,
)
from tools.bench_anchor import anchor, format_anchor
from tools.bench_envelope import bench_envelope
from tools.bench_frames import check_source
from tools.bench_ingest import bench_ingest, format_ingest
from tools.bench_reid import MODES, bench_reid, format_reid, parse_modes

EPILOG = """\
The pipeline suite runs the real pipeline (guarded detector, tracker, redaction, JPEG encoding of
every redacted frame) for each size and thread count, each in a fresh process so that the peak RSS
is that configuration's own. --source: 'auto' (a real photo tiled over the frame if scikit-image is
installed, else synthetic frames), 'photo', 'synthetic', the path of an image to tile, or of a video
or image folder to replay (looping, resized to each size).

The envelope suite measures seal and open per second, outbox enqueue + ack throughput with
durability on (one fsync per enqueued event), and event latency capture -> PUBACK at
--latency-rate events/s against a local mosquitto it starts with throw-away keys (needs the
mosquitto package; reported as unavailable without it).

The reid suite (only when asked for) measures the pipeline with the face observers off and on:
--reid-modes off (neither), reid (re-identification, with its person detector), match (enrolled
matching against a full 50-subject gallery), both (through the one shared embedder), every-frame
(re-identification embedding every face on every frame), reid-faces (reid without the person
detector). The configurations take turns, --rounds rounds of
--seconds each in a rotated order; reported: fps and process CPU per frame, per round and their
medians. Defaults for this suite: --sizes 1280x720 --threads 2 (tools/bench_reid.py).

The ingest suite (only when asked for: it provisions --units simulated units, about a minute for
500) measures the dashboard's ingest in separate processes against a local mosquitto with a
throw-away station: events_per_s verified, decrypted and stored by one process, lost and
duplicated, then the same with two processes on the shared subscription (tools/bench_ingest.py).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--suite",
        choices=("pipeline", "envelope", "anchor", "reid", "ingest", "all"),
        default="all",
        help="default: all (pipeline and envelope; anchor, reid and ingest run only when named)",
    )
    parser.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="anchor suite: a folder of images (e.g. ../shared/data/faces/detection/dev)",
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="anchor suite: only the first N images"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        metavar="N",
        help="anchor and reid suites: interleaved passes (anchor: over the images, the speedup "
        "is their median; reid: each configuration measured once per round) (default 3)",
    )
    parser.add_argument(
        "--reid-modes",
        default=",".join(MODES),
        help="reid suite: configurations, from off,reid,match,both,every-frame,reid-faces "
        f"(default {','.join(MODES)})",
    )
    parser.add_argument(
        "--no-process",
        action="store_true",
        help="anchor suite: skip the whole-process comparison (camveil redact vs deface CLI)",
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="measured seconds per configuration (default 5)"
    )
    parser.add_argument(
        "--sizes",
        help="frame sizes, WIDTHxHEIGHT,... (default 640x480,1280x720,1920x1080; reid suite: "
        "one size, default 1280x720)",
    )
    parser.add_argument(
        "--source",
        default="auto",
        help="auto, photo, synthetic, an image to tile, or a video / image folder to replay",
    )
    parser.add_argument("--warmup", type=int, default=3, help="frames before measuring (default 3)")
    parser.add_argument(
        "--latency-events",
        type=int,
        default=100,
        help="events for the capture -> PUBACK latency (default 100; 0 skips the broker)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=10.0,
        help="events per second for the latency measurement (default 10)",
    )
    parser.add_argument(
        "--units", type=int, default=500, help="ingest: simulated units (default 500)"
    )
    parser.add_argument(
        "--events-per-unit", type=int, default=20, help="ingest: events per unit (default 20)"
    )
    parser.add_argument(
        "--ingest-processes",
        default="1,2",
        help="ingest: a run per count of ingest processes (default 1,2)",
    )
    # internal: measure one WxH:threads case in this process and print it as one JSON line
    parser.add_argument("--_one", dest="one", help=argparse.SUPPRESS)
    add_detector_arguments(parser)
    # Our --threads (a list of counts to compare) replaces the detector group's single --threads.
    parser.conflict_handler = "resolve"  # inherited by groups made from now on
    parser.add_argument_group("cases").add_argument(
        "--threads",
        dest="thread_counts",
        help="interpreter thread counts to compare (default 1,2; reid suite: one count, default 2)",
    )


def settings_from(args: argparse.Namespace) -> BenchSettings:
    return BenchSettings(
        seconds=args.seconds,
        warmup_frames=args.warmup,
        source=args.source,
        detector=detector_config(replace_threads(args)),
        privacy=PrivacyConfig(redaction=redaction_config(args)),
    )


def replace_threads(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the single ``threads`` that :func:`detector_config` reads (each case sets
    its own)."""
    return argparse.Namespace(**{**vars(args), "threads": 1})


def run(args: argparse.Namespace) -> int:
    if args.one:
        return _run_one(args)
    settings = settings_from(args)
    report: dict[str, Any] = {"machine": machine()}
    results: list[CaseResult] = []
    if args.suite in ("pipeline", "all"):
        case_list = cases(
            parse_sizes(args.sizes or "640x480,1280x720,1920x1080"),
            parse_threads(args.thread_counts or "1,2"),
        )
        check_source(settings.source)
        verified_path(settings.detector.model, settings.detector.models_dir or MODELS_DIR)
        bar = tqdm(
            total=len(case_list),
            desc="bench",
            unit="case",
            file=sys.stderr,
            disable=not progress_on(),
        )

        def done(case: BenchCase, result: CaseResult) -> None:
            bar.set_postfix_str(f"{case.label}: {result.fps:.1f} fps")
            bar.update(1)

        try:
            results = run_cases(case_list, settings, on_case=done)
        finally:
            bar.close()
        report["pipeline"] = [r.to_dict() for r in results]
    envelope: dict[str, Any] | None = None
    if args.suite in ("envelope", "all"):
        print("bench: envelope ...", file=sys.stderr)
        if args.latency_events < 0 or not 0 < args.latency_rate <= 1000:
            raise ConfigError("bench: --latency-events >= 0 and --latency-rate in (0, 1000]")
        envelope = bench_envelope(
            args.seconds, latency_events=args.latency_events, latency_rate=args.latency_rate
        )
        report["envelope"] = envelope
    if args.suite == "anchor":
        report["anchor"] = _anchor(args)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(format_anchor(report["anchor"]))
        return 0
    if args.suite == "reid":
        report["reid"] = _reid(args, settings)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(format_reid(report["reid"]))
        return 0
    if args.suite == "ingest":
        if not 0 < args.units <= 5000 or not 0 < args.events_per_unit <= 10000:
            raise ConfigError("bench: --units 1..5000 and --events-per-unit 1..10000")
        try:
            counts = tuple(int(n) for n in args.ingest_processes.split(","))
        except ValueError:
            counts = ()
        if not counts or any(n not in (1, 2) for n in counts):
            raise ConfigError("bench: --ingest-processes is a list of 1 and/or 2, e.g. 1,2")
        report["ingest"] = bench_ingest(args.units, args.events_per_unit, processes=counts)
    if args.json:
        print(json.dumps(report, indent=2))
    elif "ingest" in report:
        print(format_ingest(report["ingest"]))
    else:
        info = report["machine"]
        print(
            f"machine: {info['cpus']} CPUs {info['machine']}, Python {info['python']}, "
            f"{info['tflite_runtime']} (XNNPACK: {_yes_no(info.get('xnnpack'))}), "
            f"load {info['load_1m']} (load: 1-minute load average at "
            "the start of each case; above the CPU count the numbers are pessimistic)"
        )
        print(format_table(results, envelope))
    return 0


def _anchor(args: argparse.Namespace) -> dict[str, Any]:
    if args.images is None:
        raise ConfigError(
            "bench --suite anchor needs --images DIR, a folder of images "
            "(for example ../shared/data/faces/detection/dev)"
        )
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"bench: --limit must be >= 1, got {args.limit}")
    if args.rounds < 1:
        raise ConfigError(f"bench: --rounds must be >= 1, got {args.rounds}")
    config = detector_config(replace_threads(args))
    passed = ["--model", config.model]
    if config.threshold is not None:
        passed += ["--threshold", str(config.threshold)]
    if config.small_threshold is not None:
        passed += ["--small-threshold", str(config.small_threshold)]
    if config.scale != 1.0:
        passed += ["--scale", str(config.scale)]
    if config.extra_scale:
        passed += ["--extra-scale", str(config.extra_scale)]
    if config.partner:
        passed += ["--partner", config.partner]
        passed += ["--partner-threshold", str(config.partner_threshold)]
    if config.persons:
        passed += ["--persons"]
    print(
        "bench: anchor (deface and camveil in turns on one core, then both whole processes) ...",
        file=sys.stderr,
    )
    return anchor(
        args.images,
        config,
        limit=args.limit,
        rounds=args.rounds,
        processes=not args.no_process,
        detector_args=passed,
    )


def _reid(args: argparse.Namespace, settings: BenchSettings) -> dict[str, Any]:
    sizes = parse_sizes(args.sizes or "1280x720")
    threads = parse_threads(args.thread_counts or "2")
    if len(sizes) != 1 or len(threads) != 1:
        raise ConfigError("bench --suite reid: give one --sizes and one --threads")
    ((width, height),) = sizes
    modes = parse_modes(args.reid_modes)
    check_source(settings.source)
    verified_path(settings.detector.model, settings.detector.models_dir or MODELS_DIR)
    print(
        f"bench: reid ({', '.join(modes)} taking turns, {args.rounds} round(s) of "
        f"{args.seconds:g} s each) ...",
        file=sys.stderr,
    )
    return bench_reid(
        width=width,
        height=height,
        detector=replace(settings.detector, threads=threads[0]),
        seconds=args.seconds,
        rounds=args.rounds,
        modes=modes,
        source=settings.source,
        warmup=args.warmup,
    )


def _run_one(args: argparse.Namespace) -> int:
    base = peak_rss_mb()
    size_text, _, threads_text = args.one.partition(":")
    ((width, height),) = parse_sizes(size_text)
    (threads,) = parse_threads(threads_text or "1")
    settings = settings_from(args)
    settings = replace(settings, detector=replace(settings.detector, threads=threads))
    result = run_case(BenchCase(width, height, threads), settings, base_rss_mb=base)
    print(json.dumps(result.to_dict()))
    return 0


def _yes_no(value: object) -> str:
    if value is None:
        return "unknown"
    return "yes" if value else "NO, reference kernels"
