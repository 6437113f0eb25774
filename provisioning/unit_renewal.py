"""The unit's end of a certificate renewal, on disk: a new TLS key staged beside the one in use,
the certificate the station issued for it checked and staged, and the swap (docs/PROTOCOL.md,
"Certificate renewal"; the commands are :mod:`agent.certrenewal`).

Files in ``<state_dir>/provisioned/`` (:mod:`contract.statedir`)::

    tls.key  tls.crt            the pair in use
    tls-next.key                the staged key (0600), made here, never sent anywhere
    tls-next.crt                its certificate, checked (CA, device id, key, dates), until the
                                broker accepted it

The swap (:meth:`ClientCertFiles.promote`, called only after the broker accepted a connection
with the staged pair) renames ``tls-next.key`` over ``tls.key`` and then ``tls-next.crt`` over
``tls.crt``, fsyncing the directory after each. Every file is written with
:func:`contract.files.write_atomic` (temporary file, fsync, rename). A power cut leaves one of:

- the old pair, with or without staged files: :meth:`ClientCertFiles.recover` removes a staged
  certificate (its trial never finished, so the old pair stays: fail closed) and keeps a staged
  key;
- ``tls.key`` new and ``tls.crt`` old, ``tls-next.crt`` present (cut between the two renames):
  :meth:`~ClientCertFiles.recover` finishes the swap, since the key matches ``tls-next.crt``.

The old key is gone once its file has been replaced by the rename; nothing else ever held it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.x509.oid import ExtendedKeyUsageOID

from contract.errors import ProtocolViolationError
from contract.files import fsync_dir, write_atomic
from contract.statedir import (
    CA_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    TLS_NEXT_CERT_FILE,
    TLS_NEXT_KEY_FILE,
)
from provisioning import pki

logger = logging.getLogger(__name__)

CLOCK_SKEW: Final = dt.timedelta(minutes=10)
"""A new certificate may start this far in the future of the unit's clock (the station's clock
runs ahead) and must not be expired by the unit's clock."""


@dataclass(frozen=True)
class CertInfo:
    """What the unit says about a certificate (health, acks)."""

    serial: str  # hex
    not_after: int  # Unix seconds

    @classmethod
    def of(cls, cert: pki.x509.Certificate) -> CertInfo:
        return cls(f"{cert.serial_number:x}", int(cert.not_valid_after_utc.timestamp()))


class ClientCertFiles:
    """The TLS client pair of a provisioned unit and its staged successor. Constructor only
    stores; every method works on the files."""

    def __init__(self, provisioned_dir: Path) -> None:
        self.dir = Path(provisioned_dir)

    @property
    def key(self) -> Path:
        return self.dir / TLS_KEY_FILE

    @property
    def cert(self) -> Path:
        return self.dir / TLS_CERT_FILE

    @property
    def next_key(self) -> Path:
        return self.dir / TLS_NEXT_KEY_FILE

    @property
    def next_cert(self) -> Path:
        return self.dir / TLS_NEXT_CERT_FILE

    def current(self) -> CertInfo:
        """Serial and notAfter of the certificate in use (OSError/ValueError if unreadable)."""
        return CertInfo.of(pki.load_cert_pem(self.cert.read_bytes()))

    # --- steps of a renewal ---------------------------------------------------------------------

    def stage_key(self, device_id: str) -> bytes:
        """A fresh TLS key in ``tls-next.key`` (0600; any earlier staged pair is replaced) and the
        PEM CSR for it, CN = ``device_id``, signed with it (proof of possession)."""
        self.next_cert.unlink(missing_ok=True)
        key = pki.make_device_key()
        pki.write_private_key(self.next_key, key)
        return pki.csr_pem(pki.make_csr(key, device_id))

    def stage_cert(
        self, cert_pem: bytes, device_id: str, *, now: dt.datetime | None = None
    ) -> CertInfo:
        """Check ``cert_pem`` and keep it as ``tls-next.crt``. ProtocolViolationError (nothing
        written, staged key kept) unless it is one certificate that chains to the CA pinned at
        provisioning, names ``device_id``, certifies the staged key, is a TLS client
        certificate and is valid now."""
        if not self.next_key.is_file():
            raise ProtocolViolationError(
                "no renewal in progress: no staged key (send renew_cert first)"
            )
        try:
            cert = pki.load_cert_pem(cert_pem)
            if cert_pem.count(b"-----BEGIN") != 1:
                raise ValueError("expected exactly one PEM certificate")
            ca = pki.load_cert_pem((self.dir / CA_FILE).read_bytes())
            staged = pki.load_key_pem(self.next_key.read_bytes())
            pki.check_device_cert(cert, ca, device_id, staged.public_key())
            _check_client_profile(cert, now or dt.datetime.now(dt.timezone.utc))
        except ValueError as exc:
            raise ProtocolViolationError(f"certificate refused: {exc}") from None
        write_atomic(self.next_cert, cert_pem, 0o644)
        return CertInfo.of(cert)

    def promote(self) -> None:
        """Make the staged pair the one in use (the broker accepted it): key first, then the
        certificate, each rename made durable. The old key is gone afterwards."""
        if not (self.next_key.is_file() and self.next_cert.is_file()):
            raise FileNotFoundError("no staged key and certificate to promote")
        self.next_key.replace(self.key)
        fsync_dir(self.dir)
        self.next_cert.replace(self.cert)
        fsync_dir(self.dir)

    def discard(self) -> None:
        """Forget the staged key and certificate (a refused or abandoned renewal)."""
        for path in (self.next_cert, self.next_key):
            path.unlink(missing_ok=True)
        fsync_dir(self.dir)

    def recover(self) -> str | None:
        """Bring the files to a consistent state after a power cut (see the module docstring);
        returns what was done, or None when nothing was needed."""
        if not self.next_cert.exists():
            return None
        try:
            key = pki.load_key_pem(self.key.read_bytes())
            staged = pki.load_cert_pem(self.next_cert.read_bytes())
            swapped = pki.spki(key.public_key()) == pki.spki(staged.public_key())
        except (OSError, ValueError):
            swapped = False
        if swapped and not self.next_key.exists():
            self.next_cert.replace(self.cert)
            fsync_dir(self.dir)
            return "finished an interrupted certificate swap"
        self.next_cert.unlink()
        fsync_dir(self.dir)
        return "dropped a staged certificate whose trial did not finish (the old pair stays)"


def _check_client_profile(cert: pki.x509.Certificate, now: dt.datetime) -> None:
    if cert.not_valid_before_utc > now + CLOCK_SKEW:
        raise ValueError(f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_after_utc <= now:
        raise ValueError(f"expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    try:
        basic = cert.extensions.get_extension_for_class(pki.x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(pki.x509.ExtendedKeyUsage).value
    except pki.x509.ExtensionNotFound as exc:
        raise ValueError(f"missing extension: {exc}") from None
    if basic.ca:
        raise ValueError("a CA certificate, not a client certificate")
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise ValueError("not a TLS client certificate (extended key usage)")
