"""The station's revoked units (``revocations.json``), re-read when the file changes.

``camveil station revoke`` puts a unit's certificate on the broker's CRL, removes it from the
trusted devices and records it in ``revocations.json`` (``{"version": 1, "revoked": {device:
{"serial", "revoked_at", "reason"}}}``). The dashboard reads that record so that a revoked unit
is shown as revoked, with when and why, instead of as merely offline. A file that cannot be read
or parsed keeps the last good list (said once in the log); a missing file means none revoked.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

logger = logging.getLogger(__name__)

_NONE: Mapping[str, Revoked] = MappingProxyType({})


@dataclass(frozen=True)
class Revoked:
    """One revoked unit, as the station recorded it."""

    device: str
    revoked_at: str
    """ISO 8601 time of the revocation (the station's clock)."""
    reason: str
    serial: str
    """The revoked certificate's serial number (hex)."""


def parse_revocations(text: str) -> dict[str, Revoked]:
    """The revoked units of a ``revocations.json`` text; ValueError when it is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError("not a version 1 revocations file")
    revoked = data.get("revoked")
    if not isinstance(revoked, dict):
        raise ValueError("'revoked' is not a map")
    out: dict[str, Revoked] = {}
    for device, entry in revoked.items():
        if not isinstance(entry, dict):
            raise ValueError(f"entry for {device!r} is not a map")
        out[str(device)] = Revoked(
            device=str(device),
            revoked_at=str(entry.get("revoked_at", "")),
            reason=str(entry.get("reason", "")),
            serial=str(entry.get("serial", "")),
        )
    return out


class RevocationFile:
    """``revocations.json`` at ``path`` (None: no station, nothing is ever revoked), re-read when
    its size or modification time changes. :meth:`current` is cheap: one ``stat``."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._current: Mapping[str, Revoked] = _NONE
        self._complained: tuple[int, int] | None = None

    def current(self) -> Mapping[str, Revoked]:
        if self._path is None:
            return _NONE
        with self._lock:
            try:
                st = self._path.stat()
            except FileNotFoundError:
                self._seen, self._current = None, _NONE
                return self._current
            except OSError as exc:
                self._complain((-1, -1), f"cannot stat it ({exc.strerror})")
                return self._current
            mark = (st.st_mtime_ns, st.st_size)
            if mark == self._seen:
                return self._current
            try:
                parsed = parse_revocations(self._path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                self._complain(mark, str(exc))
                return self._current
            self._seen, self._current = mark, MappingProxyType(parsed)
            return self._current

    def _complain(self, mark: tuple[int, int], why: str) -> None:
        if self._complained != mark:
            self._complained = mark
            logger.warning(
                "revocations file %s unreadable (%s); showing the last good list", self._path, why
            )
