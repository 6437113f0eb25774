"""The unit's end of provisioning: its key store, the bundle it accepts, and the request handler.

The state directory's layout and the bundle format are :mod:`contract.statedir` (the agent
reads what is written here). This module writes ``pending/`` and ``provisioned/``.

``pending/`` and ``provisioned/`` are each built in a temporary sibling directory (every file
and the directory fsynced) and renamed into place, then the state directory is fsynced: a power
loss leaves either the old state or the new one, never a half-written one. Leftover temporary
directories are removed on the next start. ``provisioned`` is also the path the systemd units test
(``ConditionPathExists=``). Private keys never leave this directory: HELLO returns public keys,
the TLS key leaves only as a CSR.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from nacl.signing import SigningKey, VerifyKey

from contract.envelope.keys import Identity, load_identity, save_identity
from contract.errors import CamveilError, KeyFileError, ProtocolViolationError
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
from provisioning.serial_proto import (
    PROTOCOL_VERSION,
    Channel,
    Message,
    SerialLink,
    error_reply,
    is_reply,
    reply_to,
)

logger = logging.getLogger(__name__)

PROOF_CONTEXT: Final = b"camveil/provision/v1 bundle\x00"
"""Domain separation for the proof of possession: the unit signs PROOF_CONTEXT || sha256(bundle)."""
_TMP_PREFIX: Final = ".tmp-"


# --- the bundle ----------------------------------------------------------------------------------


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
    if _spki(cert.public_key()) != _spki(tls_public):
        raise ProtocolViolationError("certificate is not for this unit's TLS key")
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.verify_directly_issued_by(ca)
    except (x509.ExtensionNotFound, ValueError, TypeError) as exc:
        raise ProtocolViolationError(
            f"certificate does not chain to the bundled CA: {exc}"
        ) from None
    except Exception:  # cryptography's InvalidSignature
        raise ProtocolViolationError("certificate signature does not verify under the CA") from None
    if not constraints.ca:
        raise ProtocolViolationError("the bundled CA certificate is not a CA")


def _spki(key: object) -> bytes:
    assert isinstance(key, pki.ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- the state directory -------------------------------------------------------------------------


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


# --- the request handler -------------------------------------------------------------------------


class UnitServer:
    """Answers the station's requests; the same request (same id and bytes) gets the same answer."""

    def __init__(self, store: UnitStore, channel: Channel, *, cache_size: int = 32) -> None:
        self._store = store
        self._channel = channel
        self._answers: OrderedDict[int, tuple[bytes, Message]] = OrderedDict()
        self._cache_size = cache_size
        self.provisioned_at: float | None = None
        self.ignored = 0

    def serve_once(self, timeout: float) -> bool:
        """Handle at most one request arriving within ``timeout``; True if one was handled."""
        request = self._channel.receive(timeout)
        if request is None:
            return False
        if is_reply(request):  # our own answer echoed back by a tty not yet in raw mode
            self.ignored += 1
            return False
        digest = hashlib.sha256(cbor2.dumps(request.to_wire(), canonical=True)).digest()
        cached = self._answers.get(request.id)
        if cached is not None and cached[0] == digest:
            answer = cached[1]
        else:
            answer = self.handle(request)
            self._answers[request.id] = (digest, answer)
            while len(self._answers) > self._cache_size:
                self._answers.popitem(last=False)
        self._channel.send(answer)
        return True

    def handle(self, request: Message) -> Message:
        try:
            if request.t == "hello":
                return self._hello(request)
            if request.t == "csr":
                return self._csr(request)
            if request.t == "bundle":
                return self._bundle(request)
        except ProtocolViolationError as exc:
            logger.warning("rejected %s: %s", request.t, exc)
            return error_reply(request, "bad-request", str(exc))
        except (CamveilError, OSError, ValueError) as exc:  # our own state is unusable
            logger.error("cannot answer %s: %s", request.t, exc)
            return error_reply(
                request,
                "unit-state",
                f"the unit's state cannot be used ({exc}); run `camveil factory-reset --yes` on it",
            )
        return error_reply(request, "unknown-type", f"unknown request type {request.t!r}")

    def _hello(self, request: Message) -> Message:
        body: dict[str, Any] = {"proto": PROTOCOL_VERSION}
        if self._store.is_provisioned():
            unit = self._store.load_provisioned()
            body |= {
                "state": "provisioned",
                "device": unit.device,
                "bundle_sha256": bundle_digest(unit.bundle_bytes),
            }
            keys = unit.keys
        else:
            body["state"] = "unprovisioned"
            keys = self._store.pending_keys()
        body |= {"ed25519": keys.ed25519, "x25519": keys.x25519}
        return reply_to(request, "hello.ok", body)

    def _csr(self, request: Message) -> Message:
        if self._store.is_provisioned():
            return _already(request, self._store)
        device = request.b.get("device")
        try:
            csr = pki.make_csr(self._store.pending_keys().tls_key, device)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            raise ProtocolViolationError(f"csr: invalid device id {device!r}") from None
        return reply_to(request, "csr.ok", {"csr": pki.csr_pem(csr)})

    def _bundle(self, request: Message) -> Message:
        data = request.b.get("bundle")
        if not isinstance(data, bytes):
            raise ProtocolViolationError("bundle: field 'bundle' missing or not bytes")
        if self._store.is_provisioned():
            unit = self._store.load_provisioned()
            if unit.bundle_bytes != data:
                return _already(request, self._store)
            logger.info("bundle for %s received again; answering with the same proof", unit.device)
        else:
            unit = self._store.commit(data)
            self.provisioned_at = time.monotonic()
            logger.info("provisioned as %s", unit.device)
        return reply_to(request, "bundle.ok", {"device": unit.device, "sig": _prove(unit)})


def _prove(unit: ProvisionedUnit) -> bytes:
    key: SigningKey = unit.keys.identity.signing_key
    return key.sign(proof_message(unit.bundle_bytes)).signature


def _already(request: Message, store: UnitStore) -> Message:
    with contextlib.suppress(OSError, ValueError):
        device = store.load_provisioned().device
        return error_reply(
            request,
            "already-provisioned",
            f"unit is already provisioned as {device}; run `camveil factory-reset --yes` on it "
            "to provision it again",
        )
    return error_reply(request, "already-provisioned", "unit is already provisioned")


# --- the listener loop ---------------------------------------------------------------------------


def listen(
    store: UnitStore,
    open_link: Callable[[], contextlib.AbstractContextManager[SerialLink]],
    *,
    stop: threading.Event,
    linger: float = 30.0,
    poll: float = 0.2,
    reopen_delay: float = 1.0,
) -> bool:
    """Serve provisioning requests until ``stop`` is set, or ``linger`` seconds after the unit got
    provisioned (so the station's retries are still answered). A failing port (USB host gone) is
    reopened after ``reopen_delay``. Returns True if the unit is provisioned when it returns.
    """
    store.recover()
    while not stop.is_set():
        try:
            with open_link() as link:
                server = UnitServer(store, Channel(link))
                logger.info("listening for the provisioning station")
                while not stop.is_set():
                    server.serve_once(poll)
                    done = server.provisioned_at
                    if done is not None and time.monotonic() - done >= linger:
                        return True
        except CamveilError as exc:  # the port failed (SerialPortError); the state is intact
            logger.warning("serial port failed (%s); reopening in %.0f s", exc, reopen_delay)
            stop.wait(reopen_delay)
    return store.is_provisioned()
