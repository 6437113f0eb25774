"""systemd readiness and watchdog pings, sent only while the agent is really working.

``camveil-agent.service`` is ``Type=notify`` with ``WatchdogSec=``: systemd waits for ``READY=1``
and restarts the agent when ``WATCHDOG=1`` stops arriving. A ping proves more than "the process
runs": :class:`Watchdog` sends it only while its health predicate holds, i.e.

- frames went through redaction within the last ``max_frame_age`` seconds (``last_frame_at``),
- the outbox can take writes (``outbox_writable``), and
- publishing from the outbox is not failing round after round (``publishing_ok``, optional):
  a publisher that keeps raising would otherwise leave events stuck behind a happy watchdog.

They come in as callables, so this module knows nothing of the pipeline or the outbox. While
unhealthy it sends only ``STATUS=unhealthy: <reason>`` (seen in ``systemctl status``); systemd then
restarts the agent after ``WatchdogSec``. The notification protocol is one datagram on the unix
socket named by ``$NOTIFY_SOCKET`` (``@name`` is an abstract socket), written with the stdlib.
Wiring (``__main__``) passes the environment in: no module here reads it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final

logger = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_AGE: Final = 10.0
DEFAULT_INTERVAL: Final = 5.0


class Notifier:
    """``sd_notify(3)``: one datagram per call to the socket in ``$NOTIFY_SOCKET`` (or nothing)."""

    def __init__(self, socket_path: str | None) -> None:
        self.socket_path = socket_path or None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``VAR=value`` lines; False if there is no socket or sending failed (logged once)."""
        if self.socket_path is None:
            return False
        address = self.socket_path
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(assignments).encode(), address)
        except OSError as exc:
            if not self._warned:
                logger.warning("cannot notify systemd at %s: %s", self.socket_path, exc)
                self._warned = True
            return False
        return True


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds when the watchdog is meant for ``pid``, else None."""
    usec = environ.get("WATCHDOG_USEC")
    owner = environ.get("WATCHDOG_PID")
    if not usec or (owner and owner != str(pid)):
        return None
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


@dataclass(frozen=True)
class Health:
    ok: bool
    status: str


class Watchdog:
    """Pings systemd while healthy; ``with Watchdog(...):`` runs it in a background thread."""

    def __init__(
        self,
        notifier: Notifier,
        *,
        last_frame_at: Callable[[], float | None],
        outbox_writable: Callable[[], bool],
        publishing_ok: Callable[[], bool] | None = None,
        max_frame_age: float = DEFAULT_MAX_FRAME_AGE,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self._last_frame_at = last_frame_at
        self._outbox_writable = outbox_writable
        self._publishing_ok = publishing_ok
        self._max_frame_age = max_frame_age
        self.interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = False
        self.pings = 0
        self.missed = 0

    def check(self) -> Health:
        """The health predicate; a raising callable counts as unhealthy."""
        try:
            last = self._last_frame_at()
            writable = self._outbox_writable()
            publishing = self._publishing_ok is None or self._publishing_ok()
        except Exception as exc:  # a probe that fails is a failed check, not a crash
            return Health(False, f"unhealthy: health probe failed ({type(exc).__name__})")
        if last is None:
            return Health(False, "unhealthy: no frame redacted yet")
        age = self._clock() - last
        if age > self._max_frame_age:
            return Health(False, f"unhealthy: no frame redacted for {age:.0f} s")
        if not writable:
            return Health(False, "unhealthy: outbox not writable")
        if not publishing:
            return Health(False, "unhealthy: publishing from the outbox keeps failing")
        return Health(True, f"running: last frame {age:.1f} s ago")

    def tick(self) -> Health:
        """Check once; send READY=1 (first time) and WATCHDOG=1 only when healthy."""
        health = self.check()
        if health.ok:
            lines = ["WATCHDOG=1", f"STATUS={health.status}"]
            if not self.ready:
                lines.insert(0, "READY=1")
                self.ready = True
            self._notifier.notify(*lines)
            self.pings += 1
        else:
            self.missed += 1
            self._notifier.notify(f"STATUS={health.status}")
            logger.warning("watchdog withheld: %s", health.status)
        return health

    def run(self) -> None:
        """Tick every ``interval`` seconds until :meth:`stop`."""
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()

    def __enter__(self) -> Watchdog:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._notifier.notify("STOPPING=1")
