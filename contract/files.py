"""Crash-safe file replacement, written once for every state file camveil keeps (keys, bundle,
certificates, sequence high-water mark, remote config, command replay window).

:func:`write_atomic`: a temporary file in the same directory, created with its final mode from
the start (``O_EXCL``: the bytes are never readable by others, not even briefly), written in full,
fsynced, renamed over the target, and the directory fsynced so that the rename survives a power
cut. A reader sees the old content or the new, never a mix. ``tests/integration/test_durability``
checks that order on the real system calls.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(
    path: Path, data: bytes, mode: int = 0o600, *, owner: tuple[int, int] | None = None
) -> None:
    """Replace ``path`` with ``data`` (permission ``mode``; ``owner`` = (uid, gid) needs root).
    OSError when it cannot be done; ``path`` is then unchanged and no temporary is left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # the umask may have removed bits we asked for
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
