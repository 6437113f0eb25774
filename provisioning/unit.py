"""The unit's end of provisioning: answering the station's requests over the serial link.

:class:`UnitServer` answers HELLO (public keys, state), CSR (for the pending TLS key) and BUNDLE
(stored by :class:`~provisioning.unit_store.UnitStore`, answered with the proof of possession of
:mod:`provisioning.proof`); :func:`listen` serves it on a serial port until the unit is
provisioned. Private keys never leave the state directory: HELLO returns public keys, the TLS key
leaves only as a CSR. The store and the proof are re-exported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cbor2
from nacl.signing import SigningKey

from contract.errors import CamveilError, ProtocolViolationError
from provisioning import pki
from provisioning.proof import (
    PROOF_CONTEXT,
    bundle_digest,
    check_bundle_for_key,
    proof_message,
    verify_proof,
)
from provisioning.serial_proto import (
    PROTOCOL_VERSION,
    Channel,
    Message,
    SerialLink,
    error_reply,
    is_reply,
    reply_to,
)
from provisioning.unit_store import ProvisionedUnit, UnitKeys, UnitStore

__all__ = [
    "PROOF_CONTEXT",
    "ProvisionedUnit",
    "UnitKeys",
    "UnitServer",
    "UnitStore",
    "bundle_digest",
    "check_bundle_for_key",
    "listen",
    "proof_message",
    "verify_proof",
]

logger = logging.getLogger(__name__)


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
