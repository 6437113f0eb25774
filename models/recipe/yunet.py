"""Rebuild ``models/yunet_int8.tflite`` from YuNet-n (libfacedetection.train's ONNX; the recipe).

Run in the model toolchain venv (``models/recipe/requirements.txt``, the same as CenterFace's),
from the repo root::

    python models/recipe/yunet.py --onnx PATH/yunet_n_dynamic.onnx   # model + manifest entry

and, in the project venv, ``python models/recipe/yunet.py --fixture`` writes the float model's
detections on the test photos (``tests/fixtures/yunet_float_reference.json``).

Source (not on PyPI: no wheel ships YuNet's weights, so the ONNX is a pinned input)
    GitHub repository ShiqiYu/libfacedetection.train, commit
    02246e79b1e976c83d1e135a85e0628120c93769 (2023-01-10), file ``onnx/yunet_n_dynamic.onnx``
    (322,906 bytes, sha256 checked below); obtain it with
    ``git show 02246e79b1e9:onnx/yunet_n_dynamic.onnx > yunet_n_dynamic.onnx`` in a clone.
    Licence: Apache-2.0 (the repository's LICENSE; OpenCV's model zoo ships the same YuNet
    weights, ``face_detection_yunet_2023mar``, under MIT). Trained on WIDER FACE train.

Steps
1. Check the ONNX's sha256.
2. Translate the graph op by op into a TensorFlow function in NHWC with a dynamic input
   ``[1, H, W, 3]`` (H, W multiples of 32), RGB 0..255. Exact rewrites on the way:
   - the first convolution's input channels are reversed, so the model takes RGB (YuNet was
     trained on BGR 0..255: same arithmetic, one fewer copy per frame);
   - ONNX's symmetric (1, 1) padding of the stride-2 convolution is an explicit PAD;
   - each 2x nearest-neighbour Resize becomes CONCAT of 4 copies + DepthToSpace(2) (identical,
     and XNNPACK delegates it at any input size);
   - per stride (8, 16, 32) the four heads (cls, obj, bbox, kps; each a 1x1 conv then a 3x3
     depthwise conv) become one 1x1 conv + one 3x3 depthwise conv with 6 output channels
     ``[cls_logit, obj_logit, dx, dy, log_w, log_h]``: the sigmoids are dropped (the decoder
     applies them) and so are the landmarks.
3. Convert to a float TFLite with TensorFlow's converter and quantize with ai-edge-quantizer:
   static int8 (per-channel int8 weights, per-tensor int8 activations) for the backbone and neck;
   the six head convolutions keep float activations (int8 weights), so the three outputs are
   float32. Calibration: the same PyPI photos as CenterFace (scikit-image wheel ``skimage/data``,
   face_recognition 1.3.0 sdist test images) at long sides 320 to 1600 px. The input range is
   pinned to 0..255 (int8 = pixel - 128).
4. Check the int8 model against the float ONNX on the calibration photos; write the manifest entry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import centerface as cfr  # shared recipe helpers: photos, float_tflite, tidy

logger = logging.getLogger("yunet-recipe")

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".modelwork" / "yunet"
OUT = REPO / "models" / "yunet_int8.tflite"
MANIFEST = REPO / "models" / "manifest.json"

SOURCE_REPO = "ShiqiYu/libfacedetection.train"
SOURCE_COMMIT = "02246e79b1e976c83d1e135a85e0628120c93769"
SOURCE_PATH = "onnx/yunet_n_dynamic.onnx"
ONNX_SHA256 = "104ee26c71d5c270ce79a6b3dced91c91013260d29a6bf18f9296c5b8c4c2b12"
STRIDES = (8, 16, 32)
HEAD_CHANNELS = ["cls_logit", "obj_logit", "dx", "dy", "log_w", "log_h"]
# head tensors per stride: (pointwise conv input, ONNX output names of cls, obj, bbox)
HEAD_NAMES = ("cls", "obj", "bbox")
CALIB_SIDES = "320,640,960,1280,1600"


def read_onnx(path: Path) -> bytes:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ONNX_SHA256:
        raise SystemExit(f"{path} has sha256 {digest}, expected {ONNX_SHA256} ({SOURCE_PATH})")
    logger.info("%s sha256 ok", path)
    return data


def onnx_to_tf(onnx_bytes: bytes) -> Any:
    """A tf.function over NHWC RGB input returning the fused heads per stride (see module doc)."""
    import onnx
    import tensorflow as tf
    from onnx import numpy_helper

    graph = onnx.load_from_string(onnx_bytes).graph
    consts = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    # ONNX output name -> the depthwise conv producing it, via Transpose/Reshape/Sigmoid
    head_dw: dict[str, Any] = {}
    for out in graph.output:
        node = producer[out.name]
        while node.op_type != "Conv":
            node = producer[node.input[0]]
        head_dw[out.name] = node
    head_nodes = {id(n) for n in head_dw.values()} | {
        id(producer[n.input[0]]) for n in head_dw.values()
    }

    def attrs(node: Any) -> dict[str, Any]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(a: np.ndarray) -> Any:
        return tf.constant(a.astype(np.float32))

    def conv(inp: Any, w: np.ndarray, b: np.ndarray, at: dict[str, Any], name: str) -> Any:
        group = int(at.get("group", 1))
        stride = int(at.get("strides", [1, 1])[0])
        pads = list(at.get("pads", [0, 0, 0, 0]))
        k = w.shape[2]
        if pads != [k // 2] * 4 or k not in (1, 3) or stride not in (1, 2):
            raise SystemExit(f"unsupported conv geometry in {name}: {at}")
        if stride == 2:  # ONNX pads (1, 1); TF's SAME would pad (0, 1)
            inp = tf.pad(inp, [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]])
            padding = "VALID"
        else:
            padding = "SAME" if k > 1 else "VALID"
        if group == 1:
            y = tf.nn.conv2d(inp, const(w.transpose(2, 3, 1, 0)), stride, padding)
        else:
            if group != w.shape[0] or w.shape[1] != 1:
                raise SystemExit(f"unsupported grouped conv {name}")
            y = tf.nn.depthwise_conv2d(
                inp, const(w.transpose(2, 3, 0, 1)), [1, stride, stride, 1], padding
            )
        return tf.nn.bias_add(y, const(b), name=name)

    def build(x: Any) -> Any:
        env: dict[str, Any] = {graph.input[0].name: x}
        for node in graph.node:
            op, at, out = node.op_type, attrs(node), node.output[0]
            if id(node) in head_nodes or op in ("Transpose", "Shape", "Gather", "Unsqueeze"):
                continue
            if op in ("Concat", "Reshape", "Sigmoid", "Constant"):
                continue  # head plumbing, rebuilt below
            if op == "Conv":
                w = consts[node.input[1]]
                b = consts[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0])
                if node.input[0] == graph.input[0].name:
                    w = w[:, ::-1]  # BGR -> RGB
                env[out] = conv(env[node.input[0]], w, b, at, node.name)
            elif op == "Relu":
                env[out] = tf.nn.relu(env[node.input[0]])
            elif op == "MaxPool":
                if at.get("kernel_shape") != [2, 2] or at.get("strides") != [2, 2]:
                    raise SystemExit(f"unsupported MaxPool {node.name}: {at}")
                env[out] = tf.nn.max_pool2d(env[node.input[0]], 2, 2, "VALID")
            elif op == "Resize":
                scales = consts.get(node.input[2])
                if scales is None or list(scales) != [1, 1, 2, 2] or at.get("mode") != b"nearest":
                    raise SystemExit(f"unsupported Resize {node.name}: {at}")
                t = env[node.input[0]]
                env[out] = tf.nn.depth_to_space(tf.concat([t, t, t, t], axis=-1), 2)
            elif op == "Add":
                env[out] = tf.add(env[node.input[0]], env[node.input[1]])
            else:
                raise SystemExit(f"unsupported op {op} in {node.name}")
        outs = {}
        for stride in STRIDES:
            dws = [head_dw[f"{h}_{stride}"] for h in HEAD_NAMES]
            pws = [producer[d.input[0]] for d in dws]
            src = {p.input[0] for p in pws}
            if len(src) != 1:
                raise SystemExit(f"stride {stride} heads read different tensors: {src}")
            pw_w = np.concatenate([consts[p.input[1]] for p in pws], 0)  # [6, 64, 1, 1]
            pw_b = np.concatenate([consts[p.input[2]] for p in pws], 0)
            dw_w = np.concatenate([consts[d.input[1]] for d in dws], 0)  # [6, 1, 3, 3]
            dw_b = np.concatenate([consts[d.input[2]] for d in dws], 0)
            y = conv(env[src.pop()], pw_w, pw_b, {}, f"head_pw_{stride}")
            y = conv(y, dw_w, dw_b, {"group": 6, "pads": [1, 1, 1, 1]}, f"head_dw_{stride}")
            outs[f"stride{stride}"] = tf.identity(y, name=f"stride{stride}")
        return outs

    spec = tf.TensorSpec([1, None, None, 3], tf.float32, name="input")
    return tf.function(build, input_signature=[spec], autograph=False)


def run_onnx(onnx_bytes: bytes, x: np.ndarray) -> dict[int, np.ndarray]:
    """Float ONNX reference in the fused layout: stride -> [1, h, w, 6] with logits."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_bytes, opts)
    names = [f"{h}_{s}" for s in STRIDES for h in HEAD_NAMES]
    outs = dict(
        zip(names, sess.run(names, {"input": x[..., ::-1].transpose(0, 3, 1, 2)}), strict=True)
    )
    h, w = x.shape[1:3]
    res = {}
    for s in STRIDES:
        cls = np.clip(outs[f"cls_{s}"][0, :, 0], 1e-7, 1 - 1e-7)
        obj = np.clip(outs[f"obj_{s}"][0, :, 0], 1e-7, 1 - 1e-7)
        logit = np.stack([np.log(cls / (1 - cls)), np.log(obj / (1 - obj))], 1)
        res[s] = np.concatenate([logit, outs[f"bbox_{s}"][0]], 1).reshape(1, h // s, w // s, 6)
    return res


def run_tflite(model: Path, x: np.ndarray) -> dict[int, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model), num_threads=1)
    it.resize_tensor_input(it.get_input_details()[0]["index"], list(x.shape), strict=False)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    if inp["dtype"] == np.int8:
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    it.set_tensor(inp["index"], x)
    it.invoke()
    res = {}
    for out in it.get_output_details():
        y = np.asarray(it.get_tensor(out["index"]))
        res[x.shape[1] // y.shape[1]] = y.astype(np.float32)
    return res


def quantize(float_model: Path, calib: list[np.ndarray], out: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer

    qt = quantizer.Quantizer(str(float_model))
    qt.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
    )
    for regex in (".*head_pw.*", ".*head_dw.*", ".*PartitionedCall.*"):
        qt.add_weight_only_config(
            regex=regex, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=8
        )
    it = Interpreter(model_path=str(float_model))
    sigs = it.get_signature_list()
    key = next(iter(sigs))
    in_key = sigs[key]["inputs"][0]
    qsvs = qt.calibrate({key: [{in_key: x} for x in calib]}, num_threads=2)
    in_name = str(it.get_input_details()[0]["name"])
    lo, hi = (np.asarray(qsvs[in_name][k]).copy() for k in ("min", "max"))
    for name, q in qsvs.items():  # the input and the PAD that shares its range: 0..255
        if np.allclose(q["min"], lo) and np.allclose(q["max"], hi):
            q["min"] = np.zeros_like(np.asarray(q["min"]))
            q["max"] = np.full_like(np.asarray(q["max"]), 255.0)
            logger.info("pinned %s to 0..255", name)
    result = qt.quantize(qsvs)
    out.write_bytes(cfr.tidy(bytes(result.quantized_model)))


def compare(label: str, model: Path, onnx_bytes: bytes, photos: list[np.ndarray]) -> float:
    """Largest |score diff| (score = sqrt(sigmoid(cls) * sigmoid(obj))) vs the float ONNX."""
    worst = 0.0
    for rgb in photos:
        x = cfr.to_input(rgb, 640)
        ref, got = run_onnx(onnx_bytes, x), run_tflite(model, x)
        for s in STRIDES:
            a = np.sqrt(1 / (1 + np.exp(-ref[s][..., 0])) / (1 + np.exp(-ref[s][..., 1])))
            b = np.sqrt(1 / (1 + np.exp(-got[s][..., 0])) / (1 + np.exp(-got[s][..., 1])))
            worst = max(worst, float(np.abs(a - b).max()))
    logger.info("%s vs float ONNX: max score diff %.4f", label, worst)
    return worst


def write_manifest(out: Path, quant_note: str) -> None:
    from models import sha256_file  # type: ignore[import-not-found]

    raw = json.loads(MANIFEST.read_text(encoding="utf-8"))
    raw["models"]["yunet_int8"] = {
        "file": out.name,
        "sha256": sha256_file(out),
        "inputs": [
            {
                "name": "input",
                "shape": [1, "H", "W", 3],
                "dtype": "int8",
                "quantization": {"scale": 1.0, "zero_point": -128},
                "layout": "NHWC RGB; int8 = pixel (0..255) - 128; H, W multiples of 32 "
                "(pad bottom/right with black), resizable at run time",
            }
        ],
        "outputs": [
            {
                "name": f"stride{s}",
                "shape": [1, f"H/{s}", f"W/{s}", 6],
                "dtype": "float32",
                "channels": HEAD_CHANNELS,
            }
            for s in STRIDES
        ],
        "decode": "score = sqrt(sigmoid(cls_logit) * sigmoid(obj_logit)); cell (i, j) of the "
        "stride-s output: centre x = (j + dx) * s, y = (i + dy) * s; size w = exp(log_w) * s, "
        "h = exp(log_h) * s (input pixels)",
        "provenance": {
            "repository": SOURCE_REPO,
            "commit": SOURCE_COMMIT,
            "path": SOURCE_PATH,
            "sha256": ONNX_SHA256,
            "origin": "YuNet-n (libfacedetection, Shiqi Yu et al.), trained on WIDER FACE; "
            "the same weights as OpenCV's face_detection_yunet_2023mar",
        },
        "licence": {
            "model": "Apache-2.0 (libfacedetection.train LICENSE); OpenCV model zoo: MIT",
        },
        "recipe": "models/recipe/yunet.py (pins: models/recipe/requirements.txt)",
        "quantization": quant_note,
    }
    MANIFEST.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    logger.info("manifest entry yunet_int8 written")


FIXTURE = REPO / "tests" / "fixtures" / "yunet_float_reference.json"
FIXTURE_PHOTOS = ("astronaut", "camera", "coffee", "obama", "biden")


def write_fixture(float_model: Path) -> None:
    """Expected detections of the float model (same decoder) on PyPI photos, for the tests.

    Runs in the project venv (needs scikit-image for ``tests.photos``); the float TFLite equals
    the ONNX (checked by the build), so these are the float YuNet's detections.
    """
    from dataclasses import asdict

    from agent.vision.yunet import YuNetConfig, YuNetDetector
    from tests.photos import photo

    config = YuNetConfig(score_threshold=0.3)
    det = YuNetDetector(float_model, config).load()
    photos = {}
    for name in FIXTURE_PHOTOS:
        img = photo(name)
        photos[name] = {
            "shape": list(img.shape),
            "detections": [
                {
                    "box": [round(v, 1) for v in (d.box.x0, d.box.y0, d.box.x1, d.box.y1)],
                    "score": round(d.score, 4),
                }
                for d in det.detect(img)
            ],
        }
    data = {
        "model": f"{SOURCE_REPO}@{SOURCE_COMMIT} {SOURCE_PATH} sha256 {ONNX_SHA256} "
        "(float, as TFLite)",
        "decoder": "agent.vision.yunet.YuNetDetector",
        "config": asdict(config),
        "photos": photos,
    }
    FIXTURE.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    logger.info("wrote %s", FIXTURE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, help=f"{SOURCE_PATH} at {SOURCE_COMMIT}")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-manifest", action="store_true")
    ap.add_argument("--calib-sides", default=CALIB_SIDES, help="long sides of calibration inputs")
    ap.add_argument(
        "--fixture",
        action="store_true",
        help="write tests/fixtures/yunet_float_reference.json from the float TFLite "
        "(run in the project venv after a build)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    sys.path.insert(0, str(REPO))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.fixture:
        write_fixture(args.work / "yunet_float.tflite")
        return
    if args.onnx is None:
        ap.error("--onnx PATH is required to build")

    onnx_bytes = read_onnx(args.onnx)
    photos = cfr.calibration_photos(args.work)
    sides = [int(v) for v in args.calib_sides.split(",")]
    calib = [cfr.to_input(p, side) for p in photos for side in sides]
    float_path = args.work / "yunet_float.tflite"
    float_path.write_bytes(cfr.float_tflite(onnx_to_tf(onnx_bytes)))
    compare("float tflite", float_path, onnx_bytes, photos)
    quantize(float_path, calib, args.out)
    worst = compare("int8 tflite", args.out, onnx_bytes, photos)
    note = (
        "ai-edge-quantizer static int8 (per-channel int8 weights, per-tensor int8 activations) "
        "for the backbone and neck; the six fused head convolutions keep float activations "
        f"(int8 weights). Calibrated on {len(calib)} inputs: skimage/data photos "
        f"({cfr.SKIMAGE} wheel) and {cfr.FACE_RECOGNITION} tests/test_images, each at long side "
        f"{'/'.join(map(str, sides))}. Max |score diff| vs float ONNX on those photos "
        f"{worst:.3f}. Not byte-reproducible: check a rebuild with `make eval`."
    )
    if not args.no_manifest:
        write_manifest(args.out, note)
    logger.info("wrote %s (%d bytes)", args.out, args.out.stat().st_size)


if __name__ == "__main__":
    main()
