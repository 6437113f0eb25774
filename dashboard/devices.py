"""The station's trusted-device list (a peers file, ``devices.cbor``), re-read while it changes.

The station rewrites the file atomically (write, fsync, rename) whenever it provisions a unit, so a
new inode or mtime means a new list. :class:`DevicesFile` polls ``stat()`` (default every second;
no extra dependency, and a rename is seen on every file system) and calls ``on_change`` with the
new :class:`~contract.envelope.keys.PeerKeys`. A file that cannot be read or parsed (missing for a
moment, damaged) keeps the previous list and is logged once per distinct problem; it is tried
again on the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract.envelope.keys import PeerKeys, load_peers
from contract.errors import KeyFileError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InventoryChange:
    """What a re-read of the device list changed."""

    added: frozenset[str]
    removed: frozenset[str]
    """Devices no longer trusted (revoked or deleted from the inventory)."""
    rekeyed: frozenset[str]
    """Devices whose public keys changed (re-provisioned under the same id)."""
    devices: PeerKeys


def diff(old: PeerKeys, new: PeerKeys) -> InventoryChange:
    rekeyed = {
        d
        for d in set(old) & set(new)
        if bytes(old[d].verify_key) != bytes(new[d].verify_key)
        or bytes(old[d].encryption_key) != bytes(new[d].encryption_key)
    }
    return InventoryChange(
        added=frozenset(set(new) - set(old)),
        removed=frozenset(set(old) - set(new)),
        rekeyed=frozenset(rekeyed),
        devices=new,
    )


class DevicesFile:
    """Polls ``path``; ``on_change(peers)`` runs on the poller's thread after each change."""

    def __init__(
        self, path: Path, on_change: Callable[[PeerKeys], object], interval_s: float = 1.0
    ) -> None:
        self.path = path
        self._on_change = on_change
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple[int, int, int] | None = None
        self._problem: str | None = None
        self.reloads = 0

    def load(self) -> PeerKeys:
        """Read the file now (KeyFileError if unusable) and remember its identity."""
        stamp = self._stamp()
        peers = load_peers(self.path)
        self._seen = stamp
        return peers

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def poll(self) -> bool:
        """Check once; True if a changed list was loaded and handed to ``on_change``."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return False
        try:
            peers = load_peers(self.path)
        except KeyFileError as exc:
            if str(exc) != self._problem:
                self._problem = str(exc)
                logger.warning("devices file: keeping the previous list: %s", exc)
            return False
        self._problem = None
        self._seen = stamp
        self.reloads += 1
        self._on_change(peers)
        return True

    def start(self) -> None:
        if self._seen is None:
            self._seen = self._stamp()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="devices-file", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.poll()
            except Exception:  # a bug in a callback must not end the watch
                logger.exception("devices file: handling a change failed")

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)
