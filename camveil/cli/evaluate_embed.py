"""`camveil eval-embed --dataset DIR [--json] [--float-model PATH]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agent.vision.embedding import LANDMARK_MODEL, MODEL, EmbedderConfig, FaceEmbedder
from agent.vision.factory import DETECTOR_MODELS, DetectorConfig, build_detector
from contract.errors import InputFileError, ModelMissingError
from tools.evaluate_embed import aligned_crops, evaluate_model, format_report, read_pairs

DEFAULT_FLOAT = Path(".modelwork/mobilefacenet/mobilefacenet_float.tflite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="folder with pairs.tsv")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--float-model",
        type=Path,
        help="float MobileFaceNet TFLite to compare with (default: "
        f"{DEFAULT_FLOAT} if present; made by models/recipe/mobilefacenet.py, never shipped)",
    )
    parser.add_argument(
        "--detector", default="centerface_int8", choices=DETECTOR_MODELS, help="face detector"
    )
    parser.add_argument(
        "--flip", action="store_true", help="also embed the mirrored face and average (2x cost)"
    )
    parser.add_argument(
        "--pick",
        choices=["central", "largest"],
        default="central",
        help="which face of an image a pair is about (default: nearest the centre)",
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="only N pairs: the first N/2 of each kind"
    )
    parser.add_argument(
        "--all-pairs",
        action="store_true",
        help="also FAR/TAR over every pair of the LFW faces (how the reid and match "
        "thresholds were chosen)",
    )


def run(args: argparse.Namespace) -> int:
    from models import MODELS_DIR, verified_path

    pairs = read_pairs(args.dataset)
    if args.limit:  # half same-person, half different-person pairs, in file order
        same = [p for p in pairs if p.same][: (args.limit + 1) // 2]
        other = [p for p in pairs if not p.same][: args.limit // 2]
        pairs = same + other
        if not same or not other:
            raise InputFileError("--limit must keep at least one pair of each kind (use >= 2)")
    root = args.dataset if args.dataset.is_dir() else args.dataset.parent
    images = sorted({p.a for p in pairs} | {p.b for p in pairs})
    float_path = args.float_model
    if float_path is None and DEFAULT_FLOAT.is_file():
        float_path = DEFAULT_FLOAT
    if float_path is not None and not float_path.is_file():
        raise ModelMissingError(f"--float-model {float_path} does not exist")
    config = EmbedderConfig(num_threads=1, flip=args.flip)
    detector = build_detector(DetectorConfig(model=args.detector))
    tty = sys.stderr.isatty()

    def progress(desc: str) -> Any:
        return lambda items: tqdm(items, desc=desc, unit="img", file=sys.stderr, disable=not tty)

    crops = aligned_crops(detector, root, images, args.pick, progress("detect"))
    report: dict[str, Any] = {}
    models = {"int8": verified_path(MODEL, MODELS_DIR), "float": float_path}
    landmarks = verified_path(LANDMARK_MODEL, MODELS_DIR)
    for name, path in models.items():
        if path is None:
            report[name] = None
            continue
        embedder = FaceEmbedder(path, config, landmarks).load()
        report[name] = evaluate_model(
            embedder, pairs, crops, progress(f"embed {name}"), args.all_pairs
        )
        report[name]["model_mb"] = path.stat().st_size / 1e6
    missing = {n for n, c in crops.items() if c is None}
    report["dataset"] = {
        "pairs": len(pairs),
        "positives": sum(p.same for p in pairs),
        "negatives": sum(not p.same for p in pairs),
        "images": len(images),
        "no_face": len(missing),
        "pairs_with_missing_face": sum(p.a in missing or p.b in missing for p in pairs),
    }
    report["detector"] = args.detector
    report["alignment"] = f"5 landmarks ({LANDMARK_MODEL}), similarity transform"
    report["model"] = MODEL
    report["flip"] = args.flip
    report["pick"] = args.pick
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
