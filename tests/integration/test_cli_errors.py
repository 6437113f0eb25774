"""Bad input at the command line: one line on stderr that names the file, option or broker and
the fix, exit status 2, never a traceback (issue 11). Each case runs ``python -m camveil`` as a
subprocess, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from contract.envelope.keys import Identity, save_peers
from provisioning.devbroker import HOST, free_port
from provisioning.station import init_station

ROOT = Path(__file__).resolve().parents[2]


def camveil(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-m", "camveil", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd, env=env,
    )  # fmt: skip


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line; fails on anything else (traceback, usage block, library noise)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stdout == ""
    return lines[0]


@pytest.fixture
def station(tmp_path: Path) -> Path:
    return init_station(tmp_path / "station").root


def _utf16_config(tmp_path: Path) -> list[str]:
    path = tmp_path / "camveil.toml"
    path.write_bytes('[camera]\nkind = "synthetic"\n'.encode("utf-16"))  # with its BOM
    return ["run", "--config", str(path)]


def _folder_config(tmp_path: Path) -> list[str]:
    (tmp_path / "conf").mkdir()
    return ["run", "--config", str(tmp_path / "conf")]


def _a_file(tmp_path: Path) -> str:
    path = tmp_path / "notes.txt"
    path.write_text("not a station\n", encoding="utf-8")
    return str(path)


def _station_without_crl(tmp_path: Path) -> list[str]:
    root = init_station(tmp_path / "old-station").root
    (root / "broker" / "crl.pem").unlink()  # as a station from before revocation support
    return ["station", "crl", str(root), "--out", str(tmp_path / "crl.pem")]


def _photo(tmp_path: Path) -> str:
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(path)
    return str(path)


# (argv builder, words the one line must contain)
CASES: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "station list: missing folder": (
        lambda t: ["station", "list", str(t / "absent")],
        ("absent: no such folder", "camveil station init"),
    ),
    "station list: a file": (
        lambda t: ["station", "list", _a_file(t)],
        ("notes.txt is a file, not a station directory",),
    ),
    "station crl --out FOLDER": (
        lambda t: ["station", "crl", str(init_station(t / "st").root), "--out", str(t)],
        ("is a folder", "give a file name"),
    ),
    "station renew --jobs 0": (
        lambda t: ["station", "renew", str(t), "cv-0123456789abcdef", "--jobs", "0"],
        ("--jobs must be 1 to 64, not 0",),
    ),
    "station crl: no CRL yet": (_station_without_crl, ("crl.pem does not exist", "revoke")),
    "run --frames -1": (
        lambda t: ["run", "--frames", "-1"],
        ("--frames", "-1 is negative", "camveil run --help"),
    ),
    "run --frames x": (lambda t: ["run", "--frames", "x"], ("--frames", "'x'")),
    "run --config FOLDER": (_folder_config, ("conf is a directory", "path of the file")),
    "run --config UTF-16": (_utf16_config, ("camveil.toml", "UTF-16", "UTF-8")),
    "redact --margin 10": (
        lambda t: ["redact", "--out", str(t / "o"), "--margin", "10", _photo(t)],
        ("--margin 10.0", "between 0 and 4"),
    ),
    "redact --threshold 2": (
        lambda t: ["redact", "--out", str(t / "o"), "--threshold", "2", _photo(t)],
        ("--threshold 2.0", "between 0 and 1"),
    ),
    "redact --tile 10": (
        lambda t: ["redact", "--out", str(t / "o"), "--tile", "10", _photo(t)],
        ("--tile 10", "at least 64"),
    ),
    "unknown subcommand": (lambda t: ["sation"], ("invalid choice", "'sation'")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    argv, words = CASES[case]
    line = error_line(camveil(*argv(tmp_path), cwd=tmp_path))
    assert line.startswith("camveil"), line
    for word in words:
        assert word in line, line


def test_station_list_on_a_foreign_folder_creates_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ca").mkdir()  # half a station is still not one
    line = error_line(camveil("station", "list", str(folder), cwd=tmp_path))
    assert "is not a station directory" in line
    assert "station.json" in line and "inventory.sqlite" in line
    assert sorted(p.name for p in folder.rglob("*")) == ["ca"]  # no inventory.sqlite made


def test_station_list_on_a_station_works(station: Path, tmp_path: Path) -> None:
    done = camveil("station", "list", str(station), cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout == ""  # no units yet


def test_station_init_names_the_devices_file_the_listener_needs(tmp_path: Path) -> None:
    done = camveil("station", "init", str(tmp_path / "st"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path / 'st' / 'devices.cbor'} (camveil listen --devices)" in done.stdout
    assert "devices.json" not in done.stdout


def test_listen_given_devices_json_says_which_file(station: Path, tmp_path: Path) -> None:
    done = camveil(
        "listen", "--broker", f"mqtts://{HOST}:{free_port()}", "--no-db", "--count", "1",
        "--ca", str(station / "ca" / "ca.crt"),
        "--cert", str(station / "clients" / "backend-dashboard.crt"),
        "--key", str(station / "clients" / "backend-dashboard.key"),
        "--identity", str(station / "backend.key"),
        "--group-file", str(station / "share-group"),
        "--devices", str(station / "devices.json"), cwd=tmp_path,
    )  # fmt: skip
    line = error_line(done)
    assert "devices.json" in line and "devices.cbor" in line, line


def test_cmd_without_a_broker_names_host_and_port(station: Path, tmp_path: Path) -> None:
    save_peers(station / "devices.cbor", [Identity.generate("cv-0000000000000000").public()])
    port = free_port()  # nothing listens there
    done = camveil(
        "cmd", "--station", str(station), "--device", "cv-0000000000000000",
        "--broker", f"mqtts://{HOST}:{port}", "--timeout", "2", "snapshot", cwd=tmp_path,
    )  # fmt: skip
    line = error_line(done)
    assert f"{HOST}:{port}" in line, line
