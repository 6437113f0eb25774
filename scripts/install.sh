#!/usr/bin/env bash
# Install camveil on a unit from this offline bundle (no network needed). Idempotent.
#
#   ./install.sh [--root DIR] [--no-systemd] [--python PY]
#
#   --root DIR     lay everything out under DIR (an image being built, or a test): the files are
#                  written, nothing is created system-wide (no user, no chown, no systemctl);
#                  systemd-sysusers and systemd-tmpfiles apply the snippets at the image's boot.
#   --no-systemd   write the units but do not call systemctl (no daemon-reload, no enable).
#   --python PY    the interpreter for the venv (default python3); must be the bundle's version.
#
# Steps: check MANIFEST.sha256 (refuse a damaged or altered bundle); the camveil system user
# (systemd-sysusers with the bundled sysusers.d file); /opt/camveil, /etc/camveil (the config
# template only when there is no camveil.toml yet: an existing config is never overwritten),
# /var/lib/camveil; the venv /opt/camveil/venv from the bundled wheels only (pip --no-index;
# --system-site-packages when the system python has picamera2, as on Raspberry Pi OS, or, on a
# Jetson, PyGObject with GStreamer or an OpenCV built with GStreamer); the units in
# /etc/systemd/system, on a Jetson with the drop-in camveil-agent.service.d/jetson.conf (the
# NVIDIA device nodes and nvargus-daemon's socket); systemctl enable. A step that has nothing to
# change changes nothing.
set -euo pipefail
# the service user reads the venv, units and config: never inherit a umask like 077
umask 022

BUNDLE=$(cd "$(dirname "$0")" && pwd)
ROOT=""
SYSTEMD=1
PY=python3

say() { echo "install: $*"; }
die() {
  echo "install: error: $*" >&2
  exit 1
}
usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while (($#)); do
  case "$1" in
    --root) ROOT=${2:?--root needs a directory} && shift ;;
    --no-systemd) SYSTEMD=0 ;;
    --python) PY=${2:?--python needs an interpreter} && shift ;;
    -h | --help) usage 0 ;;
    *) echo "install: unknown argument $1" >&2 && usage 2 ;;
  esac
  shift
done
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd)
  [ "$ROOT" != / ] || ROOT=""
fi
[ -n "$ROOT" ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo ./install.sh), or use --root DIR"
# the venv and pip see only the interpreter's own paths (a PYTHONPATH would make pip skip wheels)
unset PYTHONPATH PYTHONHOME PYTHONUSERBASE PYTHONSTARTUP

# --- 1. the bundle is complete and unaltered: every file listed, nothing unlisted
[ -f "$BUNDLE/MANIFEST.sha256" ] || die "$BUNDLE/MANIFEST.sha256 missing: not a camveil bundle"
cd "$BUNDLE"
if ! bad=$(sha256sum --strict --quiet -c MANIFEST.sha256 2>&1); then
  die "bundle checksum mismatch, refusing to install (copy the bundle again and compare the
tarball's sha256 with the one published beside it):
$bad"
fi
unlisted=$(comm -13 <(cut -d' ' -f3- MANIFEST.sha256 | LC_ALL=C sort) \
  <(find . -type f ! -name MANIFEST.sha256 -printf '%P\n' | LC_ALL=C sort))
[ -z "$unlisted" ] || die "files not in MANIFEST.sha256, refusing to install: $unlisted"
info() { sed -n "s/^$1=//p" BUNDLE_INFO; }
VERSION=$(info version)
ARCH=$(info arch)
PYVER=$(info python)
say "bundle camveil $VERSION for $ARCH, CPython $PYVER: checksums ok"

# --- the board: an NVIDIA Jetson (L4T) gets the GStreamer camera's system modules and a drop-in
JETSON=""
if [ -f "$ROOT/etc/nv_tegra_release" ]; then
  JETSON=$(head -n1 "$ROOT/etc/nv_tegra_release" | sed 's/^# *//')
elif grep -qs "NVIDIA Jetson" "$ROOT/proc/device-tree/model"; then
  JETSON=$(tr -d '\0' <"$ROOT/proc/device-tree/model")
fi
if [ -n "$JETSON" ]; then
  say "NVIDIA Jetson: $JETSON"
  # "R36 (release), REVISION: 4.0, ..." is JetPack 6; R35 is JetPack 5 (Ubuntu 20.04, Python 3.8)
  l4t=$(sed -n 's/^R\([0-9][0-9]*\) .*/\1/p' <<<"$JETSON")
  if [ -n "$l4t" ] && [ "$l4t" -lt 36 ]; then
    say "WARNING: L4T R$l4t is JetPack 5 or older, whose Python 3.8 is below camveil's 3.10:"
    say "  JetPack 6 (L4T R36, Ubuntu 22.04, Python 3.10) is the supported Jetson release"
  fi
fi

OPT=$ROOT/opt/camveil
ETC=$ROOT/etc/camveil
STATE=$ROOT/var/lib/camveil
UNITDIR=$ROOT/etc/systemd/system
VENV=$OPT/venv
UNITS=(camveil-gadget-serial.service camveil-provision.service camveil-agent.service
  camveil-agent.path)
CHANGED_VENV=0

# copy a file only when its content or mode differs, so a second run touches nothing
put() { # put MODE SRC DEST
  local mode=$1 src=$2 dest=$3
  if [ -f "$dest" ] && [ "$(stat -c %a "$dest")" = "${mode#0}" ] && cmp -s "$src" "$dest"; then
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  install -m "$mode" "$src" "$dest.camveil-new"
  mv -f "$dest.camveil-new" "$dest"
  say "wrote ${dest#"$ROOT"}"
}

# --- 2. the system user (from the bundled sysusers.d file) and the directories
put 0644 systemd/sysusers.d/camveil.conf "$ROOT/etc/sysusers.d/camveil.conf"
put 0644 systemd/tmpfiles.d/camveil.conf "$ROOT/etc/tmpfiles.d/camveil.conf"
if [ -n "$ROOT" ]; then
  say "--root: not creating the camveil user here; systemd-sysusers creates it at the image's boot"
elif getent passwd camveil >/dev/null && id -nG camveil | grep -qw video &&
  id -nG camveil | grep -qw dialout; then
  :
elif command -v systemd-sysusers >/dev/null; then
  systemd-sysusers /etc/sysusers.d/camveil.conf
  say "system user camveil created (systemd-sysusers)"
else
  getent passwd camveil >/dev/null ||
    useradd --system --home-dir /var/lib/camveil --no-create-home --shell /usr/sbin/nologin \
      --comment "camveil camera agent" camveil
  for g in video dialout; do getent group "$g" >/dev/null && usermod -aG "$g" camveil; done
  say "system user camveil created (useradd; no systemd-sysusers on this system)"
fi

# mode and owner of the state directory as the tmpfiles.d snippet says (the units agree)
read -r _ _ STATE_MODE STATE_USER STATE_GROUP _ < <(grep -E '^d[[:space:]]+/var/lib/camveil[[:space:]]' \
  systemd/tmpfiles.d/camveil.conf)
[ -n "${STATE_MODE:-}" ] || die "systemd/tmpfiles.d/camveil.conf has no line for /var/lib/camveil"
mkdir -p "$OPT" "$ETC" "$STATE" "$UNITDIR"
chmod 0755 "$OPT" "$ETC"
chmod "$STATE_MODE" "$STATE"
if [ -z "$ROOT" ]; then
  chown root:root "$OPT" "$ETC"
  chown "$STATE_USER:$STATE_GROUP" "$STATE"
fi

# the config: the template only when there is none; an existing camveil.toml is the operator's
put 0644 config/camveil.toml.example "$ETC/camveil.toml.example"
if [ -e "$ETC/camveil.toml" ]; then
  say "${ETC#"$ROOT"}/camveil.toml exists: kept as it is (the new template is camveil.toml.example)"
else
  # 0640 root:camveil: it may come to hold an IP camera's password (tmpfiles.d keeps it so)
  put 0640 config/camveil.toml.example "$ETC/camveil.toml"
  [ -n "$ROOT" ] || chgrp "$STATE_GROUP" "$ETC/camveil.toml"
  say "${ETC#"$ROOT"}/camveil.toml: nothing to edit for a first boot (provisioning sets the camera" \
    "and MQTT); write keys there to override the station's"
fi

# --- 3. the venv, from the bundled wheels only
# venv_step sets WHY and returns 0 (done), 1 (error) or 2 (this python cannot run the bundle).
# Every command checks its own status: errexit does not apply inside a function called with ||.
WHY=""
# the probes for the GStreamer camera's modules, as hw/camera/gstreamer.py imports them
GI_GST_PROBE='import gi; gi.require_version("Gst", "1.0"); from gi.repository import Gst; Gst.init(None)'
CV2_GST_PROBE='import sys, cv2
sys.exit(not any(l.strip().startswith("GStreamer:") and "YES" in l.split(":", 1)[1]
                 for l in cv2.getBuildInformation().splitlines()))'
GST_PACKAGES="sudo apt install python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0,
  then run install.sh again (docs/INSTALL.md, Jetson)"
jetson_venv_check() {
  local out err
  err=$(mktemp)
  if out=$("$VENV/bin/python" -c "$GI_GST_PROBE
print(Gst.version_string(), bool(Gst.ElementFactory.find(\"nvarguscamerasrc\")))" 2>"$err"); then
    say "camera kind \"gstreamer\": the venv reads frames through PyGObject (${out% *})"
    [ "${out##* }" = True ] ||
      say "WARNING: no GStreamer element nvarguscamerasrc here (JetPack's nvidia-l4t-gstreamer)"
  elif "$VENV/bin/python" -c "$CV2_GST_PROBE" >/dev/null 2>&1; then
    say "camera kind \"gstreamer\": the venv reads frames through OpenCV's GStreamer backend"
  else
    say "WARNING: the venv has neither PyGObject with GStreamer nor an OpenCV with GStreamer"
    say "  (its opencv-python-headless has none), so camera kind \"gstreamer\" will fail:"
    say "  $(tail -n1 "$err")"
    say "  $GST_PACKAGES"
  fi
  rm -f "$err"
}
venv_step() {
  local stamp want_ssp=false have_ssp pyver pyreal machine glibc need pipwhl err
  stamp=$(sha256sum MANIFEST.sha256 | cut -d' ' -f1)
  command -v "$PY" >/dev/null || {
    WHY="$PY not found: install Python $PYVER (apt install python3) or pass --python"
    return 1
  }
  pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || {
    WHY="$PY does not run"
    return 1
  }
  machine=$("$PY" -c 'import platform; print(platform.machine())')
  if [ "$machine" != "$ARCH" ] || [ "$pyver" != "$PYVER" ]; then
    WHY="this bundle is for $ARCH with CPython $PYVER; $PY is CPython $pyver on $machine"
    return 2
  fi
  # the venv links to this interpreter; the units run with ProtectHome=yes as user camveil
  pyreal=$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')
  case "$pyreal" in
    /root/* | /home/* | /run/user/*)
      if [ -z "$ROOT" ]; then
        WHY="$PY is $pyreal, which the service (ProtectHome=yes, user camveil) cannot run: use the system's python (--python /usr/bin/python3)"
        return 1
      fi
      say "warning: $PY is $pyreal; the service (ProtectHome=yes) could not run a venv made from it"
      ;;
  esac
  need=$(info glibc)
  glibc=$("$PY" -c 'import os; print(os.confstr("CS_GNU_LIBC_VERSION").split()[-1])' || echo 0)
  if [ "$(printf '%s\n%s\n' "$need" "$glibc" | sort -V | head -n1)" != "$need" ]; then
    WHY="the bundled wheels need glibc >= $need; this system has $glibc"
    return 2
  fi
  # Raspberry Pi OS: picamera2/libcamera come from the system (apt), so the venv must see them
  if "$PY" -c "import picamera2" >/dev/null 2>&1; then want_ssp=true; fi
  # a Jetson: the GStreamer camera needs the system's PyGObject (python3-gi) or its OpenCV
  if [ -n "$JETSON" ]; then
    if "$PY" -c "$GI_GST_PROBE" >/dev/null 2>&1; then
      want_ssp=true
      say "the system python has PyGObject with GStreamer (for camera kind \"gstreamer\")"
    elif "$PY" -c "$CV2_GST_PROBE" >/dev/null 2>&1; then
      want_ssp=true
      say "the system python has an OpenCV built with GStreamer"
    else
      say "WARNING: the system python has neither PyGObject with GStreamer nor an OpenCV with"
      say "  GStreamer, so camera kind \"gstreamer\" (nvarguscamerasrc) will fail: $GST_PACKAGES"
    fi
  fi
  if [ -x "$VENV/bin/python" ]; then
    have_ssp=$(sed -n 's/^include-system-site-packages *= *//p' "$VENV/pyvenv.cfg")
    if [ "$have_ssp" != "$want_ssp" ] || [ "$("$VENV/bin/python" -c \
      'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$PYVER" ]; then
      say "the venv does not match (CPython $PYVER, system site packages $want_ssp): recreating it"
      rm -rf "$VENV"
    elif [ "$(cat "$VENV/.camveil-bundle" 2>/dev/null)" = "$stamp" ] &&
      "$VENV/bin/camveil" --version >/dev/null 2>&1; then
      say "venv ${VENV#"$ROOT"} already holds this bundle ($("$VENV/bin/camveil" --version))"
      return 0
    fi
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    # --without-pip: no ensurepip needed (Debian's python3-venv); pip comes from the bundle
    local -a ssp=()
    [ "$want_ssp" = false ] || ssp=(--system-site-packages)
    "$PY" -m venv --without-pip "${ssp[@]}" "$VENV" || {
      WHY="$PY -m venv $VENV failed"
      return 1
    }
    say "created venv ${VENV#"$ROOT"} (system site packages: $want_ssp)"
  fi
  local -a pipwhls=("$BUNDLE"/wheels/pip-*.whl)
  pipwhl=${pipwhls[0]}
  [ -f "$pipwhl" ] || {
    WHY="no pip wheel in the bundle"
    return 1
  }
  # the bundle only: no index, and neither this machine's pip config nor its PIP_* variables
  local -a pipcmd=(env)
  while IFS= read -r var; do pipcmd+=(-u "$var"); done < <(env | sed -n 's/^\(PIP_[A-Z_]*\)=.*/\1/p')
  pipcmd+=(PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" "$pipwhl/pip"
    --disable-pip-version-check --no-cache-dir)
  "${pipcmd[@]}" install -q --no-index --find-links "$BUNDLE/wheels" \
    -r "$BUNDLE/requirements.lock" || {
    WHY="pip install from the bundled wheels failed (see above)"
    return 1
  }
  # the same version number may be a rebuilt wheel: put exactly this bundle's camveil in place
  "${pipcmd[@]}" install -q --no-index --no-deps --force-reinstall "$BUNDLE"/wheels/camveil-*.whl || {
    WHY="pip install of the camveil wheel failed (see above)"
    return 1
  }
  "$VENV/bin/camveil" --version >/dev/null || {
    WHY="the installed camveil does not start: ${VENV#"$ROOT"}/bin/camveil --version"
    return 1
  }
  # a Jetson: what the GStreamer camera (hw/camera/gstreamer.py) will find in the venv. The
  # bundled opencv-python-headless comes before the system's OpenCV, so it is PyGObject in practice
  if [ -n "$JETSON" ]; then jetson_venv_check; fi
  # the system's picamera2 must still import beside the bundled wheels (numpy ABI, see INSTALL.md)
  if [ "$want_ssp" = true ] && [ -z "$JETSON" ] &&
    ! err=$("$VENV/bin/python" -c "import picamera2" 2>&1); then
    say "WARNING: the venv cannot import the system's picamera2, so camera kind \"picamera2\""
    say "  will fail: $(tail -n1 <<<"$err")"
    say "  a bundle built with bundle.sh's default numpy for this Python matches Raspberry Pi"
    say "  OS's own (numpy 1 for bookworm's 3.11, numpy 2 for trixie's 3.13)"
  fi
  echo "$stamp" >"$VENV/.camveil-bundle"
  CHANGED_VENV=1
  say "venv ${VENV#"$ROOT"}: $("$VENV/bin/camveil" --version) installed from the bundled wheels"
}
status=0
venv_step || status=$?
if [ "$status" -eq 2 ] && [ -n "$ROOT" ]; then
  say "skipping the venv under --root: $WHY. Run install.sh on the unit itself to create it."
elif [ "$status" -ne 0 ]; then
  die "venv ${VENV#"$ROOT"} not installed: $WHY"
fi

# --- 4. units, the gadget script the gadget unit runs, and enabling them
put 0755 systemd/camveil-gadget-serial.sh "$OPT/systemd/camveil-gadget-serial.sh"
for unit in "${UNITS[@]}"; do
  put 0644 "systemd/$unit" "$UNITDIR/$unit"
done
# a Jetson: the agent may use the NVIDIA nodes and nvargus-daemon's socket (the drop-in says why)
DROPIN=camveil-agent.service.d/jetson.conf
if [ -n "$JETSON" ]; then
  put 0644 "systemd/$DROPIN" "$UNITDIR/$DROPIN"
elif [ -e "$UNITDIR/$DROPIN" ]; then
  rm -f "$UNITDIR/$DROPIN"
  rmdir --ignore-fail-on-non-empty "$UNITDIR/camveil-agent.service.d"
  say "removed ${UNITDIR#"$ROOT"}/$DROPIN: this is no Jetson"
fi
# the status LED: group camveil may write the board's ACT LED (matches nothing elsewhere)
put 0644 systemd/udev/99-camveil-status-led.rules "$ROOT/etc/udev/rules.d/99-camveil-status-led.rules"
put 0644 BUNDLE_INFO "$OPT/BUNDLE_INFO"

if [ -n "$ROOT" ] || [ "$SYSTEMD" -eq 0 ] || [ ! -d /run/systemd/system ]; then
  say "not enabling units here (--root, --no-systemd or no running systemd); this would run:"
  [ -z "$ROOT" ] || say "  systemd-sysusers; systemd-tmpfiles --create /etc/tmpfiles.d/camveil.conf"
  say "  systemctl daemon-reload && systemctl enable ${UNITS[*]}"
  [ -z "$ROOT" ] || say "  (for an image, offline: systemctl --root=$ROOT enable ${UNITS[*]})"
else
  systemd-tmpfiles --create /etc/tmpfiles.d/camveil.conf
  if command -v udevadm >/dev/null; then
    udevadm control --reload && udevadm trigger --action=add --subsystem-match=leds || true
  fi
  systemctl daemon-reload
  systemctl enable --quiet "${UNITS[@]}"
  say "enabled ${UNITS[*]}"
  if [ "$CHANGED_VENV" -eq 1 ] && systemctl is-active --quiet camveil-agent.service; then
    systemctl restart camveil-agent.service
    say "restarted camveil-agent.service on the new version"
  fi
  if [ ! -e /var/lib/camveil/provisioned ]; then
    say "unprovisioned: reboot (USB gadget, see INSTALL.md) or: systemctl start camveil-provision.service"
  fi
fi
say "done"
