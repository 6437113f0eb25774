"""One MQTT client certificate per connected process: claim a certificate no other process on
this machine holds.

The broker takes every client's MQTT client id from its certificate CN
(``use_username_as_clientid``, docs/PROTOCOL.md), so two processes connected with one
certificate disconnect each other in turn and lose what was in flight. A process that connects
claims its certificate first: an exclusive ``flock`` on the key file, held until the process
exits (the kernel releases it even after kill -9). :func:`claim_client_cert` takes the first
free certificate of a list (``camveil listen --dev-pki`` with several ``backend-*`` ones) or
refuses, saying how to get another. It only sees processes on this machine; certificates used
on several hosts must differ by construction (one per host, see ``camveil station
add-backend``).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from contract.errors import ConfigError

#: open descriptors of the claimed key files; closing one would release its claim
_held: dict[Path, int] = {}


@dataclass(frozen=True)
class ClaimedCert:
    """A client certificate and key that this process holds for as long as it runs."""

    cert: Path
    key: Path


def key_for(cert: Path) -> Path:
    """The key file beside ``cert`` (``backend-x.crt`` -> ``backend-x.key``)."""
    return cert.with_suffix(".key")


def claim_client_cert(certs: Sequence[tuple[Path, Path]], *, hint: str) -> ClaimedCert:
    """The first (certificate, key) pair of ``certs`` that no other process on this machine
    holds, now held by this one. ConfigError when every one is taken (``hint`` says how to make
    another) or a key file cannot be opened. Claiming a pair twice in one process is fine."""
    if not certs:
        raise ConfigError(f"no client certificate to connect with; {hint}")
    for cert, key in certs:
        resolved = key.resolve()
        if resolved in _held:
            return ClaimedCert(cert, key)
        try:
            fd = os.open(resolved, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"cannot open the client key {key}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held[resolved] = fd
        return ClaimedCert(cert, key)
    names = ", ".join(cert.stem for cert, _ in certs)
    raise ConfigError(
        f"every client certificate ({names}) is in use by another process on this machine; the "
        "broker uses the certificate name as the client id, so two connections with one "
        f"certificate disconnect each other. {hint}"
    )


def release_all() -> None:
    """Give up every claim of this process (for tests; a process's claims end when it exits)."""
    for fd in _held.values():
        os.close(fd)
    _held.clear()
