"""The transport's dispatcher: a thread that runs callbacks one at a time, in the order they were
submitted, so that no callback runs on paho's network thread or while a lock is held."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Dispatcher:
    """Runs submitted calls one at a time on its own thread (daemon). An exception in a call is
    logged and the next call runs. Constructor only stores; :meth:`start` starts the thread,
    :meth:`stop` ends it after the calls submitted before."""

    def __init__(self) -> None:
        self._events: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], None]) -> None:
        self._events.put(call)

    def stop(self, timeout: float) -> None:
        """Let the thread finish the calls already submitted, then end; wait up to ``timeout``
        seconds for it (not when called from a callback, i.e. on the thread itself)."""
        self._events.put(None)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            call = self._events.get()
            if call is None:
                return
            try:
                call()
            except Exception:
                logger.exception("mqtt: a transport callback raised")
