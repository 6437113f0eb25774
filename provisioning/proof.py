"""What the two ends of provisioning prove to each other about a bundle.

The unit proves possession of its new Ed25519 key by signing ``PROOF_CONTEXT || sha256(bundle)``
(:func:`proof_message`; the station checks it with :func:`verify_proof`), and before accepting a
bundle it checks that the certificate is for its own TLS key and chains to the bundled CA
(:func:`check_bundle_for_key`).
"""

from __future__ import annotations

import hashlib
from typing import Final

from nacl.signing import VerifyKey

from contract.errors import ProtocolViolationError
from contract.statedir import Bundle
from provisioning import pki

PROOF_CONTEXT: Final = b"camveil/provision/v1 bundle\x00"
"""Domain separation for the proof of possession: the unit signs PROOF_CONTEXT || sha256(bundle)."""


def bundle_digest(bundle_bytes: bytes) -> bytes:
    return hashlib.sha256(bundle_bytes).digest()


def proof_message(bundle_bytes: bytes) -> bytes:
    """The bytes a unit signs with its new Ed25519 key to prove possession."""
    return PROOF_CONTEXT + bundle_digest(bundle_bytes)


def verify_proof(verify_key: bytes, bundle_bytes: bytes, signature: bytes) -> bool:
    """True if ``signature`` is the unit's proof of possession over ``bundle_bytes``."""
    try:
        VerifyKey(verify_key).verify(proof_message(bundle_bytes), signature)
    except Exception:  # nacl BadSignatureError, ValueError on a malformed key/signature
        return False
    return True


def check_bundle_for_key(bundle: Bundle, tls_public: pki.ec.EllipticCurvePublicKey) -> None:
    """The certificate is for ``bundle.device``, for our TLS key, and issued by the bundled CA."""
    try:
        cert = pki.load_cert_pem(bundle.cert_pem)
        ca = pki.load_cert_pem(bundle.ca_pem)
        cn = pki.common_name(cert)
    except ValueError as exc:
        raise ProtocolViolationError(f"bundle certificate unreadable: {exc}") from None
    if cn != bundle.device:
        raise ProtocolViolationError(f"certificate is for {cn!r}, bundle for {bundle.device!r}")
    try:
        pki.check_device_cert(cert, ca, bundle.device, tls_public)
    except ValueError as exc:
        raise ProtocolViolationError(str(exc).replace("the CA", "the bundled CA")) from None
