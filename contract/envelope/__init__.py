"""Sealed envelopes: COSE_Sign1 (EdDSA, Ed25519) over COSE_Encrypt (ChaCha20/Poly1305 with one
ECDH-ES + HKDF-256 recipient on X25519), with the external AAD binding device, topic and seq.

Wire format: docs/PROTOCOL.md, section "Envelope". Errors: the EnvelopeError subtree of
:mod:`contract.errors`.
"""

from contract.envelope.keys import (
    Identity,
    PeerKeys,
    PublicIdentity,
    load_identity,
    load_peers,
    save_identity,
    save_peers,
)
from contract.envelope.replay import ReplayGuard
from contract.envelope.seal import (
    OpenedMessage,
    SealedEnvelope,
    open_envelope,
    restore_sealed,
    seal,
)
from contract.envelope.wire import external_aad
from contract.topics import Topic, parse_topic

__all__ = [
    "Identity",
    "OpenedMessage",
    "PeerKeys",
    "PublicIdentity",
    "ReplayGuard",
    "SealedEnvelope",
    "Topic",
    "external_aad",
    "load_identity",
    "load_peers",
    "open_envelope",
    "parse_topic",
    "restore_sealed",
    "save_identity",
    "save_peers",
    "seal",
]
