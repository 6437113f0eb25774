"""The unit's state directory as provisioning writes it: its keys (``pending/``, generated on
first use) and, once a bundle is accepted, ``provisioned/``.

The layout and the bundle format are :mod:`contract.statedir` (the agent reads what is written
here). ``pending/`` and ``provisioned/`` are each built in a temporary sibling directory (every
file and the directory fsynced) and renamed into place, then the state directory is fsynced: a
power loss leaves either the old state or the new one, never a half-written one. Leftover
temporary directories are removed on the next start. ``provisioned`` is also the path the systemd
units test (``ConditionPathExists=``). Private keys never leave this directory.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from contract.envelope.keys import Identity, load_identity, save_identity
from contract.errors import KeyFileError
from contract.files import fsync_dir
from contract.statedir import (
    BUNDLE_FILE,
    CA_FILE,
    IDENTITY_FILE,
    PENDING,
    PROVISIONED,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    Bundle,
)
from provisioning import pki
from provisioning.proof import check_bundle_for_key

logger = logging.getLogger(__name__)

_TMP_PREFIX: Final = ".tmp-"


@dataclass(frozen=True)
class UnitKeys:
    """The unit's own keys (pending or provisioned)."""

    identity: Identity
    tls_key: pki.PrivateKey

    @property
    def ed25519(self) -> bytes:
        return bytes(self.identity.signing_key.verify_key)

    @property
    def x25519(self) -> bytes:
        return bytes(self.identity.encryption_key.public_key)


@dataclass(frozen=True)
class ProvisionedUnit:
    """A complete provisioned state, as the agent loads it."""

    keys: UnitKeys
    bundle: Bundle
    bundle_bytes: bytes

    @property
    def device(self) -> str:
        return self.bundle.device


class UnitStore:
    """The unit's state directory (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)

    @property
    def pending_dir(self) -> Path:
        return self.state_dir / PENDING

    @property
    def provisioned_dir(self) -> Path:
        return self.state_dir / PROVISIONED

    def recover(self) -> None:
        """Create the state directory (0700) and remove temporaries a power loss left behind."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.state_dir.glob(_TMP_PREFIX + "*"):
            logger.info("removing interrupted write %s", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)
        if self.provisioned_dir.exists() and self.pending_dir.exists():
            # the commit completed; only the cleanup was cut
            shutil.rmtree(self.pending_dir, ignore_errors=True)

    def is_provisioned(self) -> bool:
        return self.provisioned_dir.is_dir()

    def pending_keys(self) -> UnitKeys:
        """The pending keys, generated (and stored atomically) on first use."""
        try:
            return self._load_keys(self.pending_dir)
        except (OSError, ValueError, KeyFileError) as exc:
            if self.pending_dir.exists():  # never sent anywhere: safe to replace
                logger.warning(
                    "pending keys unusable (%s), generating new ones", type(exc).__name__
                )
                self._discard(self.pending_dir)
        keys = UnitKeys(identity=Identity.generate("pending"), tls_key=pki.make_device_key())
        self._commit_dir(self.pending_dir, lambda d: self._write_keys(d, keys))
        return keys

    def load_provisioned(self) -> ProvisionedUnit:
        """The provisioned state; OSError, ValueError or KeyFileError if there is none or it is
        unreadable."""
        d = self.provisioned_dir
        bundle_bytes = (d / BUNDLE_FILE).read_bytes()
        return ProvisionedUnit(self._load_keys(d), Bundle.decode(bundle_bytes), bundle_bytes)

    def commit(self, bundle_bytes: bytes) -> ProvisionedUnit:
        """Validate ``bundle_bytes`` against the pending keys and store it as provisioned."""
        bundle = Bundle.decode(bundle_bytes)
        pending = self.pending_keys()
        check_bundle_for_key(bundle, pending.tls_key.public_key())
        keys = UnitKeys(
            Identity(bundle.device, pending.identity.signing_key, pending.identity.encryption_key),
            pending.tls_key,
        )

        def fill(d: Path) -> None:
            self._write_keys(d, keys)
            _write(d / TLS_CERT_FILE, bundle.cert_pem, 0o644)
            _write(d / CA_FILE, bundle.ca_pem, 0o644)
            _write(d / BUNDLE_FILE, bundle_bytes, 0o600)

        self._commit_dir(self.provisioned_dir, fill)
        shutil.rmtree(self.pending_dir, ignore_errors=True)
        return ProvisionedUnit(keys, bundle, bundle_bytes)

    def factory_reset(self) -> bool:
        """Forget every key and the bundle; True if there was anything to delete."""
        found = False
        for name in (PROVISIONED, PENDING):
            path = self.state_dir / name
            if path.exists():
                found = True
                self._discard(path)
        return found

    def _discard(self, path: Path) -> None:
        """Rename first, so the state changes atomically, then delete."""
        doomed = self.state_dir / f"{_TMP_PREFIX}discard-{path.name}"
        shutil.rmtree(doomed, ignore_errors=True)
        path.rename(doomed)
        fsync_dir(self.state_dir)
        shutil.rmtree(doomed)

    @staticmethod
    def _write_keys(d: Path, keys: UnitKeys) -> None:
        save_identity(d / IDENTITY_FILE, keys.identity)
        pki.write_private_key(d / TLS_KEY_FILE, keys.tls_key)

    @staticmethod
    def _load_keys(d: Path) -> UnitKeys:
        identity = load_identity(d / IDENTITY_FILE)  # refuses group/other-readable files
        return UnitKeys(identity, pki.load_key_pem((d / TLS_KEY_FILE).read_bytes()))

    def _commit_dir(self, final: Path, fill: Callable[[Path], None]) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.state_dir / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        try:
            fill(tmp)  # each file is written atomically and fsynced by its writer
            fsync_dir(tmp)
            tmp.rename(final)  # fails if ``final`` exists: we never merge two states
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.state_dir)


def _write(path: Path, data: bytes, mode: int) -> None:
    pki.write_atomic(path, data, mode)
