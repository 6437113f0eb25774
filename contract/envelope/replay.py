"""Replay protection: a sliding window over each stream's monotonic sequence numbers.

A stream is ``(signer kid, topic)``: the device talking on one of its topics, or an operator key
commanding one device. Senders number their messages with one counter that only grows
(persisted across restarts, so numbers are never reused). The guard remembers, per stream, the
highest accepted seq and a bitmap of the ``window`` numbers below it, as in IPsec/DTLS (RFC 4303
§3.4.3): a seq above the highest is accepted and slides the window; one inside the window is
accepted once (out-of-order QoS 1 delivery, outbox retries after a reconnect); a duplicate, or one
that has fallen out of the window, raises :class:`~contract.errors.ReplayError`.

Memory is one int and one ``window``-bit int per stream; streams only come into being after a
signature verified under a trusted key, so their number is bounded by the trusted signers and
the topics they use.
:meth:`ReplayGuard.snapshot` / :meth:`ReplayGuard.restore` let a caller persist the state.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Final

from contract.errors import ReplayError

DEFAULT_WINDOW: Final = 1024
StreamKey = tuple[str, str]


class ReplayGuard:
    """Accept each (stream, seq) at most once, within a window of recent seqs per stream."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError("replay window must be at least 1")
        self._window = window
        self._streams: dict[StreamKey, tuple[int, int]] = {}  # stream -> (highest, bitmap)
        self._lock = threading.Lock()

    @property
    def window(self) -> int:
        return self._window

    def check(self, stream: StreamKey, seq: int) -> None:
        """Raise :class:`ReplayError` if ``seq`` would be refused, without recording it."""
        with self._lock:
            self._verdict(stream, seq)

    def accept(self, stream: StreamKey, seq: int) -> None:
        """Record ``seq`` as seen on ``stream``; :class:`ReplayError` if seen or too old."""
        with self._lock:
            highest, bitmap = self._verdict(stream, seq)
            if highest < 0 or seq > highest:
                shift = seq - highest if highest >= 0 else self._window
                bitmap = ((bitmap << shift) | 1) & self._mask()
                highest = seq
            else:
                bitmap |= 1 << (highest - seq)
            self._streams[stream] = (highest, bitmap)

    def highest(self, stream: StreamKey) -> int | None:
        """The highest seq accepted on ``stream`` so far, or None."""
        with self._lock:
            entry = self._streams.get(stream)
        return None if entry is None else entry[0]

    def snapshot(self) -> dict[StreamKey, tuple[int, int]]:
        """Copy of the state: stream -> (highest seq, window bitmap; bit i = highest - i seen)."""
        with self._lock:
            return dict(self._streams)

    def restore(self, state: Mapping[StreamKey, tuple[int, int]]) -> None:
        """Load a :meth:`snapshot` (e.g. after a restart), replacing the current state."""
        clean: dict[StreamKey, tuple[int, int]] = {}
        for stream, (highest, bitmap) in state.items():
            if highest < 0 or bitmap < 0:
                raise ValueError("replay state holds negative numbers")
            clean[stream] = (highest, bitmap & self._mask())
        with self._lock:
            self._streams = clean

    def _mask(self) -> int:
        return (1 << self._window) - 1

    def _verdict(self, stream: StreamKey, seq: int) -> tuple[int, int]:
        if seq < 0:
            raise ReplayError(f"negative seq {seq} on stream {stream!r}")
        highest, bitmap = self._streams.get(stream, (-1, 0))
        if highest < 0 or seq > highest:
            return highest, bitmap
        offset = highest - seq
        if offset >= self._window:
            raise ReplayError(
                f"seq {seq} on stream {stream!r} is older than the replay window "
                f"(highest {highest}, window {self._window})"
            )
        if bitmap >> offset & 1:
            raise ReplayError(f"seq {seq} on stream {stream!r} was already accepted")
        return highest, bitmap
