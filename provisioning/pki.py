"""A small X.509 CA for the MQTT broker's TLS: CA, broker server certificate, device, backend and
operator client certificates, all ECDSA P-256 with SHA-256.

P-256 rather than Ed25519: every TLS stack we meet (mosquitto on OpenSSL 3, Python's ssl, EMQX,
HiveMQ, browsers) accepts ECDSA P-256 for client authentication, while Ed25519 certificates are
still refused by some of them.

Identities are the certificate's common name, which mosquitto's ``use_identity_as_username``
turns into the MQTT username its ACL sees:

- a device: its device id (see :func:`check_device_id`), certified from a CSR built on the unit
  (:func:`make_device_key`, :func:`make_csr`) so the private key never leaves it;
- a backend (dashboard, ingest): ``backend-<name>``;
- an operator tool: ``operator-<name>``.

Everything here is a pure function except the ``write_*`` helpers, which write atomically
(temporary file, fsync, rename, fsync of the directory); private keys are created 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509 as x509  # re-exported: pki.x509.Certificate in signatures
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec as ec  # re-exported, as x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from contract.files import write_atomic as write_atomic  # re-exported: pki.write_atomic
from contract.ids import BACKEND_PREFIX as BACKEND_PREFIX  # device ids: contract.ids (re-exported)
from contract.ids import OPERATOR_PREFIX as OPERATOR_PREFIX
from contract.ids import RESERVED_PREFIXES as RESERVED_PREFIXES
from contract.ids import check_device_id as check_device_id

CA_DAYS: Final = 3650
SERVER_DAYS: Final = 825
#: backend and operator certificates: they live on the operator's own hosts
CLIENT_DAYS: Final = 3650
#: a unit's certificate: two years, so a lost unit that escaped revocation stops being let in
#: by itself, and short enough that the CA's keys and algorithms can change within a fleet's life.
#: It is renewed over MQTT before it expires (`camveil station renew`, docs/PROTOCOL.md
#: "Certificate renewal"); `camveil station list` shows the date.
DEVICE_DAYS: Final = 730
#: a CRL's nextUpdate: OpenSSL (mosquitto) refuses *every* client once the CRL it checks has
#: expired, so the station's CRL lasts as long as the CA and is re-issued on every revocation
CRL_DAYS: Final = CA_DAYS
#: validity starts this much before "now", for units whose clock runs a little behind
CLOCK_SKEW: Final = dt.timedelta(minutes=5)
#: names always in the broker certificate's subjectAltName
DEFAULT_SERVER_NAMES: Final = ("localhost", "127.0.0.1", "::1")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,54}")

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key (the CA, the broker, a backend or an operator)."""

    key: PrivateKey
    cert: x509.Certificate

    @property
    def common_name(self) -> str:
        return common_name(self.cert)


# --- names --------------------------------------------------------------------------------------


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid {what} name {name!r}: use 1..55 characters from A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return name


def backend_identity(name: str) -> str:
    """The certificate CN / MQTT username of backend ``name``: ``backend-<name>``."""
    return BACKEND_PREFIX + _check_name(name, "backend")


def operator_identity(name: str) -> str:
    """The certificate CN / MQTT username of operator ``name``: ``operator-<name>``."""
    return OPERATOR_PREFIX + _check_name(name, "operator")


def common_name(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    """The single subject CN of a certificate or CSR (ValueError if there is not exactly one)."""
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise ValueError("expected exactly one subject common name")
    return values[0].value


# --- keys and certificates ----------------------------------------------------------------------


def make_key() -> PrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def make_device_key() -> PrivateKey:
    """The unit's TLS client key; generated on the unit, never sent anywhere."""
    return make_key()


def make_csr(key: PrivateKey, device_id: str) -> x509.CertificateSigningRequest:
    """The unit's certificate signing request: subject CN = ``device_id``, signed by ``key``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, check_device_id(device_id))])
    return x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.timezone.utc)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
    now: dt.datetime | None,
) -> x509.CertificateBuilder:
    start = _now(now) - CLOCK_SKEW
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(
    name: str = "camveil CA", *, days: int = CA_DAYS, now: dt.datetime | None = None
) -> Issued:
    """A self-signed CA that may sign end-entity certificates only (pathlen 0)."""
    key = make_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "camveil"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    cert = (
        _builder(subject, subject, key.public_key(), days, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(key=key, cert=cert)


def _issue(
    ca: Issued,
    cn: str,
    public_key: ec.EllipticCurvePublicKey,
    usage: x509.ObjectIdentifier,
    *,
    days: int,
    now: dt.datetime | None,
    san: x509.SubjectAlternativeName | None = None,
) -> x509.Certificate:
    builder = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
            ca.cert.subject,
            public_key,
            days,
            now,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(ca.key.public_key())),
            critical=False,
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def _ec_public(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("only ECDSA P-256 keys are accepted")
    return key


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_server_cert(
    ca: Issued,
    names: Iterable[str] = (),
    *,
    loopback: bool = True,
    days: int = SERVER_DAYS,
    now: dt.datetime | None = None,
) -> Issued:
    """The broker's certificate: CN = first name, SAN = ``names`` + (with ``loopback``)
    localhost, 127.0.0.1, ::1. IP literals become IP SANs, the rest DNS names."""
    defaults = DEFAULT_SERVER_NAMES if loopback else ()
    all_names = list(dict.fromkeys([*names, *defaults]))
    if not all_names:
        raise ValueError("a server certificate needs at least one name")
    key = make_key()
    san = x509.SubjectAlternativeName([_general_name(n) for n in all_names])
    cert = _issue(
        ca, all_names[0], key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH,
        days=days, now=now, san=san,
    )  # fmt: skip
    return Issued(key=key, cert=cert)


def server_names(cert: x509.Certificate) -> list[str]:
    """The subjectAltName entries of a server certificate: DNS names, then IP addresses."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return [*dns, *ips]


def sign_device_csr(
    ca: Issued,
    csr: x509.CertificateSigningRequest,
    *,
    expected_device_id: str | None = None,
    days: int = DEVICE_DAYS,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Certify a unit's CSR as a TLS client certificate whose CN is its device id.

    Refuses (ValueError) a CSR whose self-signature does not verify (no proof of possession),
    whose key is not P-256, whose CN is not a valid device id, or whose CN differs from
    ``expected_device_id`` (the id the station assigned). Only the CN is copied from the CSR;
    every extension is ours.
    """
    if not csr.is_signature_valid:
        raise ValueError("CSR signature does not verify: the unit did not sign it with its key")
    device_id = check_device_id(common_name(csr))
    if expected_device_id is not None and device_id != expected_device_id:
        raise ValueError(f"CSR is for {device_id!r}, expected {expected_device_id!r}")
    public_key = _ec_public(csr.public_key())
    return _issue(ca, device_id, public_key, ExtendedKeyUsageOID.CLIENT_AUTH, days=days, now=now)


def check_device_cert(
    cert: x509.Certificate,
    ca: x509.Certificate,
    device_id: str,
    public_key: ec.EllipticCurvePublicKey,
) -> None:
    """``cert`` names ``device_id``, certifies ``public_key`` and is signed by the CA ``ca``
    (which is a CA). ValueError says which of these fails."""
    cn = common_name(cert)
    if cn != device_id:
        raise ValueError(f"certificate is for {cn!r}, not {device_id!r}")
    if spki(cert.public_key()) != spki(public_key):
        raise ValueError("certificate is not for this unit's TLS key")
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.verify_directly_issued_by(ca)
    except (x509.ExtensionNotFound, ValueError, TypeError) as exc:
        raise ValueError(f"certificate does not chain to the CA: {exc}") from None
    except Exception:  # cryptography's InvalidSignature
        raise ValueError("certificate signature does not verify under the CA") from None
    if not constraints.ca:
        raise ValueError("the CA certificate is not a CA")


def spki(key: object) -> bytes:
    """The DER SubjectPublicKeyInfo of a P-256 public key (to compare keys)."""
    return _ec_public(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _make_client(ca: Issued, cn: str, days: int, now: dt.datetime | None) -> Issued:
    key = make_key()
    cert = _issue(ca, cn, key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH, days=days, now=now)
    return Issued(key=key, cert=cert)


def make_backend_cert(
    ca: Issued, name: str, *, days: int = CLIENT_DAYS, now: dt.datetime | None = None
) -> Issued:
    """A client certificate for a backend process (dashboard, ingest): CN ``backend-<name>``."""
    return _make_client(ca, backend_identity(name), days, now)


def make_operator_cert(
    ca: Issued, name: str, *, days: int = CLIENT_DAYS, now: dt.datetime | None = None
) -> Issued:
    """A client certificate for an operator tool: CN ``operator-<name>``."""
    return _make_client(ca, operator_identity(name), days, now)


def make_device_cert(
    ca: Issued, device_id: str, *, days: int = DEVICE_DAYS, now: dt.datetime | None = None
) -> Issued:
    """Key + certificate for a device in one go, for tests and the demo only: a real unit makes
    its key itself and sends a CSR (:func:`make_csr`, :func:`sign_device_csr`)."""
    key = make_device_key()
    cert = sign_device_csr(ca, make_csr(key, device_id), days=days, now=now)
    return Issued(key=key, cert=cert)


# --- revocation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revoked:
    """One revoked certificate: its serial number and when it was revoked."""

    serial: int
    revoked_at: dt.datetime


def make_crl(
    ca: Issued,
    revoked: Iterable[Revoked],
    *,
    number: int,
    days: int = CRL_DAYS,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` listing ``revoked`` (``number`` must grow with every issue).

    nextUpdate is ``days`` ahead: a TLS server that checks the CRL (mosquitto ``crlfile``)
    refuses every client once it has passed, so it is long and the CRL is re-issued on each
    revocation, not on a schedule."""
    start = _now(now) - CLOCK_SKEW
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(start)
        .next_update(start + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(ca.key.public_key())),
            critical=False,
        )
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def load_crl_pem(data: bytes) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(data)


# --- PEM ----------------------------------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def csr_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (protected by file permissions; mosquitto and paho read it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_cert_pem(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def load_csr_pem(data: bytes) -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(data)


def load_key_pem(data: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an ECDSA private key")
    return key


# --- files --------------------------------------------------------------------------------------


def write_private_key(path: Path, key: PrivateKey, *, owner: tuple[int, int] | None = None) -> None:
    """Write ``key`` as PEM with mode 0600 (owned by ``owner`` if given), atomically."""
    write_atomic(path, key_pem(key), 0o600, owner=owner)


def write_cert(path: Path, cert: x509.Certificate) -> None:
    """Write ``cert`` as PEM with mode 0644, atomically."""
    write_atomic(path, cert_pem(cert), 0o644)


@dataclass(frozen=True)
class PemFiles:
    """Where a certificate and its key were written."""

    cert: Path
    key: Path


def write_issued(directory: Path, stem: str, issued: Issued) -> PemFiles:
    """Write ``<stem>.crt`` (0644) and ``<stem>.key`` (0600) into ``directory``."""
    directory = Path(directory)
    files = PemFiles(cert=directory / f"{stem}.crt", key=directory / f"{stem}.key")
    write_private_key(files.key, issued.key)
    write_cert(files.cert, issued.cert)
    return files
