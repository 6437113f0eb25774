"""hw.board: the Linux implementation reads sysfs thermal zones and never raises."""

from __future__ import annotations

from pathlib import Path

from hw.board import FakeBoard, LinuxBoard


def _zone(root: Path, n: int, kind: str, temp: str) -> None:
    zone = root / f"thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(temp + "\n")


def test_prefers_the_cpu_zone(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "acpitz", "30000")
    _zone(tmp_path, 1, "cpu-thermal", "51234")
    assert LinuxBoard(tmp_path, tmp_path / "none").cpu_temp_c() == 51.2


def test_falls_back_to_any_zone(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "acpitz", "27800")
    assert LinuxBoard(tmp_path).cpu_temp_c() == 27.8


def test_missing_or_garbage_is_none(tmp_path: Path) -> None:
    assert LinuxBoard(tmp_path / "absent").cpu_temp_c() is None
    _zone(tmp_path, 0, "cpu-thermal", "not a number")
    assert LinuxBoard(tmp_path).cpu_temp_c() is None
    _zone(tmp_path / "b", 0, "cpu-thermal", "999999999")
    assert LinuxBoard(tmp_path / "b").cpu_temp_c() is None


def test_serial_from_device_tree(tmp_path: Path) -> None:
    path = tmp_path / "serial-number"
    path.write_bytes(b"10000000abcdef01\x00")
    assert LinuxBoard(tmp_path, path).serial() == "10000000abcdef01"
    assert LinuxBoard(tmp_path, tmp_path / "none").serial() is None


def test_real_machine_does_not_raise() -> None:
    value = LinuxBoard().cpu_temp_c()
    assert value is None or -60 <= value <= 200


def test_fake() -> None:
    board = FakeBoard(temp_c=None)
    assert board.cpu_temp_c() is None
    assert board.serial() == "fake-0001"
