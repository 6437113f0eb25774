"""Monotonic event sequence numbers that survive restarts and crashes without ever repeating.

The receiver de-duplicates and replay-checks on (device, seq), so a seq that is handed out twice
would make the second message look like a replay and be dropped. :class:`SequenceStore` therefore
reserves numbers in blocks: before it hands out the first number of a block it persists the end
of that block (the *high-water mark*) with write, fsync, rename, fsync of the directory. After a
crash at any moment the next process starts at the persisted mark, which is above every number the
crashed process could have handed out; the unused rest of the block is skipped (a gap, never a
repeat). A clean :meth:`close` persists the exact next number, so orderly restarts leave no gap.

The store lives in its own small file, not in the outbox database, on purpose: a corrupt outbox is
moved aside and replaced (see :mod:`agent.outbox`), and that must not reset the sequence. A
second process opening the same file is refused (``flock``), since two writers would repeat seqs.

File format (one ASCII line): ``camveil-seq 1 <next> <crc32 of the preceding text, 8 hex>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import zlib
from pathlib import Path
from typing import Final, Protocol

from contract.errors import SequenceError
from contract.files import write_atomic

logger = logging.getLogger(__name__)

MAGIC: Final = "camveil-seq"
FORMAT_VERSION: Final = 1
DEFAULT_BLOCK: Final = 1024
MAX_SEQ: Final = 2**63 - 1


class SequenceSource(Protocol):
    """Hands out the next sequence number (strictly increasing, never repeated)."""

    def next(self) -> int: ...


class CountingSequence:
    """In-memory :class:`SequenceSource` for tests and the demo: not persisted."""

    def __init__(self, start: int = 0) -> None:
        self._next = start
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            value = self._next
            self._next += 1
            return value


class SequenceStore:
    """Persistent :class:`SequenceSource` reserving ``block`` numbers per fsync. Thread-safe.

    Use as a context manager; the file is opened (and locked) in ``__enter__``.
    """

    def __init__(self, path: Path, block: int = DEFAULT_BLOCK) -> None:
        if block < 1:
            raise ValueError(f"sequence block must be >= 1, got {block}")
        self._path = Path(path)
        self._block = block
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._next = 0
        self._reserved = 0  # every seq < _reserved may have been handed out by some process

    @property
    def path(self) -> Path:
        return self._path

    @property
    def reserved(self) -> int:
        """The persisted high-water mark: no seq at or above it has been handed out."""
        return self._reserved

    def __enter__(self) -> SequenceStore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if self._lock_fd is not None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SequenceError(
                f"{self._path} is in use by another process (lock {lock_path}); two writers "
                "would repeat sequence numbers. Stop the other camveil instance."
            ) from None
        self._lock_fd = fd
        try:
            start = self._read()
        except BaseException:
            self._unlock()
            raise
        self._next = self._reserved = start

    def close(self) -> None:
        """Persist the exact next seq (no gap after an orderly restart) and release the file."""
        with self._lock:
            if self._lock_fd is None:
                return
            try:
                if self._next != self._reserved:
                    self._write(self._next)
                    self._reserved = self._next
            finally:
                self._unlock()

    def next(self) -> int:
        """The next seq. Persists a new high-water mark first whenever a block is used up."""
        with self._lock:
            if self._lock_fd is None:
                raise SequenceError("SequenceStore used outside its context (not opened)")
            value = self._next
            if value >= MAX_SEQ:
                raise SequenceError(f"sequence space of {self._path} is exhausted")
            if value >= self._reserved:
                mark = min(value + self._block, MAX_SEQ)
                self._write(mark)  # raises before anything is handed out
                self._reserved = mark
            self._next = value + 1
            return value

    # --- file ------------------------------------------------------------------------------

    def _read(self) -> int:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            logger.info("no sequence file at %s: starting at 0", self._path)
            return 0
        except OSError as exc:
            raise SequenceError(f"cannot read sequence file {self._path}: {exc}") from None
        try:
            magic, version, value, crc = raw.decode("ascii").split()
            ok = (
                magic == MAGIC
                and int(version) == FORMAT_VERSION
                and int(crc, 16) == zlib.crc32(f"{magic} {version} {value}".encode())
            )
            start = int(value)
        except ValueError:
            ok = False
            start = -1
        if not ok or not 0 <= start <= MAX_SEQ:
            raise SequenceError(
                f"sequence file {self._path} is corrupt. Starting over could repeat seqs that "
                "the backend already accepted (it would drop them as replays). Fix: write "
                f"'{MAGIC} {FORMAT_VERSION} <n> <crc>' with n above the highest seq the backend "
                "has seen for this device (or re-provision the device under a new id)."
            )
        return start

    def _write(self, value: int) -> None:
        text = f"{MAGIC} {FORMAT_VERSION} {value}"
        data = f"{text} {zlib.crc32(text.encode()):08x}\n".encode("ascii")
        try:
            write_atomic(self._path, data, 0o600)
        except OSError as exc:
            raise SequenceError(
                f"cannot persist sequence high-water mark to {self._path}: {exc}"
            ) from None

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
