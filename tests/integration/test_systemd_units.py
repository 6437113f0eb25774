"""systemd units, sysusers/tmpfiles snippets and the gadget script, checked by systemd's own tools.

`systemd-analyze verify` refuses a unit whose ExecStart= binary does not exist, so the units are
rendered into a temporary directory with the install paths (/opt/camveil/...) replaced by this
checkout's `camveil` console script and gadget script; nothing else is changed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
DASHBOARD_UNIT = REPO / "deploy" / "dashboard" / "camveil-dashboard.service"
UNITS = [
    "camveil-agent.service",
    "camveil-agent.path",
    "camveil-provision.service",
    "camveil-gadget-serial.service",
]
JETSON_DROPIN = SYSTEMD / "camveil-agent.service.d" / "jetson.conf"
MAX_AGENT_EXPOSURE = 2.0
MAX_GADGET_EXPOSURE = 1.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install systemd (apt install systemd; `make setup` does)")
    return path


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    camveil = Path(sys.executable).parent / "camveil"
    assert camveil.exists(), "the camveil console script is missing: pip install -e ."
    out = tmp_path / "units"
    out.mkdir()
    for name in UNITS:
        text = (SYSTEMD / name).read_text()
        text = text.replace("/opt/camveil/venv/bin/camveil", str(camveil))
        text = text.replace(
            "/opt/camveil/systemd/camveil-gadget-serial.sh",
            str(SYSTEMD / "camveil-gadget-serial.sh"),
        )
        (out / name).write_text(text)
    text = DASHBOARD_UNIT.read_text().replace("/opt/camveil/venv/bin/camveil", str(camveil))
    (out / DASHBOARD_UNIT.name).write_text(text)
    return out


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="", LC_ALL="C.UTF-8")
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def test_units_pass_systemd_analyze_verify(rendered: Path) -> None:
    units = [*UNITS, DASHBOARD_UNIT.name]
    result = _run(_tool("systemd-analyze"), "verify", "--man=no", *units, cwd=rendered)
    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stderr.splitlines() if "camveil" in line]
    assert ours == [], "\n".join(ours)


def security(rendered: Path, unit: str) -> str:
    """`systemd-analyze security` of a unit in ``rendered``, with its drop-ins (unit.d/*.conf)."""
    result = _run(_tool("systemd-analyze"), "security", "--offline=true", unit, cwd=rendered)
    return result.stdout + result.stderr


def exposure(rendered: Path, unit: str) -> float:
    text = security(rendered, unit)
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d)", text)
    assert match, text
    return float(match.group(1))


def test_agent_exposure_is_at_most_2(rendered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    score = exposure(rendered, "camveil-agent.service")
    with capsys.disabled():
        print(f"\nsystemd-analyze security camveil-agent.service: exposure {score}")
    assert score <= MAX_AGENT_EXPOSURE


def test_jetson_dropin_keeps_the_agents_exposure(
    rendered: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent unit with the Jetson drop-in that install.sh adds on a Jetson: verified, scored
    no worse than the unit alone, and better than the blunt fix (PrivateTmp=no, no device ACL),
    which also shows that this systemd-analyze reads the drop-in directory."""
    alone = exposure(rendered, "camveil-agent.service")
    dropins = rendered / "camveil-agent.service.d"
    dropins.mkdir()
    shutil.copy(JETSON_DROPIN, dropins / JETSON_DROPIN.name)
    verify = _run(
        _tool("systemd-analyze"), "verify", "--man=no", "camveil-agent.service", cwd=rendered
    )
    assert verify.returncode == 0, verify.stderr
    assert [line for line in verify.stderr.splitlines() if "camveil" in line] == []
    text = security(rendered, "camveil-agent.service")
    acl = next(line for line in text.splitlines() if "DeviceAllow=" in line)
    for granted in ["/dev/nvmap:rw", "/dev/host1x-fence:rw", "char-drm:rw", "char-video4linux:rw"]:
        assert granted in acl, acl  # the drop-in's devices beside the unit's own
    score = exposure(rendered, "camveil-agent.service")
    (dropins / "zz-blunt.conf").write_text(
        "[Service]\nPrivateTmp=no\nDevicePolicy=auto\nDeviceAllow=\n"
    )
    blunt = exposure(rendered, "camveil-agent.service")
    with capsys.disabled():
        print(
            f"\nsystemd-analyze security camveil-agent.service: exposure {alone}; with the Jetson"
            f" drop-in {score}; with PrivateTmp=no and no device ACL instead {blunt}"
        )
    assert score <= alone <= MAX_AGENT_EXPOSURE
    assert blunt > score


def test_jetson_dropin_grants_exactly_the_socket_and_the_nvidia_nodes() -> None:
    """Literally, so that a wider grant is a visible change: the argus socket read-only on top of
    the private /tmp, three device entries, group render; nothing of the unit is relaxed."""
    text = JETSON_DROPIN.read_text()
    settings = [
        line
        for line in text.splitlines()
        if line and not line.startswith("#") and not line.startswith("[")
    ]
    assert settings == [
        "Wants=nvargus-daemon.service",
        "After=nvargus-daemon.service",
        "BindReadOnlyPaths=-/tmp/argus_socket",
        "DeviceAllow=/dev/nvmap rw",
        "DeviceAllow=/dev/host1x-fence rw",
        "DeviceAllow=char-drm rw",
        "SupplementaryGroups=render",
    ]
    assert "PrivateTmp=yes" in (SYSTEMD / "camveil-agent.service").read_text()


def test_dashboard_unit_is_hardened_as_the_agents(
    rendered: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    score = exposure(rendered, DASHBOARD_UNIT.name)
    with capsys.disabled():
        print(f"\nsystemd-analyze security {DASHBOARD_UNIT.name}: exposure {score}")
    assert score <= MAX_AGENT_EXPOSURE
    text = DASHBOARD_UNIT.read_text()
    for line in ["User=camveil-dashboard", "CapabilityBoundingSet=", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/camveil-dashboard", "--bind 127.0.0.1"]:  # fmt: skip
        assert line in text, line
    sysusers = (DASHBOARD_UNIT.parent / "camveil-dashboard.sysusers.conf").read_text()
    assert "u camveil-dashboard " in sysusers


def test_provision_listener_has_no_network_and_low_exposure(rendered: Path) -> None:
    assert exposure(rendered, "camveil-provision.service") <= 1.0
    text = (SYSTEMD / "camveil-provision.service").read_text()
    assert "PrivateNetwork=yes" in text
    assert "ConditionPathExists=!/var/lib/camveil/provisioned" in text


def test_gadget_serial_unit_is_hardened(rendered: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It runs as root for configfs, but without capabilities, network or a writable system:
    only the one-line `load` step (modprobe, mount) is privileged."""
    score = exposure(rendered, "camveil-gadget-serial.service")
    with capsys.disabled():
        print(f"\nsystemd-analyze security camveil-gadget-serial.service: exposure {score}")
    assert score <= MAX_GADGET_EXPOSURE
    text = (SYSTEMD / "camveil-gadget-serial.service").read_text()
    assert "\nCapabilityBoundingSet=\n" in text
    assert "\nReadWritePaths=/sys/kernel/config\n" in text
    exec_lines = [line for line in text.splitlines() if line.startswith("Exec")]
    privileged = [line for line in exec_lines if re.match(r"Exec\w+=[-@:]*[+!]", line)]
    assert privileged == ["ExecStartPre=+/opt/camveil/systemd/camveil-gadget-serial.sh load"]


def test_agent_unit_contract() -> None:
    """The agent unit's settings (docs/INSTALL.md), literally: verify would not notice them gone."""
    text = (SYSTEMD / "camveil-agent.service").read_text()
    for line in [
        "Type=notify",
        "Restart=always",
        "User=camveil",
        "StateDirectory=camveil",
        "ConfigurationDirectory=camveil",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/camveil",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "DevicePolicy=closed",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
        "ConditionPathExists=/var/lib/camveil/provisioned",
    ]:
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^DeviceAllow=char-video4linux rw$", text, re.M)


def test_sysusers_and_tmpfiles_apply_to_an_image(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    sysusers = _run(
        _tool("systemd-sysusers"), f"--root={root}", str(SYSTEMD / "sysusers.d/camveil.conf")
    )
    assert sysusers.returncode == 0, sysusers.stderr
    passwd = (root / "etc/passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("camveil:"))
    uid = int(entry.split(":")[2])
    assert entry.endswith(":/var/lib/camveil:/usr/sbin/nologin")
    groups = (root / "etc/group").read_text()
    assert re.search(r"^video:x:\d+:camveil$", groups, re.M)
    assert re.search(r"^dialout:x:\d+:camveil$", groups, re.M)
    config = root / "etc/camveil/camveil.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[camera]\nsource = "rtsp://u:secret@cam/x"\n')
    config.chmod(0o644)  # as an older install.sh left it
    tmpfiles = _run(
        _tool("systemd-tmpfiles"),
        f"--root={root}",
        "--create",
        str(SYSTEMD / "tmpfiles.d/camveil.conf"),
    )
    assert tmpfiles.returncode == 0, tmpfiles.stderr
    state = (root / "var/lib/camveil").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (uid, 0o700)
    assert ((root / "etc/camveil").stat().st_mode & 0o777) == 0o755
    gid = int(entry.split(":")[3])
    assert (config.stat().st_uid, config.stat().st_gid) == (0, gid)
    assert config.stat().st_mode & 0o777 == 0o640  # readable by the camveil group only


def test_gadget_script_builds_an_acm_gadget(tmp_path: Path) -> None:
    configfs = tmp_path / "configfs"
    (configfs / "usb_gadget").mkdir(parents=True)
    udc = tmp_path / "udc"
    (udc / "fe980000.usb").mkdir(parents=True)
    serial = tmp_path / "serial-number"
    serial.write_bytes(b"10000000abcdef01\x00")
    env = dict(os.environ, CONFIGFS=str(configfs), UDC_CLASS=str(udc), SERIAL_FILE=str(serial))
    script = str(SYSTEMD / "camveil-gadget-serial.sh")
    load = subprocess.run([script, "load"], env=env, capture_output=True, text=True, check=False)
    assert load.returncode == 0, load.stderr  # a test configfs: nothing to load or mount
    start = subprocess.run([script, "start"], env=env, capture_output=True, text=True, check=False)
    assert start.returncode == 0, start.stderr
    g = configfs / "usb_gadget/camveil"
    assert (g / "UDC").read_text().strip() == "fe980000.usb"
    assert (g / "strings/0x409/serialnumber").read_text().strip() == "10000000abcdef01"
    assert (g / "configs/c.1/acm.usb0").resolve() == (g / "functions/acm.usb0").resolve()
    again = subprocess.run([script, "start"], env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "already bound" in again.stdout
    stop = subprocess.run([script, "stop"], env=env, capture_output=True, text=True, check=False)
    assert stop.returncode == 0, stop.stderr
    assert not (g / "configs/c.1/acm.usb0").exists()


def test_gadget_script_explains_a_missing_controller(tmp_path: Path) -> None:
    configfs = tmp_path / "configfs"
    (configfs / "usb_gadget").mkdir(parents=True)
    env = dict(os.environ, CONFIGFS=str(configfs), UDC_CLASS=str(tmp_path / "none"))
    result = subprocess.run(
        [str(SYSTEMD / "camveil-gadget-serial.sh"), "start"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "dtoverlay=dwc2" in result.stderr
