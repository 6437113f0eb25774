"""The station's end of a certificate renewal over MQTT (docs/PROTOCOL.md, "Certificate
renewal"): which units to renew, issuing a certificate for a unit's CSR, and recording that the
unit uses it. The MQTT exchange itself (``renew_cert``, ``install_cert``) is
:mod:`dashboard.cert_renewal`; the unit's end is :mod:`agent.certrenewal`.

The station issues only for a unit in its inventory, provisioned and not revoked, and only for a
CSR that its caller got in that unit's ack to the station's own ``renew_cert`` (signed with the
unit's Ed25519 key, which the station knows from provisioning: the binding to the unit's
identity). The CSR must name the unit (CN = device id, as at provisioning), be signed with the
key it certifies (proof of possession), and bring a key never certified for this unit before.
The certificate has the provisioning profile (:func:`provisioning.pki.sign_device_csr`).

Once the unit says it is connected with the new certificate, every older certificate of that
unit is ``superseded`` and goes into the CRL (``broker/crl.pem``) until it expires, so a copy of
an old key is useless once the broker has the new CRL.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nacl.public import PublicKey
from nacl.signing import VerifyKey

from contract.envelope.keys import PublicIdentity
from contract.errors import ProvisioningError
from contract.statedir import Bundle
from provisioning import pki
from provisioning.inventory import CertificateRecord, Inventory, UnitRecord
from provisioning.station import (
    current_certificate,
    load_ca,
    open_station,
    write_crl,
)

logger = logging.getLogger(__name__)

DAY_S = 86400.0
#: units renewed at the same time by `camveil station renew` (each mostly waits for its unit to
#: reconnect with the new certificate), and the most it accepts
DEFAULT_JOBS: Final = 8
MAX_JOBS: Final = 64


@dataclass(frozen=True)
class RenewalTarget:
    """A provisioned unit to renew, with what the station knows of it."""

    device: str
    identity: PublicIdentity
    """Its Ed25519 / X25519 keys from provisioning: commands are sealed to it, its acks must be
    signed by it."""
    serial: str
    not_after: float

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / DAY_S


@dataclass(frozen=True)
class IssuedCertificate:
    device: str
    cert_pem: bytes
    serial: str
    not_after: float


def _refuse_unknown(inventory: Inventory, device: str) -> ProvisioningError:
    done = [r for r in inventory.revocations() if r.device == device]
    if done:
        when = dt.datetime.fromtimestamp(done[-1].revoked_at, dt.timezone.utc)
        return ProvisioningError(
            f"{device} was revoked ({when:%Y-%m-%d}, {done[-1].reason}): a revoked unit is not "
            "renewed; factory-reset and provision it again if it is trusted again"
        )
    known = ", ".join(u.device for u in inventory.units("provisioned")) or "none"
    return ProvisioningError(f"no provisioned unit {device!r} in the inventory (units: {known})")


def _provisioned(inventory: Inventory, device: str) -> UnitRecord:
    record = inventory.by_device(device)
    if record is None:
        raise _refuse_unknown(inventory, device)
    if record.state != "provisioned":
        raise ProvisioningError(
            f"{device} is pending (its provisioning was not confirmed): finish `camveil "
            "provision` first"
        )
    return record


def _target(inventory: Inventory, record: UnitRecord) -> RenewalTarget:
    cert = current_certificate(inventory, record)
    identity = PublicIdentity(record.device, VerifyKey(record.ed25519), PublicKey(record.x25519))
    return RenewalTarget(
        record.device,
        identity,
        f"{cert.serial_number:x}",
        cert.not_valid_after_utc.timestamp(),
    )


def renewal_targets(
    root: Path,
    devices: Sequence[str] = (),
    *,
    expiring_within_days: float | None = None,
    now: float | None = None,
) -> list[RenewalTarget]:
    """The units named in ``devices`` (ProvisioningError for one that is unknown, pending or
    revoked), plus every provisioned unit whose certificate expires within
    ``expiring_within_days``, in device order."""
    paths = open_station(root)
    now = time.time() if now is None else now
    found: dict[str, RenewalTarget] = {}
    with Inventory(paths.inventory) as inventory:
        for device in devices:
            found[device] = _target(inventory, _provisioned(inventory, device))
        if expiring_within_days is not None:
            horizon = now + expiring_within_days * DAY_S
            for record in inventory.units("provisioned"):
                target = _target(inventory, record)
                if target.not_after <= horizon:
                    found.setdefault(record.device, target)
    return [found[d] for d in sorted(found)]


def issue_renewal(root: Path, device: str, csr_pem: bytes) -> IssuedCertificate:
    """Certify ``csr_pem``, which the caller received in ``device``'s signed ack to a
    ``renew_cert`` command, and record it as ``issued``. ProvisioningError when the unit is not
    (or no longer) a provisioned unit or the CSR is not acceptable (see the module docstring)."""
    paths = open_station(root)
    ca = load_ca(paths)
    with Inventory(paths.inventory) as inventory:
        record = _provisioned(inventory, device)  # revoked meanwhile: refused here
        try:
            csr = pki.load_csr_pem(csr_pem)
            cert = pki.sign_device_csr(ca, csr, expected_device_id=device)
        except (ValueError, TypeError) as exc:
            raise ProvisioningError(f"{device}: the unit's CSR is not acceptable: {exc}") from None
        new_key = pki.spki(cert.public_key())
        earlier = [pki.load_cert_pem(Bundle.decode(record.bundle).cert_pem)]
        earlier += [pki.load_cert_pem(c.cert) for c in inventory.certificates(device)]
        if any(pki.spki(c.public_key()) == new_key for c in earlier):
            raise ProvisioningError(
                f"{device}: the CSR brings a key that was certified for this unit before; a "
                "renewal needs a new key"
            )
        now = time.time()
        issued = IssuedCertificate(
            device,
            pki.cert_pem(cert),
            f"{cert.serial_number:x}",
            cert.not_valid_after_utc.timestamp(),
        )
        inventory.add_certificate(
            CertificateRecord(
                issued.serial, device, "issued", issued.not_after, now, now, issued.cert_pem
            )
        )
    logger.info("issued certificate %s for %s (renewal)", issued.serial, device)
    return issued


def confirm_renewal(root: Path, device: str, serial: str) -> list[CertificateRecord]:
    """``device`` is connected with certificate ``serial`` (its ``install_cert`` ack said so):
    it becomes ``current``, every older one ``superseded``, and the CRL is rewritten with
    them. Returns the certificates superseded now."""
    paths = open_station(root)
    ca = load_ca(paths)
    with Inventory(paths.inventory) as inventory:
        record = _provisioned(inventory, device)
        bundle_cert = pki.load_cert_pem(Bundle.decode(record.bundle).cert_pem)
        at = time.time()
        first = CertificateRecord(
            f"{bundle_cert.serial_number:x}",
            device,
            "current",
            bundle_cert.not_valid_after_utc.timestamp(),
            record.provisioned_at or record.created_at,
            at,
            pki.cert_pem(bundle_cert),
        )

        def publish(in_crl: list[CertificateRecord]) -> None:
            write_crl(paths, ca, inventory.revocations(), in_crl)

        try:
            superseded = inventory.make_current(device, serial, publish, first=first, at=at)
        except KeyError:
            raise ProvisioningError(
                f"{device}: certificate {serial} was not issued to it by this station"
            ) from None
    logger.info(
        "%s uses certificate %s; superseded: %s",
        device,
        serial,
        ", ".join(c.serial for c in superseded) or "none",
    )
    return superseded
