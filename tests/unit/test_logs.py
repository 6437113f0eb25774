"""camveil.cli.logs: syslog priority prefixes for the journal, held-back repeats, progress bars
only on a terminal."""

from __future__ import annotations

import io
import logging
import os
import pty
from pathlib import Path

import pytest

from camveil.cli.logs import (
    JournalFormatter,
    RepeatFilter,
    journal_stream,
    progress_on,
    setup_logging,
    syslog_priority,
)


def record(level: int, msg: str, *args: object, name: str = "agent.x") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args or None, None)


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (logging.CRITICAL, 2),
        (logging.ERROR, 3),
        (logging.WARNING, 4),
        (25, 5),
        (logging.INFO, 6),
        (logging.DEBUG, 7),
        (5, 7),
    ],
)
def test_syslog_priorities(level: int, priority: int) -> None:
    assert syslog_priority(level) == priority


def test_journal_formatter_prefixes_every_line() -> None:
    fmt = JournalFormatter()
    assert fmt.format(record(logging.WARNING, "mqtt: connect to %s failed", "h:8883")) == (
        "<4>agent.x: mqtt: connect to h:8883 failed"
    )
    assert fmt.format(record(logging.INFO, "connected")) == "<6>agent.x: connected"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = record(logging.ERROR, "failed")
        rec.exc_info = sys.exc_info()
    lines = fmt.format(rec).splitlines()
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeats_are_held_back_and_counted() -> None:
    clock = Clock()
    limit = RepeatFilter(600.0, clock=clock)
    warn = "serial port failed (%s); reopening in %.0f s"
    assert limit.filter(record(logging.WARNING, warn, "no such port", 1.0))
    shown = 0
    for _ in range(599):  # one a second for ten minutes, less one
        clock.now += 1
        shown += limit.filter(record(logging.WARNING, warn, "no such port", 1.0))
    assert shown == 0
    # other text, other values, other loggers and lower levels are not held back
    assert limit.filter(record(logging.WARNING, warn, "permission denied", 1.0))
    assert limit.filter(record(logging.WARNING, warn, "no such port", 1.0, name="other"))
    assert limit.filter(record(logging.ERROR, warn, "no such port", 1.0))
    assert all(limit.filter(record(logging.INFO, "connected")) for _ in range(5))
    clock.now += 1  # ten minutes after the first: shown again, with the count
    again = record(logging.WARNING, warn, "no such port", 1.0)
    assert limit.filter(again)
    assert again.getMessage() == (
        "serial port failed (no such port); reopening in 1 s (and 599 times more in 10 min)"
    )
    clock.now += 1
    assert not limit.filter(record(logging.WARNING, warn, "no such port", 1.0))


def test_repeat_memory_is_bounded() -> None:
    limit = RepeatFilter(600.0, clock=Clock(), max_keys=3)
    for i in range(10):
        assert limit.filter(record(logging.WARNING, "bad %d", i))
    assert len(limit._seen) == 3
    assert limit.filter(record(logging.WARNING, "bad %d", 0))  # forgotten, so shown


def test_unhashable_arguments() -> None:
    limit = RepeatFilter(600.0, clock=Clock())
    assert limit.filter(record(logging.WARNING, "got %s", {"a": [1]}))
    assert not limit.filter(record(logging.WARNING, "got %s", {"a": [1]}))


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal_stream(stream, env)
        assert not journal_stream(stream, {})
        assert not journal_stream(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not journal_stream(stream, {"JOURNAL_STREAM": "garbage"})
    assert not journal_stream(io.StringIO(), env)  # no file descriptor


def test_a_terminal_is_never_the_journal_and_gets_progress_bars() -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            st = os.fstat(slave)
            assert not journal_stream(tty, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
            assert progress_on(tty)
    finally:
        os.close(master)
        os.close(slave)
    assert not progress_on(io.StringIO())


def test_setup_logging_in_journal_mode(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    for handler in saved[0]:
        root.removeHandler(handler)  # pytest's, so that setup_logging takes over
    try:
        with (tmp_path / "log").open("w") as stream:
            st = os.fstat(stream.fileno())
            env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
            assert setup_logging(0, stream=stream, environ=env)
            log = logging.getLogger("provisioning.unit")
            log.info("provisioned as %s", "cv-1")
            log.debug("not shown")
            for _ in range(5):
                log.warning("serial port failed (%s)", "gone")
            assert not setup_logging(0, stream=stream, environ={})  # replaces its own handler
            log.info("not shown on a plain stream by default")
            log.warning("plain")
        text = (tmp_path / "log").read_text()
        assert text.splitlines() == [
            "<6>provisioning.unit: provisioned as cv-1",
            "<4>provisioning.unit: serial port failed (gone)",
            "WARNING provisioning.unit: plain",
        ]
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
