#!/usr/bin/env bash
# Check the aarch64 bundle without a Pi: install it in an emulated Debian arm64 rootfs (qemu user
# mode) and compare the int8 face detector's output there with the x86_64 bundle's.
#
#   sudo scripts/arm-check.sh [--suite bookworm|trixie] [--ref-python PY] [--dist DIR]
#                             [--cpus "cortex-a72 cortex-a76"] [--no-bench]
#
#   --suite S       the Debian release of the rootfs and the bundles' target: bookworm (default;
#                   Raspberry Pi OS bookworm: CPython 3.11, glibc 2.36) or trixie (CPython 3.13,
#                   glibc 2.41)
#   --ref-python PY the x86_64 interpreter for the reference venv (default /usr/bin/python3);
#                   must be the suite's CPython version
#   --dist DIR      take camveil-<version>-{aarch64,x86_64}.tar.gz from DIR instead of building
#                   both (scripts/bundle.sh, needs PyPI) into the work directory
#   --cpus LIST     emulated CPUs (qemu -cpu); default Pi 4 (cortex-a72) and Pi 5 (cortex-a76)
#   --no-bench      skip `camveil bench` under emulation
#
# Needs root (chroot, mounts), qemu-user-static with binfmt (flag F), debootstrap, an x86_64
# CPython at the suite's version (the reference venv: /usr/bin/python3 on a bookworm build
# machine), and the test photos `make setup` fetches (.cache/pypi/face_recognition-*.tar.gz,
# skimage's astronaut.png):
#   apt-get install qemu-user-static binfmt-support debootstrap
# Work directory: $ARM_CHECK_DIR (default /tmp/camveil-arm-check, /tmp/camveil-arm-check-trixie
# for trixie); the rootfs there is kept and reused. Mirror: $MIRROR, else the suite's mirror in
# /etc/apt/sources*, else deb.debian.org. The x86_64 bundle is built for the same CPython, for
# glibc up to the build machine's, and constrained to the aarch64 bundle's wheel versions.
# Exit status: 0 all match, 1 a mismatch (score diff > 0.05, box diff > 4 px, a face missing or
# extra, XNNPACK not active), 2 a missing prerequisite or a failing step. Slow (about 10 minutes,
# 5 more for the first rootfs; trixie 7 and 5 on a loaded 2-core machine): not part of
# `make test` or CI. Timings under emulation say nothing about speed on a Pi.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SUITE=bookworm
REF_PY=/usr/bin/python3
CPUS="cortex-a72 cortex-a76"
DIST_IN=""
BENCH=1
SCORE_TOL=0.05
BOX_TOL=4

say() { echo "arm-check: $*"; }
die() {
  echo "arm-check: error: $*" >&2
  exit 2
}
usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while (($#)); do
  case "$1" in
    --suite) SUITE=${2:?--suite needs bookworm or trixie} && shift ;;
    --ref-python) REF_PY=${2:?--ref-python needs an interpreter} && shift ;;
    --dist) DIST_IN=${2:?--dist needs a directory} && shift ;;
    --cpus) CPUS=${2:?--cpus needs a list} && shift ;;
    --no-bench) BENCH=0 ;;
    -h | --help) usage 0 ;;
    *) echo "arm-check: unknown argument $1" >&2 && usage 2 ;;
  esac
  shift
done
case "$SUITE" in
  bookworm) PYVER=3.11 GLIBC=2.36 WORK=${ARM_CHECK_DIR:-/tmp/camveil-arm-check} ;;
  trixie) PYVER=3.13 GLIBC=2.41 WORK=${ARM_CHECK_DIR:-/tmp/camveil-arm-check-trixie} ;;
  *) echo "arm-check: --suite must be bookworm or trixie, not $SUITE" >&2 && usage 2 ;;
esac

# --- prerequisites ------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (chroot and mounts): sudo $0"
command -v debootstrap >/dev/null || die "no debootstrap: apt-get install debootstrap"
BINFMT=/proc/sys/fs/binfmt_misc/qemu-aarch64
{ [ -f "$BINFMT" ] && grep -qx enabled "$BINFMT"; } ||
  die "no qemu-aarch64 binfmt handler: apt-get install qemu-user-static binfmt-support"
grep -q '^flags:.*F' "$BINFMT" ||
  die "the qemu-aarch64 binfmt handler lacks flag F (fix binary), a chroot cannot use it"
HOSTPY=$REF_PY
command -v "$HOSTPY" >/dev/null || die "no $HOSTPY for the x86_64 reference venv (--ref-python)"
hostpyver=$("$HOSTPY" -c 'import platform, sys
print("%d.%d %s" % (*sys.version_info[:2], platform.machine()))') || die "$HOSTPY does not run"
[ "$hostpyver" = "$PYVER x86_64" ] || die "the x86_64 reference needs CPython $PYVER on x86_64" \
  "(the $SUITE bundle's), $HOSTPY is $hostpyver: pass one with --ref-python"
HOST_GLIBC=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
first() { [ -e "$1" ] && echo "$1"; } # the first match of a glob, or nothing
PHOTOS_TGZ=$(first "$REPO"/.cache/pypi/face_recognition-*.tar.gz || true)
[ -n "$PHOTOS_TGZ" ] || die "no $REPO/.cache/pypi/face_recognition-*.tar.gz: run make setup"
ASTRONAUT=$(first "$REPO"/.venv/lib/python3*/site-packages/skimage/data/astronaut.png || true)
[ -n "$ASTRONAUT" ] || die "no skimage astronaut.png in $REPO/.venv: run make setup"
if [ -z "${MIRROR:-}" ]; then # (no match, or no such files: not an error)
  MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk -v s="$SUITE" '/^URIs:/ {u=$2}
      /^Suites:/ && $0 ~ (" " s "( |$)") && u !~ /security/ {print u; exit}' || true)
  [ -n "$MIRROR" ] || MIRROR=$(grep -hsE "^deb +[^ ]+ +$SUITE( |\$)" /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.list | awk '{print $2; exit}' || true)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
renice -n 10 -p $$ >/dev/null # a shared machine: the emulator takes a core for minutes

ROOT=$WORK/root
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
ROOT=$WORK/root

# --- mounts: /proc, a fake /sys and /proc/cpuinfo -----------------------------------------------
# XNNPACK (what TFLite uses on a Pi) reads the CPU list in /sys and the cores in /proc/cpuinfo via
# cpuinfo. Under qemu user mode both describe the x86 host: cpuinfo then fails (no /sys: XNNPACK
# is silently not used, TFLite's builtin kernels run instead) or crashes (the host's /sys). So the
# chroot gets a 4-core /sys and a /proc/cpuinfo of the emulated Cortex core.
unmount_all() {
  local m
  awk -v r="$ROOT/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount "$m" || umount -l "$m"
  done
}
trap unmount_all EXIT
mounted() { grep -qF " $1 " /proc/mounts; }

fake_cpu() { # fake_cpu QEMU_CPU: write $WORK/cpuinfo-QEMU_CPU (4 cores) and bind it
  local cpu=$1 part variant rev features i
  case "$cpu" in
    cortex-a72) part=0xd08 variant=0x0 rev=3 features="fp asimd evtstrm crc32 cpuid" ;;
    cortex-a76) part=0xd0b variant=0x4 rev=1 features="fp asimd evtstrm aes pmull sha1 sha2 crc32 \
atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    cortex-a53) part=0xd03 variant=0x0 rev=4 features="fp asimd evtstrm crc32 cpuid" ;;
    *) die "--cpus: no /proc/cpuinfo template for $cpu (cortex-a53, cortex-a72, cortex-a76)" ;;
  esac
  for i in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' \
      "$i" "$features"
    printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
      "$variant" "$part" "$rev"
  done >"$WORK/cpuinfo-$cpu"
  printf 'Model\t\t: emulated %s (camveil arm-check)\n' "$cpu" >>"$WORK/cpuinfo-$cpu"
  ! mounted "$ROOT/proc/cpuinfo" || umount "$ROOT/proc/cpuinfo"
  mount --bind "$WORK/cpuinfo-$cpu" "$ROOT/proc/cpuinfo"
}

mount_chroot() {
  local d i
  mounted "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  if ! mounted "$ROOT/sys"; then
    mount -t tmpfs -o size=1m,mode=0755 camveil-fake-sys "$ROOT/sys"
    d=$ROOT/sys/devices/system/cpu
    mkdir -p "$d"
    for f in possible present online; do echo 0-3 >"$d/$f"; done
    for i in 0 1 2 3; do
      mkdir -p "$d/cpu$i/topology" "$d/cpu$i/cpufreq"
      echo 0 >"$d/cpu$i/topology/physical_package_id"
      echo 0-3 >"$d/cpu$i/topology/core_siblings_list"
      echo 1800000 >"$d/cpu$i/cpufreq/cpuinfo_max_freq"
      echo 600000 >"$d/cpu$i/cpufreq/cpuinfo_min_freq"
    done
  fi
}

# in the chroot, on emulated CPU $1, with a clean environment
arm() {
  local cpu=$1
  shift
  chroot "$ROOT" env -i QEMU_CPU="$cpu" PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 "$@"
}

# --- 1. the rootfs: Debian $SUITE arm64 (minbase + python3), kept between runs -----------------
T0=$SECONDS
if [ ! -f "$ROOT/.camveil-rootfs-ok" ]; then
  unmount_all
  if [ -e "$ROOT" ]; then
    ! grep -qF " $ROOT/" /proc/mounts || die "$ROOT still has mounts, not removing it"
    rm -rf --one-file-system "$ROOT"
  fi
  say "debootstrap $SUITE arm64 from $MIRROR into $ROOT (first stage)"
  debootstrap --arch=arm64 --variant=minbase --include=python3 --foreign "$SUITE" "$ROOT" \
    "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 20 "$WORK/debootstrap.log" >&2
    die "debootstrap (first stage) failed, log: $WORK/debootstrap.log"
  }
  # the second stage runs debootstrap's resolver (grep and perl, emulated) over the whole
  # Packages index, pass after pass: 56 MB for trixie arm64, well over half an hour on a loaded
  # machine. It only needs the stanzas of the packages the first stage fetched (debpaths), so
  # the rootfs keeps only those (apt in the rootfs then knows only them; the check needs no apt)
  for f in "$ROOT"/var/lib/apt/lists/*_Packages; do
    awk 'FNR == NR {keep[$1]; next} $2 in keep' "$ROOT/debootstrap/debpaths" RS= ORS='\n\n' \
      "$f" >"$f.camveil" && mv "$f.camveil" "$f"
  done
  say "second stage under qemu-aarch64 (a few minutes)"
  chroot "$ROOT" /debootstrap/debootstrap --second-stage >>"$WORK/debootstrap.log" 2>&1 || {
    tail -n 20 "$WORK/debootstrap.log" >&2
    die "debootstrap (second stage) failed, log: $WORK/debootstrap.log"
  }
  touch "$ROOT/.camveil-rootfs-ok"
  say "rootfs ready in $((SECONDS - T0)) s"
else
  say "reusing the rootfs $ROOT"
fi
mount_chroot
FIRST_CPU=${CPUS%% *}
fake_cpu "$FIRST_CPU"
ROOTPY=$(arm "$FIRST_CPU" python3 -c 'import platform, sys
print("%d.%d %s" % (*sys.version_info[:2], platform.machine()))') ||
  die "python3 does not run in the rootfs"
[ "$ROOTPY" = "$PYVER aarch64" ] ||
  die "python3 in the $SUITE rootfs is $ROOTPY, not CPython $PYVER on aarch64"

# --- 2. the bundles ----------------------------------------------------------------------------
DIST=$WORK/dist
if [ -n "$DIST_IN" ]; then
  DIST=$(cd "$DIST_IN" && pwd)
else
  rm -f "$DIST"/camveil-*.tar.gz "$DIST"/camveil-*.tar.gz.sha256
  say "building the aarch64 bundle for CPython $PYVER, glibc $GLIBC (scripts/bundle.sh, into $DIST)"
  "$REPO/scripts/bundle.sh" --arch aarch64 --python "$PYVER" --glibc "$GLIBC" --out "$DIST" \
    >"$WORK/bundle-aarch64.log" 2>&1 || {
    cat "$WORK/bundle-aarch64.log" >&2
    die "scripts/bundle.sh --arch aarch64 failed"
  }
  # the reference runs here: wheels for this machine's glibc, at the aarch64 bundle's versions
  X86_GLIBC=$(printf '%s\n%s\n' "$GLIBC" "$HOST_GLIBC" | sort -V | head -n1)
  tar -xzOf "$(ls "$DIST"/camveil-*-aarch64.tar.gz)" --wildcards '*/requirements.lock' |
    grep -v '^camveil==' >"$WORK/aarch64.lock"
  say "building the x86_64 bundle for CPython $PYVER, glibc $X86_GLIBC, the same wheel versions"
  "$REPO/scripts/bundle.sh" --arch x86_64 --python "$PYVER" --glibc "$X86_GLIBC" --out "$DIST" \
    --constraint "$WORK/aarch64.lock" >"$WORK/bundle-x86_64.log" 2>&1 || {
    cat "$WORK/bundle-x86_64.log" >&2
    die "scripts/bundle.sh --arch x86_64 failed"
  }
fi
newest() { printf '%s\n' "$@" | sort -V | tail -n1; } # the newest version of a glob's matches
TGZ_ARM=$(newest "$DIST"/camveil-*-aarch64.tar.gz)
TGZ_X86=$(newest "$DIST"/camveil-*-x86_64.tar.gz)
{ [ -f "$TGZ_ARM" ] && [ -f "$TGZ_X86" ]; } || die "no aarch64 and x86_64 bundles in $DIST"
for tgz in "$TGZ_ARM" "$TGZ_X86"; do
  bpy=$(tar -xzOf "$tgz" --wildcards '*/BUNDLE_INFO' | sed -n 's/^python=//p')
  [ "$bpy" = "$PYVER" ] ||
    die "$(basename "$tgz") is for CPython $bpy, the $SUITE check needs $PYVER (--suite, --dist)"
done
NAME_ARM=$(basename "$TGZ_ARM" .tar.gz)
NAME_X86=$(basename "$TGZ_X86" .tar.gz)

# --- 3. install the aarch64 bundle in the chroot, as on a unit (sudo ./install.sh), twice --------
say "installing $NAME_ARM in the emulated rootfs"
rm -rf "$ROOT/tmp/bundle"
mkdir -p "$ROOT/tmp/bundle"
cp "$TGZ_ARM" "$TGZ_ARM.sha256" "$ROOT/tmp/bundle/"
arm "$FIRST_CPU" sh -c "cd /tmp/bundle && sha256sum -c $NAME_ARM.tar.gz.sha256 && \
  tar -xzf $NAME_ARM.tar.gz" >/dev/null || die "the aarch64 bundle does not verify or extract"
T0=$SECONDS
arm "$FIRST_CPU" "/tmp/bundle/$NAME_ARM/install.sh" >"$WORK/install-1.log" 2>&1 || {
  cat "$WORK/install-1.log" >&2
  die "install.sh failed in the emulated rootfs"
}
INSTALL_S=$((SECONDS - T0))
INSTALL_WHAT="venv installed from the bundled wheels"
grep -q "installed from the bundled wheels" "$WORK/install-1.log" ||
  INSTALL_WHAT="venv already held this bundle"
T0=$SECONDS
arm "$FIRST_CPU" "/tmp/bundle/$NAME_ARM/install.sh" >"$WORK/install-2.log" 2>&1 || {
  cat "$WORK/install-2.log" >&2
  die "install.sh (second run) failed in the emulated rootfs"
}
REINSTALL_S=$((SECONDS - T0))
grep -q "already holds this bundle" "$WORK/install-2.log" ||
  die "the second install.sh run did not find the venv up to date: $WORK/install-2.log"
say "install.sh: ${INSTALL_S} s ($INSTALL_WHAT), second run ${REINSTALL_S} s (no change)"
ARM_VENV=/opt/camveil/venv

# --- 4. the x86_64 reference: the x86_64 bundle, the same wheels' versions, under --root ---------
say "installing $NAME_X86 as the x86_64 reference (install.sh --root $WORK/x86)"
rm -rf "$WORK/x86-bundle"
mkdir -p "$WORK/x86-bundle"
tar -xzf "$TGZ_X86" -C "$WORK/x86-bundle"
"$WORK/x86-bundle/$NAME_X86/install.sh" --root "$WORK/x86" --python "$HOSTPY" \
  >"$WORK/install-x86.log" 2>&1 || {
  cat "$WORK/install-x86.log" >&2
  die "install.sh --root for the x86_64 reference failed"
}
X86_VENV=$WORK/x86/opt/camveil/venv
[ -x "$X86_VENV/bin/camveil" ] ||
  die "no x86_64 reference venv (is $HOSTPY the bundle's Python?): $WORK/install-x86.log"

# --- 5. photos and the check scripts ------------------------------------------------------------
CHECK=$WORK/check
rm -rf "$CHECK" "$ROOT/tmp/check"
mkdir -p "$CHECK/photos"
tar -xzf "$PHOTOS_TGZ" -C "$CHECK/photos" --strip-components=3 --wildcards \
  '*/tests/test_images/*.jpg' '*/tests/test_images/*.png'
cp "$ASTRONAUT" "$CHECK/photos/"

# detect.py PHOTOS OUT.json HEADS: CenterFace int8 (default config) on every photo
cat >"$CHECK/detect.py" <<'EOF'
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np

from agent.batch import load_image
from agent.vision.centerface import CenterFaceDetector
from hw.runtime import TFLiteRuntime
from models import verified_path

photos, out_path, heads = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
heads.mkdir(parents=True, exist_ok=True)
det = CenterFaceDetector(verified_path("centerface_int8")).load()
# whether a delegate (XNNPACK) runs the model, as the agent and `camveil bench` tell it (the
# runtime's own "Created TensorFlow Lite XNNPACK delegate" line is filtered out of stderr)
xnnpack = TFLiteRuntime(verified_path("centerface_int8")).load().delegated
result = {"machine": platform.machine(), "xnnpack": xnnpack, "photos": {}}
for p in sorted(photos.iterdir()):
    rgb = load_image(p)
    head, placement = CenterFaceDetector.raw(det, rgb)
    np.save(heads / f"{p.name}.npy", head)
    det.raw = lambda _rgb, r=(head, placement): r  # type: ignore[method-assign]  # one inference
    dets = det.detect(rgb)
    del det.raw
    result["photos"][p.name] = {
        "pixels_sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
        "detections": [[d.box.x0, d.box.y0, d.box.x1, d.box.y1, d.score] for d in dets],
    }
out_path.write_text(json.dumps(result, indent=1))
EOF

# compare.py REF.json REFHEADS ARM.json ARMHEADS LABEL SCORE_TOL BOX_TOL: one line per photo
cat >"$CHECK/compare.py" <<'EOF'
import json
import sys
from pathlib import Path

import numpy as np

ref_path, ref_heads, arm_path, arm_heads, label = sys.argv[1:6]
score_tol, box_tol = float(sys.argv[6]), float(sys.argv[7])
ref = json.loads(Path(ref_path).read_text())["photos"]
arm = json.loads(Path(arm_path).read_text())["photos"]


def iou(a: list[float], b: list[float]) -> float:
    ix, iy = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


bad = 0
for name, r in ref.items():
    a = arm[name]
    used: set[int] = set()
    score_d, box_d, missing = 0.0, 0.0, 0
    for d in r["detections"]:
        free = [j for j in range(len(a["detections"])) if j not in used]
        best = max(free, key=lambda j: iou(d, a["detections"][j]), default=None)
        if best is None or iou(d, a["detections"][best]) < 0.5:
            missing += 1
            continue
        used.add(best)
        e = a["detections"][best]
        score_d = max(score_d, abs(d[4] - e[4]))
        box_d = max(box_d, *(abs(d[k] - e[k]) for k in range(4)))
    extra = len(a["detections"]) - len(used)
    head_ref, head_arm = np.load(f"{ref_heads}/{name}.npy"), np.load(f"{arm_heads}/{name}.npy")
    head_d = float(np.abs(head_ref - head_arm).max())
    same_pixels = r["pixels_sha256"] == a["pixels_sha256"]
    ok = same_pixels and not missing and not extra and score_d <= score_tol and box_d <= box_tol
    bad += not ok
    print(
        f"{label:11s} {name:24s} faces x86 {len(r['detections'])} arm {len(a['detections'])}"
        f" missing {missing} extra {extra}  max score diff {score_d:.1e}  max box diff"
        f" {box_d:.1e} px  max head diff {head_d:.2e}"
        f"{'' if same_pixels else '  DECODED PIXELS DIFFER'}  {'ok' if ok else 'MISMATCH'}"
    )
sys.exit(1 if bad else 0)
EOF
cp -r "$CHECK" "$ROOT/tmp/check"

# --- 6. the detector on x86_64 and on each emulated CPU, then the comparison --------------------
FAIL=0
SUMMARY=()
# xnnpack RESULT.json: did a delegate (XNNPACK) run the model there
xnnpack() {
  "$X86_VENV/bin/python" -c 'import json, sys
sys.exit(json.load(open(sys.argv[1])).get("xnnpack") is not True)' "$1"
}
say "detector on x86_64 (reference)"
"$X86_VENV/bin/python" "$CHECK/detect.py" "$CHECK/photos" "$CHECK/x86.json" "$CHECK/heads-x86" \
  2>"$CHECK/x86.err" || {
  cat "$CHECK/x86.err" >&2
  die "detect.py failed on x86_64"
}
if xnnpack "$CHECK/x86.json"; then
  SUMMARY+=("x86_64 reference: XNNPACK runs the model")
else
  FAIL=1
  SUMMARY+=("x86_64 reference: MISMATCH: XNNPACK does not run the model ($CHECK/x86.err)")
fi
for cpu in $CPUS; do
  fake_cpu "$cpu"
  say "detector on emulated $cpu (a few minutes)"
  T0=$SECONDS
  arm "$cpu" "$ARM_VENV/bin/python" /tmp/check/detect.py /tmp/check/photos \
    "/tmp/check/$cpu.json" "/tmp/check/heads-$cpu" 2>"$CHECK/$cpu.err" || {
    cat "$CHECK/$cpu.err" >&2
    die "detect.py failed on emulated $cpu"
  }
  if ! xnnpack "$ROOT/tmp/check/$cpu.json"; then
    FAIL=1
    SUMMARY+=("$cpu: MISMATCH: XNNPACK does not run the model ($CHECK/$cpu.err)")
  fi
  if "$X86_VENV/bin/python" "$CHECK/compare.py" "$CHECK/x86.json" "$CHECK/heads-x86" \
    "$ROOT/tmp/check/$cpu.json" "$ROOT/tmp/check/heads-$cpu" "$cpu" "$SCORE_TOL" "$BOX_TOL" \
    >"$CHECK/compare-$cpu.txt"; then
    SUMMARY+=("$cpu: detections match x86_64 ($((SECONDS - T0)) s emulated)")
  else
    FAIL=1
    SUMMARY+=("$cpu: MISMATCH beyond score $SCORE_TOL / box $BOX_TOL px")
  fi
done

# --- 7. camveil redact, --help, bench --help, a short bench -----------------------------------
fake_cpu "$FIRST_CPU"
say "camveil redact on x86_64 and on emulated $FIRST_CPU"
"$X86_VENV/bin/camveil" redact --no-progress --out "$CHECK/redact-x86" "$CHECK/photos" \
  >"$CHECK/redact-x86.log" 2>&1 || {
  cat "$CHECK/redact-x86.log" >&2
  die "camveil redact failed on x86_64"
}
arm "$FIRST_CPU" "$ARM_VENV/bin/camveil" redact --no-progress --out /tmp/check/redact-arm \
  /tmp/check/photos >"$CHECK/redact-arm.log" 2>&1 || {
  cat "$CHECK/redact-arm.log" >&2
  die "camveil redact failed in the emulated rootfs"
}
REDACT=$("$X86_VENV/bin/python" - "$CHECK/redact-x86" "$ROOT/tmp/check/redact-arm" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

x86, arm = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(p.name for p in x86.iterdir())
differ = {}
for name in files:
    a, b = np.asarray(Image.open(x86 / name)), np.asarray(Image.open(arm / name))
    n = int((a != b).any(axis=-1).sum()) if a.shape == b.shape else a.shape[0] * a.shape[1]
    if n:
        differ[name] = n
missing = sorted(set(files) - {p.name for p in arm.iterdir()})
print(
    f"{len(files)} redacted PNGs, {len(files) - len(differ) - len(missing)} pixel-identical"
    + "".join(f", {k}: {v} px differ" for k, v in differ.items())
    + (f", missing on arm: {missing}" if missing else "")
)
EOF
)
SUMMARY+=("camveil redact: $REDACT")

for args in "--help" "bench --help"; do
  f=$CHECK/arm-$(echo "$args" | tr -cd '[:lower:]').txt
  # shellcheck disable=SC2086 # $args is two words on purpose
  arm "$FIRST_CPU" "$ARM_VENV/bin/camveil" $args >"$f" 2>&1 ||
    die "camveil $args failed in the emulated rootfs: $f"
  # shellcheck disable=SC2086
  if "$X86_VENV/bin/camveil" $args 2>&1 | cmp -s - "$f"; then
    SUMMARY+=("camveil $args: runs, same text as on x86_64")
  else
    SUMMARY+=("camveil $args: runs, text differs from x86_64 ($f)")
  fi
done

if [ "$BENCH" -eq 1 ]; then
  say "camveil bench 640x480 on emulated $FIRST_CPU (meaningless for speed)"
  arm "$FIRST_CPU" "$ARM_VENV/bin/camveil" bench --suite pipeline --sizes 640x480 --threads 1 \
    --seconds 5 --warmup 0 --source /tmp/check/photos/astronaut.png >"$CHECK/bench.txt" 2>&1 ||
    die "camveil bench failed in the emulated rootfs: $CHECK/bench.txt"
  # the same case with the detector timeout raised: under emulation every frame exceeds the
  # default 2 s and is dropped (fail closed), so `camveil bench` alone shows 0 fps
  arm "$FIRST_CPU" "$ARM_VENV/bin/python" - /tmp/check/photos/astronaut.png \
    >"$CHECK/bench-slow.json" 2>"$CHECK/bench-slow.err" <<'EOF' ||
import json
import sys
from dataclasses import replace

from tools.bench import BenchCase, BenchSettings, run_case
from agent.vision.factory import DetectorConfig

settings = BenchSettings(
    seconds=20,
    warmup_frames=1,
    source=sys.argv[1],
    detector=replace(DetectorConfig(), timeout=120.0),
)
print(json.dumps(run_case(BenchCase(640, 480, 1), settings).to_dict()))
EOF
    die "the pipeline case with a 120 s detector timeout failed: $CHECK/bench-slow.err"
  BENCH_LINE=$(grep -E '^ *640x480' "$CHECK/bench.txt" | tr -s ' ')
  SLOW=$("$X86_VENV/bin/python" -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("{} frames through detect/track/redact/encode, dropped {}, detect p50 {:.0f} ms".format(
    r["frames"], r["dropped"] or "none", r["stages"]["detect"]["p50_ms"] or 0))' "$CHECK/bench-slow.json")
  SUMMARY+=("camveil bench 640x480 runs: ${BENCH_LINE# } (0 fps is expected: under emulation every
  frame takes longer than the 2 s detector timeout and is dropped, fail closed)")
  SUMMARY+=("pipeline with a 120 s timeout: $SLOW (emulated, not a Pi's speed)")
fi

# --- summary --------------------------------------------------------------------------------------
echo
echo "== camveil arm-check: $NAME_ARM (CPython $PYVER) in Debian $SUITE arm64 under" \
  "qemu-aarch64 vs $NAME_X86 ($("$X86_VENV/bin/python" -V))"
echo "install.sh as root in the emulated rootfs: ${INSTALL_S} s ($INSTALL_WHAT); second run" \
  "${REINSTALL_S} s, nothing to change"
cat "$CHECK"/compare-*.txt
for line in "${SUMMARY[@]}"; do echo "$line"; done
echo "tolerance: score diff <= $SCORE_TOL, box diff <= $BOX_TOL px, no face missing or extra"
if [ "$FAIL" -ne 0 ]; then
  echo "RESULT: MISMATCH (files in $CHECK)"
  exit 1
fi
echo "RESULT: OK, the aarch64 bundle installs and its detector agrees with x86_64"
