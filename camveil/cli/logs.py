"""Logging for the command line and for systemd's journal.

- On a terminal: ``LEVEL name: message`` at WARNING (``-v`` INFO, ``-vv`` DEBUG).
- Under systemd (stderr is the journal's stream, ``JOURNAL_STREAM``): every line starts with its
  syslog priority, ``<4>`` for a warning (sd-daemon(3); journald's ``SyslogLevelPrefix=``, on by
  default, turns it into the entry's priority, so ``journalctl -p warning`` filters), no
  timestamp (the journal adds one), and INFO is shown by default: the lifecycle lines
  (provisioned as ..., connecting to host:port, connected) belong in a unit's journal, and
  ``journalctl -p notice`` hides them again.
- Everywhere: an identical warning repeated (same logger, level and text) is shown once,
  then at most once per ``REPEAT_INTERVAL`` with the number held back in between (a unit without
  its USB gadget would otherwise log the same warning every second, forever).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final, TextIO

#: seconds between two copies of the same repeated warning
REPEAT_INTERVAL: Final = 600.0

#: logging level -> syslog priority (sd-daemon.h: SD_CRIT 2, SD_ERR 3, SD_WARNING 4, SD_NOTICE 5,
#: SD_INFO 6, SD_DEBUG 7)
_PRIORITIES: Final = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4))


def syslog_priority(levelno: int) -> int:
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    if levelno > logging.INFO:
        return 5  # between INFO and WARNING: notice
    return 6 if levelno >= logging.INFO else 7


class JournalFormatter(logging.Formatter):
    """``<N>name: message``, the prefix on every line (a traceback's lines too: the journal
    makes one entry per line)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


class RepeatFilter(logging.Filter):
    """Shows a WARNING-or-worse record, then holds back exact repeats of it (same logger,
    level and text) for ``interval`` seconds; the next one shown says
    how many were held back. Lower levels pass untouched. Remembers ``max_keys`` messages."""

    def __init__(
        self,
        interval: float = REPEAT_INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        # key -> (when last shown, repeats held back since)
        self._seen: OrderedDict[tuple[object, ...], tuple[float, int]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self._interval:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        held = 0 if seen is None else seen[1]
        self._seen[key] = (now, 0)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)
        if held:
            minutes = self._interval / 60
            record.msg = f"{record.getMessage()} (and {held} times more in {minutes:g} min)"
            record.args = None
        return True


def journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal's own stream: ``JOURNAL_STREAM`` (``dev:inode``, set
    by systemd for a service whose stderr goes to the journal) names its file, and it is not a
    terminal."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino) and not stream.isatty()


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that a second :func:`setup_logging` replaces it."""


def setup_logging(
    verbose: int = 0,
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Configure the root logger for a camveil command; returns True in journal mode. Like
    :func:`logging.basicConfig`, leaves a root logger alone that has handlers of someone else
    (pytest's, when a test calls ``main``)."""
    stream = stream if stream is not None else sys.stderr
    journal = journal_stream(stream, os.environ if environ is None else environ)
    root = logging.getLogger()
    if any(not isinstance(h, _Handler) for h in root.handlers):
        return journal
    handler = _Handler(stream)
    handler.addFilter(RepeatFilter())
    if journal:
        handler.setFormatter(JournalFormatter())
        level = logging.INFO - 10 * min(verbose, 1)
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        level = logging.WARNING - 10 * min(verbose, 2)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return journal


def progress_on(stream: TextIO | None = None) -> bool:
    """Progress bars only on a terminal (never into the journal or a log file)."""
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
