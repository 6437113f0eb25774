"""The status LED: a pattern an installer can read without a screen ("is this box publishing?").

The unit shows one of a few patterns (:data:`PATTERNS`) on a board LED:

============  =====================================  =========================================
pattern       looks like                              means
============  =====================================  =========================================
``ok``        steady on                               connected to the broker, publishing
``starting``  one short flash every 2 s               started, not connected yet
``unreachable`` even blink, once a second             the broker cannot be reached (down,
                                                      wrong host or port, no network)
``refused``   fast blink, 5 times a second            the broker refuses this unit (TLS
                                                      handshake, revoked certificate, ACL)
``off``       off                                     the agent stopped
============  =====================================  =========================================

Drivers (:class:`LedDriver`): :class:`SysfsLed` writes the kernel's LED class files
(``/sys/class/leds/<name>/{trigger,brightness}``: the Raspberry Pi's green ``ACT`` LED, any
``gpio-leds`` LED in the device tree), :class:`GpioLed` drives an LED on a GPIO pin through
gpiozero (import-guarded: Raspberry Pi OS ships ``python3-gpiozero``), :class:`NullLed` is the
board without one. :class:`StatusLight` plays a pattern on a driver from its own thread; a
driver that fails is logged once and the light goes dark: the LED never stops the unit.

The sysfs files belong to root; the udev rule ``systemd/udev/99-camveil-status-led.rules``
gives the ``camveil`` group write access to ``ACT``'s and ``led0``'s, and the agent's unit
lists them in ``ReadWritePaths`` (``ProtectKernelTunables`` makes the rest of /sys read-only).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

from contract.errors import ConfigError

logger = logging.getLogger(__name__)

LED_ROOT: Final = Path("/sys/class/leds")
AUTO_NAMES: Final = ("ACT", "led0")
"""LEDs that ``kind = "auto"`` uses, first found (Raspberry Pi: ``ACT``; older kernels:
``led0``). Other boards get no LED unless the config names one."""


@dataclasses.dataclass(frozen=True)
class Pattern:
    """A cycle of (on, seconds) steps, repeated while the pattern is shown."""

    name: str
    steps: tuple[tuple[bool, float], ...]

    def __post_init__(self) -> None:
        if not self.steps or any(s <= 0 for _, s in self.steps):
            raise ValueError(f"pattern {self.name!r} needs steps of positive duration")

    @property
    def steady(self) -> bool:
        return len({on for on, _ in self.steps}) == 1


PATTERNS: Final = {
    "ok": Pattern("ok", ((True, 1.0),)),
    "starting": Pattern("starting", ((True, 0.1), (False, 1.9))),
    "unreachable": Pattern("unreachable", ((True, 0.5), (False, 0.5))),
    "refused": Pattern("refused", ((True, 0.1), (False, 0.1))),
    "off": Pattern("off", ((False, 1.0),)),
}


@dataclasses.dataclass(frozen=True)
class LedConfig:
    """``[status_led]``: which LED shows the unit's link state."""

    kind: str = "auto"
    """``auto`` (the board's ``ACT``/``led0`` LED when the agent may write it, else none),
    ``sysfs`` (the LED named ``name`` under /sys/class/leds), ``gpio`` (an LED on GPIO ``pin``,
    through gpiozero) or ``none``."""
    name: str = "ACT"
    """The LED's name under /sys/class/leds (``kind = "sysfs"``)."""
    pin: int = -1
    """The BCM GPIO number of the LED (``kind = "gpio"``)."""
    active_high: bool = True
    """False when the GPIO pin sinks the LED's current (LED lit at low level)."""

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "sysfs", "gpio", "none"):
            raise ConfigError(
                f'[status_led] kind must be "auto", "sysfs", "gpio" or "none", got {self.kind!r}'
            )
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"[status_led] name must be an LED name, got {self.name!r}")
        if self.kind == "gpio" and not 0 <= self.pin <= 53:
            raise ConfigError(
                f'[status_led] kind = "gpio" needs pin = the LED\'s BCM GPIO number (0-53), '
                f"got {self.pin}"
            )


class LedDriver(Protocol):
    """One LED: ``set(True)`` lights it."""

    @property
    def name(self) -> str: ...

    def set(self, on: bool) -> None: ...

    def close(self) -> None: ...


class NullLed:
    """No LED on this board."""

    name = "none"

    def set(self, on: bool) -> None:
        pass

    def close(self) -> None:
        pass


class SysfsLed:
    """An LED of the kernel's LED class. Opening it switches its trigger to ``none`` (the unit
    drives it) and remembers the old trigger, which :meth:`close` puts back."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.name = f"sysfs:{path.name}"
        try:
            self._max = int((path / "max_brightness").read_text(encoding="ascii").strip() or "1")
            listed = (path / "trigger").read_text(encoding="ascii")
            self._previous = _current_trigger(listed)
            (path / "trigger").write_text("none", encoding="ascii")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"status LED {path}: cannot take it over ({exc})") from exc
        self._max = max(1, self._max)

    def set(self, on: bool) -> None:
        (self._path / "brightness").write_text(str(self._max if on else 0), encoding="ascii")

    def close(self) -> None:
        try:
            (self._path / "brightness").write_text("0", encoding="ascii")
            if self._previous and self._previous != "none":
                (self._path / "trigger").write_text(self._previous, encoding="ascii")
        except OSError as exc:
            logger.debug("status LED %s: could not restore its trigger: %s", self._path, exc)


def _current_trigger(listed: str) -> str:
    """The selected trigger of a sysfs ``trigger`` file (``none [mmc0] timer`` -> ``mmc0``)."""
    for word in listed.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return listed.strip()


class GpioLed:
    """An LED on a GPIO pin, through gpiozero (Raspberry Pi OS: ``apt install python3-gpiozero``;
    the agent's venv sees it through system site packages)."""

    def __init__(self, pin: int, active_high: bool = True) -> None:
        try:
            from gpiozero import LED  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                '[status_led] kind = "gpio" needs gpiozero (apt install python3-gpiozero)'
            ) from exc
        try:
            self._led = LED(pin, active_high=active_high, initial_value=False)
        except Exception as exc:  # gpiozero raises its own error classes per pin factory
            raise ConfigError(f"status LED on GPIO {pin}: {exc}") from exc
        self.name = f"gpio:{pin}"

    def set(self, on: bool) -> None:
        if on:
            self._led.on()
        else:
            self._led.off()

    def close(self) -> None:
        self._led.close()


def open_led(config: LedConfig, root: Path | None = None) -> LedDriver:
    """The driver ``config`` asks for. ``auto`` gives :class:`NullLed` when the board has no LED
    the agent may write; an LED named explicitly that cannot be opened is a ConfigError that
    says why (the caller decides whether that stops anything: the daemon only logs it)."""
    root = LED_ROOT if root is None else root
    if config.kind == "none":
        return NullLed()
    if config.kind == "gpio":
        return GpioLed(config.pin, config.active_high)
    names: Sequence[str] = AUTO_NAMES if config.kind == "auto" else (config.name,)
    for name in names:
        path = root / name
        if not (path / "brightness").exists():
            continue
        writable = os.access(path / "brightness", os.W_OK) and os.access(path / "trigger", os.W_OK)
        if not writable:
            if config.kind == "auto":
                logger.info(
                    "status LED %s is there but not writable by this user (install the udev "
                    "rule 99-camveil-status-led.rules); no LED patterns",
                    path,
                )
                return NullLed()
            raise ConfigError(
                f"status LED {path} is not writable by this user: install "
                "systemd/udev/99-camveil-status-led.rules (gives the camveil group write access)"
            )
        return SysfsLed(path)
    if config.kind == "auto":
        return NullLed()
    raise ConfigError(
        f"status LED {root / config.name} does not exist (LEDs here: "
        f"{', '.join(sorted(p.name for p in _listed(root))) or 'none'})"
    )


def _listed(root: Path) -> list[Path]:
    try:
        return list(root.iterdir())
    except OSError:
        return []


class StatusLight:
    """Plays one pattern at a time on ``driver`` from a daemon thread.

    :meth:`show` switches pattern (the new one starts at its first step); a driver error is
    logged once and ends the light (the LED is advisory; the unit carries on).
    """

    def __init__(self, driver: LedDriver) -> None:
        self._driver = driver
        self._pattern = PATTERNS["off"]
        self._changed = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="status-led", daemon=True)
        self._thread.start()

    @property
    def pattern(self) -> str:
        return self._pattern.name

    def show(self, name: str) -> None:
        pattern = PATTERNS[name]
        with self._lock:
            if pattern is self._pattern:
                return
            self._pattern = pattern
        logger.debug("status LED %s: %s", self._driver.name, name)
        self._changed.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._changed.clear()
            pattern = self._pattern
            for on, seconds in pattern.steps:
                if not self._apply(on):
                    return
                if self._changed.wait(seconds) or self._stopped.is_set():
                    break
            else:
                if pattern.steady:
                    self._changed.wait()

    def _apply(self, on: bool) -> bool:
        try:
            self._driver.set(on)
        except OSError as exc:
            self.failed = True
            logger.warning("status LED %s stopped: %s", self._driver.name, exc)
            return False
        return True

    def close(self) -> None:
        """Stop the thread, switch the LED off and give it back (sysfs: its old trigger)."""
        self._stopped.set()
        self._changed.set()
        self._thread.join(timeout=2.0)
        try:
            self._driver.close()
        except OSError as exc:
            logger.debug("status LED %s: close failed: %s", self._driver.name, exc)
