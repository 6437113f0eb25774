"""The unit's state directory as the agent reads it: the layout and the bundle format are
:mod:`contract.statedir`, written by provisioning (:mod:`provisioning.unit_store`).

The bundle carries only the halves of the backend and operator keys the unit needs: the
backend's X25519 key (events are encrypted to it) and the operator's Ed25519 key (commands are
verified with it). Their kids are ``backend`` and ``operator`` (the station's), unless the
bundle names them (``backend_kid`` / ``operator_kid``). The unused halves are filled with keys
that cannot work: a small-order Ed25519 point (libsodium refuses every signature under it) and
the all-zero X25519 point (libsodium refuses the key agreement), so a backend can never be
mistaken for a command signer, nor anything be sealed to an operator's (unknown) X25519 key.
Command acks are sealed to the X25519 form of the operator's Ed25519 key instead
(:func:`agent.commands.ack_recipient`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from nacl.public import PublicKey
from nacl.signing import VerifyKey

from agent.transport import TransportConfig
from contract.envelope.keys import Identity, PeerKeys, PublicIdentity, load_identity
from contract.errors import ConfigError, KeyFileError, ProtocolViolationError
from contract.statedir import (
    BUNDLE_FILE,
    CA_FILE,
    IDENTITY_FILE,
    OUTBOX_FILE,
    PROVISIONED,
    REPLAY_FILE,
    SEQ_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    Bundle,
)
from provisioning.unit_renewal import ClientCertFiles

logger = logging.getLogger(__name__)

DEFAULT_MQTT_PORT: Final = 8883

# keys that libsodium refuses to use (see the module docstring)
UNUSABLE_VERIFY_KEY: Final = VerifyKey(b"\x01" + bytes(31))
UNUSABLE_X25519_KEY: Final = PublicKey(bytes(32))


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtts://host:port`` (or ``ssl://``) -> host and port (default 8883)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtts", "ssl") or not parts.hostname:
        raise ConfigError(f"broker URL {url!r}: use mqtts://host:port (TLS is required)")
    try:
        port = parts.port or DEFAULT_MQTT_PORT
    except ValueError:
        raise ConfigError(f"broker URL {url!r}: the port is not a number") from None
    return BrokerAddress(parts.hostname, port)


@dataclass(frozen=True)
class UnitState:
    """Everything the daemon needs from the state directory."""

    state_dir: Path
    device_id: str
    identity: Identity = field(repr=False)
    tls_cert: Path
    tls_key: Path
    ca_cert: Path
    broker_url: str
    backend: PublicIdentity
    """Events, status and acks are encrypted to this key."""
    operators: PeerKeys
    """Commands must be signed by one of these."""
    site: Mapping[str, Any] = field(default_factory=dict)
    receipts: bool = False
    """The bundle holds the backend's verify key, so its receipts can be checked."""

    @property
    def seq_path(self) -> Path:
        return self.state_dir / SEQ_FILE

    @property
    def replay_path(self) -> Path:
        return self.state_dir / REPLAY_FILE

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / OUTBOX_FILE

    def transport_config(self, broker_url: str = "", **settings: Any) -> TransportConfig:
        """This unit's MQTT session: its certificate, the CA pinned at provisioning and the
        broker it was given then (or ``broker_url``); ``settings`` are further TransportConfig
        fields (keepalive, reconnect delays, ...)."""
        broker = parse_broker_url(broker_url or self.broker_url)
        return TransportConfig(
            device_id=self.device_id,
            host=broker.host,
            port=broker.port,
            ca_file=self.ca_cert,
            cert_file=self.tls_cert,
            key_file=self.tls_key,
            **settings,
        )

    @classmethod
    def load(cls, state_dir: Path) -> UnitState:
        """Read the provisioned state; KeyFileError / ConfigError say what is missing."""
        state_dir = Path(state_dir)
        d = state_dir / PROVISIONED
        if not d.is_dir():
            raise ConfigError(
                f"{d} does not exist: the unit is not provisioned (camveil provision), or "
                "[mqtt] state_dir points elsewhere"
            )
        repaired = ClientCertFiles(d).recover()  # a certificate swap cut by a power loss
        if repaired:
            logger.warning("%s: %s", d, repaired)
        identity = load_identity(d / IDENTITY_FILE)
        bundle = _read_bundle(d / BUNDLE_FILE)
        if bundle.device != identity.kid:
            raise KeyFileError(
                f"{d}: identity is {identity.kid!r} but the bundle is for {bundle.device!r}; "
                "re-provision the unit"
            )
        for name in (TLS_KEY_FILE, TLS_CERT_FILE, CA_FILE):
            if not (d / name).is_file():
                raise KeyFileError(f"{d / name} is missing; re-provision the unit")
        backend = PublicIdentity(
            kid=bundle.backend_kid,
            verify_key=(
                VerifyKey(bundle.backend_ed25519)
                if bundle.backend_ed25519 is not None
                else UNUSABLE_VERIFY_KEY
            ),
            encryption_key=PublicKey(bundle.backend_x25519),
        )
        operator = PublicIdentity(
            kid=bundle.operator_kid,
            verify_key=VerifyKey(bundle.operator_ed25519),
            encryption_key=UNUSABLE_X25519_KEY,
        )
        return cls(
            receipts=bundle.backend_ed25519 is not None,
            state_dir=state_dir,
            device_id=identity.kid,
            identity=identity,
            tls_cert=d / TLS_CERT_FILE,
            tls_key=d / TLS_KEY_FILE,
            ca_cert=d / CA_FILE,
            broker_url=bundle.broker_url,
            backend=backend,
            operators=PeerKeys([operator]),
            site=bundle.site,
        )


def _read_bundle(path: Path) -> Bundle:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"{path} cannot be read ({exc.strerror}); re-provision the unit"
        ) from None
    try:
        return Bundle.decode(data)
    except ProtocolViolationError as exc:
        raise KeyFileError(f"{path}: {exc}; re-provision the unit") from None
