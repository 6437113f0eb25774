"""The status LED: config checks, the sysfs driver on an LED-class folder, patterns, wiring."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from agent.config import config_from_mapping
from agent.daemon.daemon import open_status_light
from agent.linkreport import LinkReport, led_pattern
from agent.transport import ConnectionEvent, ConnectionState
from contract.errors import ConfigError
from hw.led import PATTERNS, LedConfig, NullLed, StatusLight, SysfsLed, open_led


def _led(root: Path, name: str = "ACT", trigger: str = "none [mmc0] timer heartbeat") -> Path:
    """A folder laid out as the kernel's LED class lays out one LED."""
    path = root / name
    path.mkdir(parents=True)
    (path / "brightness").write_text("0\n")
    (path / "max_brightness").write_text("255\n")
    (path / "trigger").write_text(trigger + "\n")
    return path


def _seen(path: Path, seconds: float) -> set[str]:
    values = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        values.add((path / "brightness").read_text().strip())
        time.sleep(0.01)
    values.discard("")  # a regular file read mid-write (sysfs writes are atomic)
    return values


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"kind": "blink"}, 'kind must be "auto"'),
        ({"kind": "gpio"}, "needs pin"),
        ({"kind": "gpio", "pin": 99}, "needs pin"),
        ({"kind": "sysfs", "name": "../ACT"}, "must be an LED name"),
    ],
)
def test_bad_status_led_sections_are_refused_with_the_key(
    section: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping({"status_led": section})


def test_the_default_is_auto_and_a_board_without_an_led_gets_none(tmp_path: Path) -> None:
    config = config_from_mapping({})
    assert config.status_led == LedConfig(kind="auto")
    assert isinstance(open_led(config.status_led, root=tmp_path), NullLed)
    assert isinstance(open_led(LedConfig(kind="none"), root=tmp_path), NullLed)


def test_auto_takes_the_pi_act_led_over_and_gives_its_trigger_back(tmp_path: Path) -> None:
    path = _led(tmp_path)
    driver = open_led(LedConfig(), root=tmp_path)
    assert isinstance(driver, SysfsLed)
    assert (path / "trigger").read_text() == "none"  # the kernel no longer blinks it for mmc0
    driver.set(True)
    assert (path / "brightness").read_text() == "255"
    driver.set(False)
    assert (path / "brightness").read_text() == "0"
    driver.close()
    assert (path / "trigger").read_text() == "mmc0"


def test_an_led_named_in_the_config_that_is_not_there_says_which_are(tmp_path: Path) -> None:
    _led(tmp_path, "PWR")
    with pytest.raises(ConfigError, match=r"status_led|does not exist.*PWR"):
        open_led(LedConfig(kind="sysfs", name="green"), root=tmp_path)


def test_the_light_blinks_the_patterns_and_goes_dark_when_closed(tmp_path: Path) -> None:
    path = _led(tmp_path)
    light = StatusLight(open_led(LedConfig(), root=tmp_path))
    try:
        light.show("refused")  # 5 flashes a second
        assert _seen(path, 0.8) == {"0", "255"}
        light.show("ok")
        time.sleep(0.1)
        assert _seen(path, 0.4) == {"255"}
        assert light.pattern == "ok"
        light.show("unreachable")
        assert _seen(path, 1.5) == {"0", "255"}
    finally:
        light.close()
    assert (path / "brightness").read_text() == "0"
    assert (path / "trigger").read_text() == "mmc0"


def test_a_vanished_led_stops_the_light_not_the_unit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _led(tmp_path)
    light = StatusLight(open_led(LedConfig(), root=tmp_path))
    with caplog.at_level(logging.WARNING, logger="hw.led"):
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
        light.show("unreachable")
        deadline = time.monotonic() + 3
        while not light.failed and time.monotonic() < deadline:
            time.sleep(0.02)
    assert light.failed
    assert any("status LED sysfs:ACT stopped" in r.getMessage() for r in caplog.records)
    light.show("ok")  # still callable: the link report keeps feeding it
    light.close()


def test_the_daemon_carries_on_without_an_led_it_cannot_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="agent.daemon.daemon"):
        light = open_status_light(LedConfig(kind="sysfs", name="camveil-test-no-such-led"))
    light.show("ok")
    light.close()
    assert any("carrying on without it" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("reason", "pattern"),
    [
        ("ConnectionRefusedError: [Errno 111] Connection refused", "unreachable"),
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "refused"),
        ("CONNACK refused: Not authorized", "refused"),
        ("timed out", "unreachable"),
    ],
)
def test_link_failures_choose_the_pattern(reason: str, pattern: str) -> None:
    assert led_pattern(reason) == pattern
    assert pattern in PATTERNS


def test_the_link_report_drives_the_light() -> None:
    shown: list[str] = []
    report = LinkReport("broker:8883", lambda: 3, show=shown.append)
    report.on_event(ConnectionEvent(ConnectionState.CONNECT_FAILED, "Connection refused"))
    report.on_event(ConnectionEvent(ConnectionState.CONNECTED))
    report.on_event(ConnectionEvent(ConnectionState.DISCONNECTED, "CONNACK refused: banned"))
    assert shown == ["unreachable", "ok", "refused"]
