"""Board information: CPU temperature (and the board's serial number when it has one).

:class:`BoardInfo` is the edge; :class:`LinuxBoard` reads sysfs/procfs (Raspberry Pi, Jetson, any
Linux box), :class:`FakeBoard` returns what it was given (tests, the demo). Nothing here raises
for a missing sensor: an absent or unreadable value is ``None`` (health reports null).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final, Protocol

logger = logging.getLogger(__name__)

THERMAL_ROOT: Final = Path("/sys/class/thermal")
DEVICE_TREE_SERIAL: Final = Path("/proc/device-tree/serial-number")
# zone types that measure the CPU/SoC, best first (Pi: cpu-thermal; Jetson: CPU-therm; x86:
# x86_pkg_temp); any other zone is used only when none of these exists
_CPU_ZONE_TYPES: Final = ("cpu-thermal", "cpu-therm", "cpu_thermal", "soc_thermal", "x86_pkg_temp")


class BoardInfo(Protocol):
    """What the health event needs to know about the board."""

    def cpu_temp_c(self) -> float | None:
        """CPU/SoC temperature in degrees Celsius, or None when there is no readable sensor."""
        ...

    def serial(self) -> str | None:
        """The board's serial number (device tree), or None."""
        ...


class LinuxBoard:
    """Reads ``/sys/class/thermal/thermal_zone*/{type,temp}`` (millidegrees) and the device-tree
    serial number. ``root`` and ``serial_path`` exist for tests."""

    def __init__(self, root: Path = THERMAL_ROOT, serial_path: Path = DEVICE_TREE_SERIAL) -> None:
        self._root = root
        self._serial_path = serial_path
        self._zone: Path | None = None

    def _find_zone(self) -> Path | None:
        zones: dict[str, Path] = {}
        try:
            candidates = sorted(self._root.glob("thermal_zone*"))
        except OSError:
            return None
        for zone in candidates:
            try:
                kind = (zone / "type").read_text(encoding="ascii", errors="replace").strip()
            except OSError:
                continue
            zones.setdefault(kind.lower(), zone)
        for kind in _CPU_ZONE_TYPES:
            if kind in zones:
                return zones[kind]
        return next(iter(zones.values()), None)

    def cpu_temp_c(self) -> float | None:
        if self._zone is None:
            self._zone = self._find_zone()
            if self._zone is None:
                return None
        try:
            raw = (self._zone / "temp").read_text(encoding="ascii").strip()
            value = int(raw) / 1000.0
        except (OSError, ValueError):
            self._zone = None  # look again next time (the zone may come back)
            return None
        if not -60.0 <= value <= 200.0:
            return None  # a disconnected sensor reads nonsense
        return round(value, 1)

    def serial(self) -> str | None:
        try:
            raw = self._serial_path.read_bytes()
        except OSError:
            return None
        text = raw.rstrip(b"\x00\n").decode("ascii", errors="replace").strip()
        return text or None


class FakeBoard:
    """A board that reports fixed values."""

    def __init__(self, temp_c: float | None = 42.0, serial: str | None = "fake-0001") -> None:
        self.temp_c = temp_c
        self._serial = serial

    def cpu_temp_c(self) -> float | None:
        return self.temp_c

    def serial(self) -> str | None:
        return self._serial
