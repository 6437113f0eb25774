"""Typed key holders for envelopes: our own identity, peers' public keys, key files.

An :class:`Identity` is a key id (``kid``, text; for a unit it is the device id) with an Ed25519
signing key and an X25519 encryption key. Its :class:`PublicIdentity` is what others need:
the Ed25519 verify key and the X25519 public key under the same kid. :class:`PeerKeys` is the
set of public identities we trust, looked up by kid.

Key files are CBOR maps written atomically (temporary file opened 0600 with ``O_EXCL``, fsync,
rename, fsync of the directory) and refused on load when group or others can read them.
``repr()`` of these types never shows private key material.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import cbor2
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from contract.errors import KeyFileError, UnknownKeyError
from contract.files import write_atomic

# key ids are defined in contract.ids (topics carry them too); re-exported here
from contract.ids import MAX_KID_BYTES as MAX_KID_BYTES
from contract.ids import check_kid as check_kid

KEY_FILE_VERSION: Final = 1


@dataclass(frozen=True)
class PublicIdentity:
    """Public half of an identity: Ed25519 verify key and X25519 public key under one kid."""

    kid: str
    verify_key: VerifyKey
    encryption_key: PublicKey

    def __post_init__(self) -> None:
        check_kid(self.kid)

    def to_cbor(self) -> bytes:
        """Serialise as ``{"v": 1, "kid": tstr, "ed25519": bstr32, "x25519": bstr32}``."""
        return cbor2.dumps(
            {
                "v": KEY_FILE_VERSION,
                "kid": self.kid,
                "ed25519": bytes(self.verify_key),
                "x25519": bytes(self.encryption_key),
            },
            canonical=True,
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> PublicIdentity:
        """Parse :meth:`to_cbor` output; ValueError when it is not one."""
        m = _load_map(data)
        return cls(
            kid=_text(m, "kid"),
            verify_key=VerifyKey(_key_bytes(m, "ed25519")),
            encryption_key=PublicKey(_key_bytes(m, "x25519")),
        )


@dataclass(frozen=True)
class Identity:
    """Our own keys: Ed25519 to sign what we send, X25519 to receive what is sealed to us."""

    kid: str
    signing_key: SigningKey = field(repr=False)
    encryption_key: PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        check_kid(self.kid)

    @classmethod
    def generate(cls, kid: str) -> Identity:
        """Fresh random keys from the OS CSPRNG (libsodium ``randombytes``)."""
        return cls(kid=kid, signing_key=SigningKey.generate(), encryption_key=PrivateKey.generate())

    def public(self) -> PublicIdentity:
        return PublicIdentity(
            kid=self.kid,
            verify_key=self.signing_key.verify_key,
            encryption_key=self.encryption_key.public_key,
        )


# --- the operator's ack key ---------------------------------------------------------------------
# A unit knows only its operator's Ed25519 verify key (the bundle has no other operator key), and
# an operator must read the acks of its commands without the backend's key, which opens every
# event and snapshot. So acks are sealed to the X25519 form of the operator's Ed25519 key (the
# birational map of RFC 7748 §4.1, libsodium crypto_sign_ed25519_pk_to_curve25519), which the
# operator opens with the X25519 form of its signing key. Using one key pair for Ed25519 and
# X25519 key agreement is proven jointly secure (Thormarker, "On using the same key pair for
# Ed25519 and an X25519 based KEM", 2021) and is what libsodium's conversions are for.


def ack_recipient(operator: PublicIdentity) -> PublicIdentity:
    """Where a unit seals the acks of ``operator``'s commands (same kid; X25519 form of its
    Ed25519 verify key)."""
    return PublicIdentity(
        kid=operator.kid,
        verify_key=operator.verify_key,
        encryption_key=operator.verify_key.to_curve25519_public_key(),
    )


def ack_reader(operator: Identity) -> Identity:
    """The identity that opens acks sealed to :func:`ack_recipient` of ``operator``."""
    return Identity(
        kid=operator.kid,
        signing_key=operator.signing_key,
        encryption_key=operator.signing_key.to_curve25519_private_key(),
    )


class PeerKeys(Mapping[str, PublicIdentity]):
    """Immutable set of trusted public identities by kid."""

    def __init__(self, identities: Iterable[PublicIdentity] = ()) -> None:
        keys: dict[str, PublicIdentity] = {}
        for ident in identities:
            if ident.kid in keys:
                raise ValueError(f"duplicate key id {ident.kid!r} in peer keys")
            keys[ident.kid] = ident
        self._keys = keys

    def __getitem__(self, kid: str) -> PublicIdentity:
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"PeerKeys({sorted(self._keys)!r})"

    def require(self, kid: str) -> PublicIdentity:
        """The identity for ``kid``; :class:`UnknownKeyError` if it is not trusted."""
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKeyError(f"key id {kid!r} is not a trusted sender") from None


# --- key files ---------------------------------------------------------------------------------


def save_identity(path: Path, identity: Identity) -> None:
    """Write ``identity`` (private keys included) to ``path`` atomically with mode 0600."""
    data = cbor2.dumps(
        {
            "v": KEY_FILE_VERSION,
            "kid": identity.kid,
            "ed25519_seed": bytes(identity.signing_key),
            "x25519": bytes(identity.encryption_key),
        },
        canonical=True,
    )
    write_private_file(path, data)


def load_identity(path: Path) -> Identity:
    """Read a key file written by :func:`save_identity`; KeyFileError says what is wrong."""
    data = read_private_file(path)
    try:
        m = _load_map(data)
        return Identity(
            kid=_text(m, "kid"),
            signing_key=SigningKey(_key_bytes(m, "ed25519_seed")),
            encryption_key=PrivateKey(_key_bytes(m, "x25519")),
        )
    except ValueError as exc:
        raise KeyFileError(
            f"key file {path} is not a camveil identity ({exc}); re-provision the unit or restore "
            "the file from backup"
        ) from None


def save_peers(path: Path, peers: Iterable[PublicIdentity]) -> None:
    """Write public identities (no secrets) atomically: a CBOR array of :meth:`to_cbor` maps."""
    items = [cbor2.loads(p.to_cbor()) for p in peers]
    write_private_file(path, cbor2.dumps({"v": KEY_FILE_VERSION, "peers": items}, canonical=True))


def load_peers(path: Path) -> PeerKeys:
    """Read :func:`save_peers` output; :class:`KeyFileError` says what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"peer key file {path} cannot be read ({exc.strerror}); provision the unit first"
        ) from None
    try:
        m = _load_map(data)
        items = m.get("peers")
        if not isinstance(items, list | tuple):
            raise ValueError("'peers' missing or not an array")
        return PeerKeys(PublicIdentity.from_cbor(cbor2.dumps(dict(i))) for i in items)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"peer key file {path} is not a camveil peer list ({exc}); give the station's "
            "devices.cbor (devices.json is the same list for people, not for this option)"
        ) from None


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600 (:func:`contract.files.write_atomic`:
    temporary file + fsync + rename + directory fsync)."""
    write_atomic(path, data, 0o600)


def read_private_file(path: Path) -> bytes:
    """Read a private key file; refuse it when group or others have any access to it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {path} does not exist; provision the unit first (camveil provision)"
        ) from None
    except OSError as exc:
        raise KeyFileError(
            f"key file {path} cannot be opened ({exc.strerror}); check its owner and that it is "
            "not a symlink"
        ) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if mode & 0o077:
            raise KeyFileError(
                f"key file {path} is readable by group or others (mode {stat.S_IMODE(mode):o}); "
                f"fix with: chmod 600 {path}"
            )
        return f.read(64 * 1024)


def _load_map(data: bytes) -> dict[str, Any]:
    try:
        m = cbor2.loads(data)
    except Exception:  # cbor2 raises several types on bad input
        raise ValueError("not CBOR") from None
    if not isinstance(m, dict) or m.get("v") != KEY_FILE_VERSION:
        raise ValueError(f"not a version {KEY_FILE_VERSION} key map")
    return m


def _text(m: Mapping[str, Any], name: str) -> str:
    v = m.get(name)
    if not isinstance(v, str):
        raise ValueError(f"{name!r} missing or not text")
    return check_kid(v)


def _key_bytes(m: Mapping[str, Any], name: str) -> bytes:
    v = m.get(name)
    if not isinstance(v, bytes) or len(v) != 32:
        raise ValueError(f"{name!r} missing or not 32 bytes")
    return v
