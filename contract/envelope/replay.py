"""Replay protection: a sliding window over each stream's monotonic sequence numbers
(:class:`ReplayGuard`, for what units publish), and an exact memory of unexpired commands
(:class:`CommandReplayGuard`, for what operators send to a unit).

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
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Protocol

from contract.errors import ReplayError, ReplayMemoryFullError

DEFAULT_WINDOW: Final = 1024
DEFAULT_MAX_COMMANDS: Final = 4096
StreamKey = tuple[str, str]


class ReplayCheck(Protocol):
    """What :func:`contract.envelope.open_envelope` asks of a replay guard: ``check`` before
    decrypting (no state change), ``accept`` once every other check has passed."""

    def check(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None: ...

    def accept(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None: ...


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

    def check(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None:
        """Raise :class:`ReplayError` if ``seq`` would be refused, without recording it."""
        with self._lock:
            self._verdict(stream, seq)

    def accept(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None:
        """Record ``seq`` as seen on ``stream``; :class:`ReplayError` if seen or too old.
        (``expires_at`` is not used: the window works on seqs alone.)"""
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


class StoreDecides:
    """A :class:`ReplayCheck` that refuses nothing: for a receiver whose own de-duplication is
    exact and durable (the backend's (device, seq) store). A window would refuse an envelope
    that arrives later than ``window`` newer ones, which with end-to-end receipts is a unit
    publishing again what the backend never stored: it must be stored, not dropped as a
    replay (a dropped one is never receipted, and with a window it could never get in)."""

    def check(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None:
        pass

    def accept(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None:
        pass


CommandKey = tuple[str, str, int]  # (signer kid, topic, seq)


class CommandReplayGuard:
    """Accept each command (signer, topic, seq) at most once, exactly, whatever the order.

    Every command carries a signed expiry, and :func:`~contract.envelope.open_envelope` refuses an
    expired one before asking the guard. So remembering every accepted command until its expiry
    has passed is exact: a replay is either remembered (refused here) or expired (refused
    there). Nothing depends on seqs growing, so operators whose clocks differ (seqs are Unix
    milliseconds) or a second operator console are never locked out, unlike with a window.

    Forgetting uses the clock; a clock that later goes back (a Raspberry Pi has no RTC) could
    make a forgotten command look unexpired again. So the guard also keeps ``floor``, the latest
    expiry it ever forgot, and refuses every command that expires at or before it.

    Bounded: at most ``max_commands`` unexpired commands are remembered (each at most 24 h:
    4096 is 2.8 per minute for a whole day). At the bound a new command is refused with
    :class:`~contract.errors.ReplayMemoryFullError` until older ones expire; nothing remembered is
    ever dropped early, because that would let it be replayed. Only an operator's signature can
    fill it (the guard is asked after the signature verified).
    """

    def __init__(
        self,
        max_commands: int = DEFAULT_MAX_COMMANDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_commands < 1:
            raise ValueError("command replay memory must hold at least 1 command")
        self._max = max_commands
        self._clock = clock
        self._seen: dict[CommandKey, int] = {}  # -> expiry (Unix seconds)
        self._floor = -1
        self._lock = threading.Lock()

    @property
    def max_commands(self) -> int:
        return self._max

    def check(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None:
        """Raise :class:`ReplayError` if this command would be refused, without recording it."""
        with self._lock:
            self._verdict(stream, seq, expires_at)

    def accept(self, stream: StreamKey, seq: int, expires_at: int | None = None) -> None:
        """Remember the command until ``expires_at``; :class:`ReplayError` if already seen."""
        with self._lock:
            exp = self._verdict(stream, seq, expires_at)
            self._seen[(stream[0], stream[1], seq)] = exp

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def snapshot(self) -> tuple[int, list[tuple[str, str, int, int]]]:
        """``(floor, [(kid, topic, seq, expiry), ...])`` for persisting."""
        with self._lock:
            self._forget_expired()
            return self._floor, [(*key, exp) for key, exp in sorted(self._seen.items())]

    def restore(self, floor: int, seen: Iterable[tuple[str, str, int, int]]) -> None:
        """Load a :meth:`snapshot`, replacing the current state (past the bound is an error:
        dropping some would allow their replay)."""
        clean = {(str(kid), str(topic), int(seq)): int(exp) for kid, topic, seq, exp in seen}
        if len(clean) > self._max:
            raise ValueError(f"{len(clean)} remembered commands exceed the bound {self._max}")
        with self._lock:
            self._floor = int(floor)
            self._seen = clean

    def _forget_expired(self) -> None:
        now = self._clock()
        gone = [key for key, exp in self._seen.items() if exp < now]
        for key in gone:
            self._floor = max(self._floor, self._seen.pop(key))

    def _verdict(self, stream: StreamKey, seq: int, expires_at: int | None) -> int:
        if expires_at is None:
            raise ReplayError(f"command seq {seq} on stream {stream!r} has no expiry")
        if seq < 0:
            raise ReplayError(f"negative seq {seq} on stream {stream!r}")
        if expires_at <= self._floor:
            raise ReplayError(
                f"command seq {seq} on stream {stream!r} expires at {expires_at}, not after "
                f"commands already forgotten (up to {self._floor}): refused as a possible replay"
            )
        if (stream[0], stream[1], seq) in self._seen:
            raise ReplayError(f"command seq {seq} on stream {stream!r} was already accepted")
        if len(self._seen) >= self._max:
            self._forget_expired()
            if len(self._seen) >= self._max:
                raise ReplayMemoryFullError(
                    f"{self._max} unexpired commands are remembered; new ones are refused until "
                    "some expire (send commands with shorter expiries)"
                )
        return expires_at
