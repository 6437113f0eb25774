"""The offline installer: `scripts/bundle.sh` builds the bundle, its `install.sh` installs it.

An x86_64 bundle is built once per session (pip download needs the package index; pip's cache is
reused) and installed with ``install.sh --root`` into temporary trees, with the network cut off
(``unshare --net``) so that only the bundled wheels can be used. A failing download fails the
test with pip's reason; nothing here is skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BUNDLE_SH = REPO / "scripts" / "bundle.sh"
VERSION = "0.1.0"
UNITS = [
    "camveil-agent.service",
    "camveil-agent.path",
    "camveil-provision.service",
    "camveil-gadget-serial.service",
]
JETSON_DROPIN = "camveil-agent.service.d/jetson.conf"


@dataclass(frozen=True)
class Bundle:
    tarball: Path
    tree: Path  # the extracted bundle: do not modify (copy it first)
    arch: str


def _run(
    args: list[str], *, timeout: float = 600, offline: bool = False
) -> subprocess.CompletedProcess[str]:
    if offline:
        args = ["unshare", "--net", *args]
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _build(out: Path, arch: str, glibc: str | None = None, python: str | None = None) -> Bundle:
    args = [str(BUNDLE_SH), "--arch", arch, "--out", str(out)]
    if glibc:
        args += ["--glibc", glibc]
    if python:
        args += ["--python", python]
    result = _run(args)
    if result.returncode != 0:
        pytest.fail(
            f"scripts/bundle.sh --arch {arch} failed (it needs the package index for pip "
            f"download):\n{result.stdout}\n{result.stderr}"
        )
    tarball = out / f"camveil-{VERSION}-{arch}.tar.gz"
    assert tarball.is_file(), result.stdout
    with tarfile.open(tarball) as tar:
        tar.extractall(out / "x", filter="data")
    return Bundle(tarball, out / "x" / f"camveil-{VERSION}-{arch}", arch)


def _host_glibc() -> str:
    return (os.confstr("CS_GNU_LIBC_VERSION") or "glibc 2.17").split()[-1]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundle]:
    # wheels no newer than this machine's glibc, so that the bundle installs and runs here
    out = tmp_path_factory.mktemp("bundle-x86_64")
    yield _build(out, "x86_64", _host_glibc())
    shutil.rmtree(out, ignore_errors=True)  # ~230 MB; pytest keeps the last three sessions


@pytest.fixture(autouse=True)
def _drop_installed_trees(tmp_path: Path) -> Iterator[None]:
    """Each install is a ~370 MB venv: do not keep them around in pytest's temporary folders."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def _offline_ok() -> None:
    probe = _run(["true"], offline=True)
    if probe.returncode != 0:
        pytest.fail(f"unshare --net does not work here (needs root): {probe.stderr}")


def install(bundle_tree: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    _offline_ok()
    return _run([str(bundle_tree / "install.sh"), "--root", str(root), *extra], offline=True)


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """path -> (sha256 or kind, mode) for everything under root."""
    out: dict[str, tuple[str, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            kind = "-> " + os.readlink(path)
        elif path.is_file():
            kind = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            kind = "dir"
        out[str(path.relative_to(root))] = (kind, st.st_mode & 0o7777)
    return out


def tmpfiles_state_mode() -> int:
    text = (REPO / "systemd/tmpfiles.d/camveil.conf").read_text()
    match = re.search(r"^d\s+/var/lib/camveil\s+(\d+)\s", text, re.M)
    assert match, text
    return int(match.group(1), 8)


# --- the bundle itself


def test_bundle_holds_wheels_units_config_and_a_complete_manifest(bundle: Bundle) -> None:
    tree = bundle.tree
    wheels = sorted(p.name for p in (tree / "wheels").iterdir())
    for name in ["camveil-", "numpy-", "ai_edge_litert-", "opencv_python_headless-", "pip-"]:
        assert any(w.startswith(name) for w in wheels), (name, wheels)
    assert not any(w.lower().startswith("picamera2") for w in wheels)
    assert all(w.endswith("-none-any.whl") or "x86_64" in w for w in wheels), wheels
    for unit in UNITS:
        assert (tree / "systemd" / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()
    for snippet in ["sysusers.d/camveil.conf", "tmpfiles.d/camveil.conf", JETSON_DROPIN]:
        assert (tree / "systemd" / snippet).read_bytes() == (
            REPO / "systemd" / snippet
        ).read_bytes()
    assert (tree / "INSTALL.md").read_bytes() == (REPO / "docs/INSTALL.md").read_bytes()
    example = (REPO / "docs/camveil.toml.example").read_bytes()
    assert (tree / "config/camveil.toml.example").read_bytes() == example
    info = dict(line.split("=", 1) for line in (tree / "BUNDLE_INFO").read_text().splitlines())
    assert (info["version"], info["arch"], info["python"]) == (VERSION, "x86_64", "3.11")
    # numpy 1 by default: Raspberry Pi OS's picamera2/simplejpeg are built against numpy 1.24
    assert info["numpy"].startswith("1.") and any(w.startswith("numpy-1.") for w in wheels)

    listed = {}
    for line in (tree / "MANIFEST.sha256").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = {str(p.relative_to(tree)): p for p in tree.rglob("*") if p.is_file()}
    assert set(listed) == set(files) - {"MANIFEST.sha256"}
    for name, path in files.items():
        if name != "MANIFEST.sha256":
            assert hashlib.sha256(path.read_bytes()).hexdigest() == listed[name], name
    lock = (tree / "requirements.lock").read_text().split()
    assert f"camveil=={VERSION}" in lock and len(lock) == len(wheels)
    sidecar = bundle.tarball.with_name(bundle.tarball.name + ".sha256").read_text().split()[0]
    assert sidecar == hashlib.sha256(bundle.tarball.read_bytes()).hexdigest()


def test_models_ship_inside_the_camveil_wheel(bundle: Bundle) -> None:
    import json

    manifest = json.loads((REPO / "models/manifest.json").read_text())
    (wheel,) = (bundle.tree / "wheels").glob("camveil-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert json.loads(zf.read("models/manifest.json")) == manifest
        for model in manifest["models"].values():
            data = zf.read(f"models/{model['file']}")
            assert hashlib.sha256(data).hexdigest() == model["sha256"], model["file"]


# --- install.sh


@pytest.fixture(scope="session")
def installed(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("root")
    first = install(bundle.tree, root)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "checksums ok" in first.stdout
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_install_lays_out_the_tree(installed: Path) -> None:
    root = installed
    for unit in UNITS:
        assert (root / "etc/systemd/system" / unit).read_bytes() == (
            REPO / "systemd" / unit
        ).read_bytes()
    assert (root / "etc/sysusers.d/camveil.conf").is_file()
    assert (root / "etc/tmpfiles.d/camveil.conf").is_file()
    assert (root / "etc/camveil/camveil.toml").read_bytes() == (
        REPO / "docs/camveil.toml.example"
    ).read_bytes()
    state = root / "var/lib/camveil"
    # the mode the tmpfiles.d snippet and the units' StateDirectoryMode= give it
    assert state.stat().st_mode & 0o777 == tmpfiles_state_mode() == 0o700
    assert (root / "etc/camveil").stat().st_mode & 0o777 == 0o755
    gadget = root / "opt/camveil/systemd/camveil-gadget-serial.sh"
    assert os.access(gadget, os.X_OK)
    assert not (root / "etc/systemd/system/camveil-agent.service.d").exists()  # no Jetson here


def test_every_unit_exec_path_exists_in_the_installed_tree(installed: Path) -> None:
    for unit in UNITS:
        text = (installed / "etc/systemd/system" / unit).read_text()
        for line in re.findall(r"^Exec\w+=(\S+)", text, re.M):
            exe = line.lstrip("-@:+!")  # systemd's exec prefixes ("+": full privileges)
            assert exe.startswith("/opt/camveil/"), (unit, exe)
            target = installed / exe.lstrip("/")
            assert os.access(target, os.X_OK), f"{unit}: {exe} not installed"


def test_installed_camveil_runs_offline(installed: Path, tmp_path: Path) -> None:
    venv = installed / "opt/camveil/venv"
    version = _run([str(venv / "bin/camveil"), "--version"], offline=True)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"camveil {VERSION}"
    cfg = (venv / "pyvenv.cfg").read_text()
    assert re.search(r"^include-system-site-packages = false$", cfg, re.M)  # no picamera2 here

    # the bundled runtime and models redact a real face, still without network
    from skimage import data

    photo = data.astronaut()
    Image.fromarray(photo).save(tmp_path / "astronaut.png")
    out = tmp_path / "out"
    redact = _run(
        [
            str(venv / "bin/camveil"),
            "redact",
            "--no-progress",
            "--out",
            str(out),
            str(tmp_path / "astronaut.png"),
        ],
        offline=True,
    )
    assert redact.returncode == 0, redact.stderr
    redacted = np.asarray(Image.open(out / "astronaut.png").convert("RGB"))
    assert redacted.shape == photo.shape
    assert (redacted != photo).any(axis=2).mean() > 0.005, "no face was overwritten"


def test_second_install_changes_nothing_and_keeps_the_config(
    bundle: Bundle, installed: Path
) -> None:
    config = installed / "etc/camveil/camveil.toml"
    config.write_text(config.read_text() + "\n# site-specific edit\n")
    before = snapshot(installed)
    again = install(bundle.tree, installed)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "kept as it is" in again.stdout
    assert "already holds this bundle" in again.stdout
    assert "wrote" not in again.stdout
    assert snapshot(installed) == before
    assert config.read_text().endswith("# site-specific edit\n")


def _reseal(tree: Path) -> None:
    """Rewrite MANIFEST.sha256 as bundle.sh does: a new, consistent bundle."""
    names = sorted(
        str(p.relative_to(tree))
        for p in tree.rglob("*")
        if p.is_file() and p.name != "MANIFEST.sha256"
    )
    lines = [f"{hashlib.sha256((tree / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (tree / "MANIFEST.sha256").write_text("\n".join(lines) + "\n")


def test_a_new_bundle_upgrades_in_place_and_keeps_the_config(
    bundle: Bundle, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(bundle.tree, tmp_path / "old")
    first = install(tmp_path / "old", root)
    assert first.returncode == 0, first.stdout + first.stderr
    config = root / "etc/camveil/camveil.toml"
    config.write_text("# the operator's config\n")

    new = tmp_path / "new"
    shutil.copytree(bundle.tree, new)
    template = new / "config/camveil.toml.example"
    template.write_text(template.read_text() + "# a key added in the new release\n")
    _reseal(new)
    result = install(new, root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installed from the bundled wheels" in result.stdout  # camveil reinstalled
    assert config.read_text() == "# the operator's config\n"
    assert (root / "etc/camveil/camveil.toml.example").read_bytes() == template.read_bytes()
    stamp = (root / "opt/camveil/venv/.camveil-bundle").read_text().strip()
    assert stamp == hashlib.sha256((new / "MANIFEST.sha256").read_bytes()).hexdigest()
    version = _run([str(root / "opt/camveil/venv/bin/camveil"), "--version"], offline=True)
    assert version.stdout.strip() == f"camveil {VERSION}", version.stderr


def test_system_picamera2_gives_a_venv_with_system_site_packages(
    bundle: Bundle, tmp_path: Path
) -> None:
    """On Raspberry Pi OS `python3 -c "import picamera2"` works (apt's python3-picamera2): the
    venv must see the system's packages. Faked here by an interpreter that answers that probe."""
    real = os.path.realpath(sys.executable)
    fake = tmp_path / "python3"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -c ] && [ "$2" = "import picamera2" ]; then exit 0; fi\n'
        f'exec "{real}" "$@"\n'
    )
    fake.chmod(0o755)
    root = tmp_path / "root"
    result = install(bundle.tree, root, "--python", str(fake))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "system site packages: true" in result.stdout
    # the fake module is not really there: the check after installing says so
    assert "WARNING: the venv cannot import the system's picamera2" in result.stdout
    cfg = (root / "opt/camveil/venv/pyvenv.cfg").read_text()
    assert re.search(r"^include-system-site-packages = true$", cfg, re.M)
    version = _run([str(root / "opt/camveil/venv/bin/camveil"), "--version"], offline=True)
    assert version.stdout.strip() == f"camveil {VERSION}", version.stderr


# --- an NVIDIA Jetson: the board is told by files under --root; the python modules are real

JETSON_RELEASE = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n"
# what hw/camera/gstreamer.py runs on a Jetson, with videotestsrc in place of nvarguscamerasrc
GSTREAMER_READ = """
from hw.camera.config import CameraConfig
from hw.camera.gstreamer import gstreamer_camera
pipeline = ("videotestsrc num-buffers=5 ! video/x-raw,format=BGR,width=64,height=48 ! "
            "appsink name=camveil_sink")
with gstreamer_camera(CameraConfig(kind="gstreamer", source=pipeline)) as camera:
    frames = [camera.read() for _ in range(3)]
print(type(camera).__name__, frames[-1].index, frames[-1].pixels.shape)
"""


def _system_python_with_gi() -> str:
    """/usr/bin/python3 with python3-gi and GStreamer, as on JetPack (the RTSP tests use it)."""
    system_python = "/usr/bin/python3"
    probe = _run([system_python, "-c", "import sys; print(sys.version_info[:2])"])
    if probe.stdout.strip() != "(3, 11)":
        pytest.skip(f"no system CPython 3.11 at {system_python}, the bundle's version")
    gst = _run([system_python, "-c", "import gi; gi.require_version('Gst', '1.0')"])
    if gst.returncode != 0:
        pytest.fail(
            "python3-gi with GStreamer missing: apt install python3-gi gir1.2-gstreamer-1.0 "
            "gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-base (scripts/setup.sh)\n"
            + gst.stderr
        )
    return system_python


def test_jetson_gets_the_dropin_and_a_venv_that_reads_gstreamer(
    bundle: Bundle, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text(JETSON_RELEASE)
    result = install(bundle.tree, root, "--python", _system_python_with_gi())
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "NVIDIA Jetson: R36 (release), REVISION: 4.0" in out
    assert "JetPack 5" not in out
    assert "the system python has PyGObject with GStreamer" in out
    assert "system site packages: true" in out
    assert re.search(r"the venv reads frames through PyGObject \(GStreamer 1\.\d+", out), out
    # no nvarguscamerasrc on this machine: said, not fatal
    assert "no GStreamer element nvarguscamerasrc" in out
    cfg = (root / "opt/camveil/venv/pyvenv.cfg").read_text()
    assert re.search(r"^include-system-site-packages = true$", cfg, re.M)
    dropin = root / "etc/systemd/system" / JETSON_DROPIN
    assert dropin.read_bytes() == (REPO / "systemd" / JETSON_DROPIN).read_bytes()
    assert dropin.stat().st_mode & 0o777 == 0o644

    # the installed camveil reads frames from a real GStreamer pipeline through the system's gi
    read = _run([str(root / "opt/camveil/venv/bin/python"), "-c", GSTREAMER_READ], offline=True)
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == ["GStreamerAppSinkCamera", "2", "(48,", "64,", "3)"]

    # again: nothing to change; on the same tree without the board files the drop-in goes
    again = install(bundle.tree, root, "--python", _system_python_with_gi())
    assert again.returncode == 0 and "wrote" not in again.stdout, again.stdout + again.stderr
    (root / "etc/nv_tegra_release").unlink()
    moved = install(bundle.tree, root, "--python", _system_python_with_gi())
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert "removed /etc/systemd/system/camveil-agent.service.d/jetson.conf" in moved.stdout
    assert not dropin.parent.exists()


def test_jetson_without_gi_is_told_what_to_install(bundle: Bundle, tmp_path: Path) -> None:
    """Told by the device tree's model this time; this test's own python has no gi (checked), so
    the venv gets no system site packages and install.sh names the packages the camera needs."""
    python = os.path.realpath(sys.executable)
    no_gi = _run([python, "-c", "import gi"])
    assert no_gi.returncode != 0, f"{python} has gi: this test needs an interpreter without it"
    root = tmp_path / "root"
    model = root / "proc/device-tree/model"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit\x00")
    result = install(bundle.tree, root, "--python", python)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "NVIDIA Jetson: NVIDIA Jetson Orin Nano Engineering Reference Developer Kit\n" in out
    assert "neither PyGObject with GStreamer nor an OpenCV with" in out
    assert "sudo apt install python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0" in out
    assert "system site packages: false" in out
    assert (root / "etc/systemd/system" / JETSON_DROPIN).is_file()


def test_a_changed_bundle_file_is_refused(bundle: Bundle, tmp_path: Path) -> None:
    tree = tmp_path / "bundle"
    shutil.copytree(bundle.tree, tree)
    unit = tree / "systemd/camveil-agent.service"
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivileges=no"))
    root = tmp_path / "root"
    result = install(tree, root)
    assert result.returncode != 0
    assert "checksum mismatch" in result.stderr
    assert "systemd/camveil-agent.service" in result.stderr
    assert not any(root.iterdir()), "install.sh wrote files from a damaged bundle"


def test_an_added_wheel_is_refused(bundle: Bundle, tmp_path: Path) -> None:
    tree = tmp_path / "bundle"
    shutil.copytree(bundle.tree, tree)
    (tree / "wheels/evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    root = tmp_path / "root"
    result = install(tree, root)
    assert result.returncode != 0
    assert "not in MANIFEST.sha256" in result.stderr and "evil-1.0" in result.stderr
    assert not any(root.iterdir())


# --- the target bundle: aarch64 for Raspberry Pi OS bookworm (CPython 3.11, glibc 2.36)


@pytest.mark.slow
def test_aarch64_bundle_resolves_and_lays_out_without_a_venv(tmp_path: Path) -> None:
    aarch64 = _build(tmp_path, "aarch64")
    wheels = sorted(p.name for p in (aarch64.tree / "wheels").iterdir())
    for name in ["ai_edge_litert-", "numpy-", "opencv_python_headless-"]:
        (wheel,) = [w for w in wheels if w.startswith(name)]
        assert wheel.endswith("aarch64.whl"), wheel
        assert "-cp311-" in wheel or "-abi3-" in wheel, wheel
    assert all(w.endswith("-none-any.whl") or "aarch64" in w for w in wheels), wheels
    assert any(w.startswith("numpy-1.") for w in wheels), wheels  # see --numpy in bundle.sh

    # on this x86_64 machine --root still lays out everything, and says why there is no venv
    root = tmp_path / "root"
    result = install(aarch64.tree, root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipping the venv under --root" in result.stdout
    assert "for aarch64" in result.stdout
    assert not (root / "opt/camveil/venv").exists()
    for unit in UNITS:
        assert (root / "etc/systemd/system" / unit).is_file()
    assert (root / "etc/camveil/camveil.toml").is_file()


@pytest.mark.slow
def test_jetpack6_bundle_carries_what_cpython_310_needs(tmp_path: Path) -> None:
    """JetPack 6: CPython 3.10, glibc 2.35. pip evaluates `python_version < "3.11"` markers for
    the interpreter running it (3.11 or newer here), so bundle.sh must add what 3.10 needs."""
    jetson = _build(tmp_path, "aarch64", "2.35", "3.10")
    wheels = sorted(p.name for p in (jetson.tree / "wheels").iterdir())
    for name in ["exceptiongroup-", "tomli-"]:  # anyio's and camveil's own for CPython < 3.11
        assert any(w.startswith(name) for w in wheels), (name, wheels)
    for name in ["ai_edge_litert-", "numpy-", "opencv_python_headless-"]:
        (wheel,) = [w for w in wheels if w.startswith(name)]
        assert "-cp310-" in wheel or "-abi3-" in wheel, wheel
    info = (jetson.tree / "BUNDLE_INFO").read_text()
    assert "python=3.10\nglibc=2.35\n" in info
    assert (jetson.tree / "systemd" / JETSON_DROPIN).is_file()


@pytest.mark.slow
def test_trixie_bundle_takes_numpy_2_and_opencv_4(tmp_path: Path) -> None:
    """Raspberry Pi OS trixie: CPython 3.13, glibc 2.41, numpy 2 by default, and OpenCV 4.x,
    whose INTER_LINEAR resize gives the same pixels on aarch64 as on x86_64 (OpenCV 5.1's does
    not: scripts/arm-check.sh --suite trixie, docs/INSTALL.md)."""
    trixie = _build(tmp_path, "aarch64", "2.41", "3.13")
    wheels = sorted(p.name for p in (trixie.tree / "wheels").iterdir())
    for name in ["ai_edge_litert-", "numpy-", "opencv_python_headless-"]:
        (wheel,) = [w for w in wheels if w.startswith(name)]
        assert wheel.endswith("aarch64.whl"), wheel
        assert "-cp313-" in wheel or "-abi3-" in wheel, wheel
    assert any(w.startswith("numpy-2.") for w in wheels), wheels
    assert any(w.startswith("opencv_python_headless-4.") for w in wheels), wheels
    assert "python=3.13\nglibc=2.41\n" in (trixie.tree / "BUNDLE_INFO").read_text()


def test_cpython_313_needs_numpy_2(tmp_path: Path) -> None:
    """Raspberry Pi OS trixie's Python 3.13: numpy 1.x has no wheels for it, said before any
    download (the trixie bundle itself takes numpy 2 by default)."""
    result = _run([str(BUNDLE_SH), "--python", "3.13", "--numpy", "1", "--out", str(tmp_path)])
    assert result.returncode == 1
    assert "numpy 1.x has no wheels for CPython 3.13" in result.stderr
    assert "--numpy 2" in result.stderr
    assert not any(tmp_path.iterdir())


# --- a real install (not --root) in a private mount namespace: this machine is left untouched

# /etc is a copy, /opt and /var/lib are empty directories; the network is cut off
SYSTEM_INSTALL = """
set -eu
mount --bind "$T/etc" /etc
mount --bind "$T/opt" /opt
mount --bind "$T/varlib" /var/lib
umask 077  # a root with a strict umask must still give the service a readable venv
"$B/install.sh" --no-systemd --python "$PY" >"$T/first.log" 2>&1
[ "$ONCE" = 1 ] && exit 0
"$B/install.sh" --no-systemd --python "$PY" >"$T/second.log" 2>&1
getent passwd camveil >"$T/passwd"
id -nG camveil >"$T/groups"
stat -c '%a %U:%G %n' /var/lib/camveil /etc/camveil /opt/camveil/venv/bin/camveil >"$T/stat"
runuser -u camveil -- /opt/camveil/venv/bin/camveil --version >"$T/version"
"""


def system_install(
    bundle: Bundle, tmp: Path, python: str, *, once: bool = False
) -> tuple[subprocess.CompletedProcess[str], str]:
    _offline_ok()
    for d in ["opt", "varlib"]:
        (tmp / d).mkdir()
    copy = _run(["cp", "-a", "/etc", str(tmp / "etc")])
    assert copy.returncode == 0, copy.stderr
    script = tmp / "install-in-namespace.sh"
    script.write_text(SYSTEM_INSTALL)
    env = dict(os.environ, T=str(tmp), B=str(bundle.tree), PY=python, ONCE=str(int(once)))
    result = subprocess.run(
        ["unshare", "--mount", "--net", "--propagation", "private", "bash", str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    logs = "".join((tmp / f).read_text() for f in ["first.log", "second.log"] if (tmp / f).exists())
    return result, logs


def test_system_install_creates_the_user_and_the_service_user_can_run_camveil(
    bundle: Bundle, tmp_path: Path
) -> None:
    # the unit's interpreter: Debian / Raspberry Pi OS bookworm's /usr/bin/python3 is 3.11
    system_python = "/usr/bin/python3"
    probe = _run([system_python, "-c", "import sys; print(sys.version_info[:2])"])
    if probe.stdout.strip() != "(3, 11)":
        pytest.skip(f"no system CPython 3.11 at {system_python} (bookworm has one)")
    result, logs = system_install(bundle, tmp_path, system_python)
    assert result.returncode == 0, result.stderr + logs

    passwd = (tmp_path / "passwd").read_text().strip()
    assert passwd.endswith(":camveil camera agent:/var/lib/camveil:/usr/sbin/nologin"), passwd
    assert {"video", "dialout"} <= set((tmp_path / "groups").read_text().split())
    assert (tmp_path / "stat").read_text().splitlines() == [
        "700 camveil:camveil /var/lib/camveil",
        "755 root:root /etc/camveil",
        "755 root:root /opt/camveil/venv/bin/camveil",
    ]
    assert (tmp_path / "version").read_text().strip() == f"camveil {VERSION}"
    second = (tmp_path / "second.log").read_text()
    assert "wrote" not in second and "created" not in second, second
    assert "already holds this bundle" in second
    assert "camveil:" in (tmp_path / "etc/passwd").read_text()  # in the copy of /etc only


def test_system_install_refuses_an_interpreter_the_service_cannot_reach(
    bundle: Bundle, tmp_path: Path
) -> None:
    """ProtectHome=yes hides /root and /home from the service: a venv made from a python there
    (pyenv, a user's own build) would never start, so install.sh stops before making it."""
    real = os.path.realpath(sys.executable)
    if not real.startswith(("/root/", "/home/")):
        pytest.skip(f"this test's python ({real}) is not under /root or /home")
    result, log = system_install(bundle, tmp_path, sys.executable, once=True)
    assert result.returncode != 0, log
    assert "ProtectHome=yes" in log and "--python /usr/bin/python3" in log
    assert not (tmp_path / "opt/camveil/venv").exists()
