#!/usr/bin/env bash
# Build the offline installation bundle: dist/camveil-<version>-<arch>.tar.gz
#
#   scripts/bundle.sh [--arch aarch64|x86_64] [--python 3.11] [--glibc 2.36] [--numpy 1|2]
#                     [--out DIR] [--constraint FILE]
#
# Environment equivalents: ARCH, PYTHON_VERSION, GLIBC, NUMPY, DIST, CONSTRAINT; PIP_PYTHON is
# the interpreter that runs pip here (default: .venv/bin/python, else python3).
#
# The bundle holds:
#   wheels/              camveil's wheel (models inside, checked against models/manifest.json),
#                        every runtime dependency as a binary wheel for the target, and pip
#   requirements.lock    the exact set (name==version) install.sh installs
#   systemd/             units, the Jetson drop-in (camveil-agent.service.d/), gadget script,
#                        sysusers.d/ and tmpfiles.d/ snippets, the status LED udev rule (udev/)
#   config/              camveil.toml.example (installed as /etc/camveil/camveil.toml if absent)
#   install.sh, INSTALL.md, BUNDLE_INFO
#   MANIFEST.sha256      sha256 of every other file; install.sh refuses a bundle that differs
#
# Wheels are resolved for the target (--platform manylinux_2_17..<glibc>, --python-version,
# --implementation cp, --abi cpXY, --only-binary=:all:), never for this machine. picamera2 is not
# bundled: on Raspberry Pi OS it comes from the system (python3-picamera2) and install.sh makes the
# venv with --system-site-packages. Needs network to the package index (pip's cache is reused).
#
# --numpy 1 (the default up to CPython 3.12): numpy<2. The system's picamera2 imports
# simplejpeg, which Raspberry Pi OS bookworm builds against its numpy 1.24; with numpy 2 in the
# venv `import picamera2` fails ("numpy.dtype size changed", raspberrypi/picamera2#1088, #1211).
# numpy 1.x keeps every system extension working (this resolves to opencv-python-headless 4.x).
# --numpy 2 for targets that do not mix in system packages built against numpy 1, and the
# default from CPython 3.13 on, for which numpy 1.x has no wheels: Raspberry Pi OS trixie has
# Python 3.13 and Debian trixie's numpy 2.2, so its picamera2 stack is built against numpy 2.
#
# opencv-python-headless<5 for every target. OpenCV 5's INTER_LINEAR resize, which CenterFace runs
# on every frame (stretch to multiples of 32), gives other pixels on aarch64 than on x86_64, where
# the detector is measured: on the emulated trixie check (scripts/arm-check.sh --suite trixie)
# boxes moved by up to 17 px and a face in biden.jpg was lost and found elsewhere. OpenCV 4.14's
# INTER_LINEAR gives the same pixels on both, and the same as OpenCV 5.1 on x86_64.
#
# Targets: Raspberry Pi OS bookworm (defaults); Raspberry Pi OS trixie (--python 3.13 --glibc
# 2.41); NVIDIA Jetson JetPack 6 (--python 3.10 --glibc 2.35).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ARCH=${ARCH:-aarch64}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
GLIBC=${GLIBC:-2.36} # Raspberry Pi OS / Debian bookworm
NUMPY=${NUMPY:-}
DIST=${DIST:-$REPO/dist}
CONSTRAINT=${CONSTRAINT:-}

die() {
  echo "bundle: $*" >&2
  exit 1
}
usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while (($#)); do
  case "$1" in
    --arch) ARCH=${2:?--arch needs a value} && shift ;;
    --python) PYTHON_VERSION=${2:?--python needs a value} && shift ;;
    --glibc) GLIBC=${2:?--glibc needs a value} && shift ;;
    --numpy) NUMPY=${2:?--numpy needs 1 or 2} && shift ;;
    --out) DIST=${2:?--out needs a value} && shift ;;
    --constraint) CONSTRAINT=${2:?--constraint needs a value} && shift ;;
    -h | --help) usage 0 ;;
    *) echo "bundle: unknown argument $1" >&2 && usage 2 ;;
  esac
  shift
done

case "$ARCH" in
  aarch64 | x86_64) ;;
  arm64) ARCH=aarch64 ;;
  amd64) ARCH=x86_64 ;;
  *) die "ARCH=$ARCH is not supported (aarch64 or x86_64)" ;;
esac
[[ "$PYTHON_VERSION" =~ ^3\.([0-9]+)$ ]] || die "--python must look like 3.11, not $PYTHON_VERSION"
PY_MINOR=${BASH_REMATCH[1]}
[[ "$GLIBC" =~ ^2\.([0-9]+)$ ]] || die "--glibc must look like 2.36, not $GLIBC"
GLIBC_MINOR=${BASH_REMATCH[1]}
((GLIBC_MINOR >= 17)) || die "--glibc $GLIBC: manylinux wheels need glibc >= 2.17"
if [ -z "$NUMPY" ]; then
  NUMPY=1
  ((PY_MINOR < 13)) || NUMPY=2
fi
[[ "$NUMPY" =~ ^[12]$ ]] || die "--numpy must be 1 or 2, not $NUMPY"
((NUMPY == 2 || PY_MINOR < 13)) ||
  die "--numpy 1: numpy 1.x has no wheels for CPython $PYTHON_VERSION (1.26 stops at 3.12); use --numpy 2"
[ -z "$CONSTRAINT" ] || [ -f "$CONSTRAINT" ] || die "constraint file $CONSTRAINT not found"
[ -z "$CONSTRAINT" ] || CONSTRAINT=$(cd "$(dirname "$CONSTRAINT")" && pwd)/$(basename "$CONSTRAINT")

if [ -z "${PIP_PYTHON:-}" ]; then
  PIP_PYTHON=python3
  [ -x "$REPO/.venv/bin/python" ] && PIP_PYTHON=$REPO/.venv/bin/python
fi
pip() { "$PIP_PYTHON" -m pip --disable-pip-version-check "$@"; }

# every manylinux tag a system with glibc $GLIBC runs: manylinux2014 == manylinux_2_17
PLATFORMS=(--platform "manylinux2014_$ARCH")
for ((m = 17; m <= GLIBC_MINOR; m++)); do PLATFORMS+=(--platform "manylinux_2_${m}_$ARCH"); done
TARGET=(--only-binary=:all: "${PLATFORMS[@]}" --python-version "$PYTHON_VERSION"
  --implementation cp --abi "cp3$PY_MINOR")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/camveil-bundle.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# 1. camveil's own wheel, built from a copy of the work tree (tracked and new files, nothing
#    ignored), so that the build leaves no build/ or egg-info behind in the checkout.
echo "bundle: building the camveil wheel"
mkdir "$WORK/src" "$WORK/wheels"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
pip wheel -q --no-deps -w "$WORK/wheels" "$WORK/src" >"$WORK/wheel.log" 2>&1 ||
  { cat "$WORK/wheel.log" >&2 && die "pip wheel failed"; }
WHEEL=$(ls "$WORK"/wheels/camveil-*.whl)
VERSION=$(basename "$WHEEL" | cut -d- -f2)
NAME=camveil-$VERSION-$ARCH
B=$WORK/$NAME
mkdir -p "$B"
mv "$WORK/wheels" "$B/wheels"
WHEEL=$B/wheels/$(basename "$WHEEL")

# 2. the models ship inside the wheel: every file in models/manifest.json, with its sha256
"$PIP_PYTHON" - "$WHEEL" <<'EOF' || die "the camveil wheel does not carry the models"
import hashlib, json, sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
names = set(wheel.namelist())
manifest = json.loads(wheel.read("models/manifest.json"))
for key, model in manifest["models"].items():
    path = "models/" + model["file"]
    if path not in names:
        sys.exit(f"bundle: {path} ({key}) missing from the wheel: check [tool.setuptools.package-data]")
    digest = hashlib.sha256(wheel.read(path)).hexdigest()
    if digest != model["sha256"]:
        sys.exit(f"bundle: {path} in the wheel has sha256 {digest}, manifest says {model['sha256']}")
    print(f"bundle: model {model['file']} in the wheel, sha256 ok")
EOF

# 3. runtime dependencies for the target, resolved from the wheel's own metadata
echo "bundle: downloading wheels for $ARCH, CPython $PYTHON_VERSION, glibc <= $GLIBC, numpy $NUMPY.x, opencv 4.x"
if [ "$NUMPY" = 1 ]; then echo "numpy<2" >"$WORK/numpy.txt"; else echo "numpy>=2" >"$WORK/numpy.txt"; fi
echo "opencv-python-headless<5" >>"$WORK/numpy.txt" # the same resize on aarch64 as on x86_64
pip download -q "${TARGET[@]}" --constraint "$WORK/numpy.txt" \
  ${CONSTRAINT:+--constraint "$CONSTRAINT"} -d "$B/wheels" "$WHEEL" >"$WORK/download.log" 2>&1 ||
  { grep -v "is ignored: it is neither" "$WORK/download.log" >&2; die "pip download for $ARCH failed"; }
# pip evaluates environment markers (`tomli; python_version < "3.11"`) for the interpreter that
# runs it, not for --python-version: add what the target needs beyond that (exceptiongroup and
# tomli for CPython 3.10, JetPack 6), until every requirement of every wheel, under the target's
# markers, is in the set
closure() {
  "$PIP_PYTHON" - "$B/wheels" "$PYTHON_VERSION" "$ARCH" <<'EOF'
import email.parser, sys, zipfile
from pathlib import Path
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

wheels, python, arch = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
env = {"python_version": python, "python_full_version": python + ".0", "platform_machine": arch,
       "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}
have, requires = {}, {}
for whl in wheels.glob("*.whl"):
    with zipfile.ZipFile(whl) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(name).decode("utf-8"))
    key = canonicalize_name(meta["Name"])
    have[key] = Version(meta["Version"])
    requires[key] = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
extras = {key: {""} for key in have}
for _ in range(len(have)):  # the extras that parents ask for, through chains of extras
    for key, reqs in requires.items():
        for req in reqs:
            if any(req.marker is None or req.marker.evaluate({**env, "extra": e})
                   for e in extras[key]):
                extras.setdefault(canonicalize_name(req.name), {""}).update(req.extras)
missing = set()
for key, reqs in requires.items():
    for req in reqs:
        if not any(req.marker is None or req.marker.evaluate({**env, "extra": e})
                   for e in extras[key]):
            continue
        dep = canonicalize_name(req.name)
        if dep not in have:
            missing.add(f"{req.name}{req.specifier}")
        elif not req.specifier.contains(have[dep], prereleases=True):
            sys.exit(f"bundle: {dep} {have[dep]} does not satisfy {key}'s {req} on CPython {python}")
print("\n".join(sorted(missing)))
EOF
}
for _ in 1 2 3 4 5; do
  missing=$(closure) || die "the wheel set does not fit CPython $PYTHON_VERSION"
  [ -n "$missing" ] || break
  mapfile -t reqs <<<"$missing"
  echo "bundle: CPython $PYTHON_VERSION also needs: ${reqs[*]}"
  pip download -q "${TARGET[@]}" --no-deps --constraint "$WORK/numpy.txt" \
    ${CONSTRAINT:+--constraint "$CONSTRAINT"} -d "$B/wheels" "${reqs[@]}" >"$WORK/download.log" 2>&1 ||
    { cat "$WORK/download.log" >&2; die "pip download ${reqs[*]} for $ARCH failed"; }
done
[ -z "$missing" ] || die "the wheel set for CPython $PYTHON_VERSION is still incomplete: $missing"
# pip itself (pure Python): install.sh bootstraps the venv from it, no ensurepip needed
pip download -q --no-deps --only-binary=:all: -d "$B/wheels" pip >"$WORK/pip.log" 2>&1 ||
  { cat "$WORK/pip.log" >&2 && die "pip download pip failed"; }

# every wheel must be pure or for $ARCH, and nothing but wheels
for f in "$B"/wheels/*; do
  case "$(basename "$f")" in
    *-none-any.whl | *"_$ARCH.whl" | *"_$ARCH."*.whl) ;;
    *) die "$(basename "$f") is not a wheel for $ARCH" ;;
  esac
done
for required in numpy ai_edge_litert opencv_python_headless; do
  ls "$B"/wheels/"$required"-*.whl >/dev/null 2>&1 || die "no $required wheel for $ARCH"
done
ls "$B"/wheels/picamera2-* >/dev/null 2>&1 && die "picamera2 must come from the system, not the bundle"

# requirements.lock: exactly the bundled set (wheel names are name-version-...; pip normalises)
(cd "$B/wheels" && for f in *.whl; do
  echo "$f" | cut -d- -f1,2 | sed 's/-/==/'
done) | sort >"$B/requirements.lock"

# 4. units, snippets, config template, installer and guide
mkdir -p "$B/systemd/sysusers.d" "$B/systemd/tmpfiles.d" "$B/systemd/udev" "$B/config"
install -m 0644 "$REPO"/systemd/*.service "$REPO"/systemd/*.path "$B/systemd/"
# drop-ins that install.sh adds on some boards (jetson.conf on an NVIDIA Jetson)
mkdir -p "$B/systemd/camveil-agent.service.d"
install -m 0644 "$REPO"/systemd/camveil-agent.service.d/*.conf "$B/systemd/camveil-agent.service.d/"
install -m 0755 "$REPO/systemd/camveil-gadget-serial.sh" "$B/systemd/"
install -m 0644 "$REPO/systemd/sysusers.d/camveil.conf" "$B/systemd/sysusers.d/"
install -m 0644 "$REPO/systemd/tmpfiles.d/camveil.conf" "$B/systemd/tmpfiles.d/"
install -m 0644 "$REPO/systemd/udev/99-camveil-status-led.rules" "$B/systemd/udev/"
install -m 0644 "$REPO/docs/camveil.toml.example" "$B/config/camveil.toml.example"
install -m 0755 "$REPO/scripts/install.sh" "$B/install.sh"
[ -f "$REPO/docs/INSTALL.md" ] && install -m 0644 "$REPO/docs/INSTALL.md" "$B/INSTALL.md"
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT+dirty"
cat >"$B/BUNDLE_INFO" <<EOF
name=camveil
version=$VERSION
arch=$ARCH
python=$PYTHON_VERSION
glibc=$GLIBC
numpy=$(sed -n 's/^numpy==//p' "$B/requirements.lock")
commit=$COMMIT
EOF

# 5. MANIFEST.sha256 over every file, then a tarball with stable order, owners and times
(cd "$B" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) >"$WORK/manifest"
mv "$WORK/manifest" "$B/MANIFEST.sha256"
mkdir -p "$DIST"
OUT=$DIST/$NAME.tar.gz
EPOCH=$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -C "$WORK" -cf - "$NAME" |
  gzip -n >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
(cd "$DIST" && sha256sum "$NAME.tar.gz" >"$NAME.tar.gz.sha256")
wheels=("$B"/wheels/*.whl)
echo "bundle: $OUT ($(du -h "$OUT" | cut -f1), ${#wheels[@]} wheels)"
echo "bundle: sha256 $(cut -d' ' -f1 "$OUT.sha256") (compare on the unit before installing)"
