"""The unit's state directory as the agent reads it (written by provisioning, see
:mod:`provisioning.unit`; the file names here must stay the same as there)::

    <state_dir>/                    default /var/lib/camveil, 0700
        provisioned/
            identity.cbor           Ed25519 + X25519 identity, kid = device id (0600)
            tls.key  tls.crt        TLS client key (0600) and certificate, CN = device id
            ca.crt                  the CA pinned at provisioning (broker trust anchor)
            bundle.cbor             the station's bundle: device, broker URL, backend X25519
                                    key, operator Ed25519 key, site config
        seq                         the agent's sequence counter (agent.sequence)
        cmd-replay.cbor             replay window of accepted commands (survives restarts)
        outbox.db                   default outbox (agent.outbox)

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import cbor2
from nacl.public import PublicKey
from nacl.signing import VerifyKey

from agent.transport import TransportConfig
from contract.envelope.keys import Identity, PeerKeys, PublicIdentity, load_identity
from contract.errors import ConfigError, KeyFileError

PROVISIONED: Final = "provisioned"
IDENTITY_FILE: Final = "identity.cbor"
TLS_KEY_FILE: Final = "tls.key"
TLS_CERT_FILE: Final = "tls.crt"
CA_FILE: Final = "ca.crt"
BUNDLE_FILE: Final = "bundle.cbor"
SEQ_FILE: Final = "seq"
REPLAY_FILE: Final = "cmd-replay.cbor"
OUTBOX_FILE: Final = "outbox.db"
BUNDLE_VERSION: Final = 1
DEFAULT_BACKEND_KID: Final = "backend"
DEFAULT_OPERATOR_KID: Final = "operator"
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
        identity = load_identity(d / IDENTITY_FILE)
        bundle = _read_bundle(d / BUNDLE_FILE)
        if bundle["device"] != identity.kid:
            raise KeyFileError(
                f"{d}: identity is {identity.kid!r} but the bundle is for {bundle['device']!r}; "
                "re-provision the unit"
            )
        for name in (TLS_KEY_FILE, TLS_CERT_FILE, CA_FILE):
            if not (d / name).is_file():
                raise KeyFileError(f"{d / name} is missing; re-provision the unit")
        backend = PublicIdentity(
            kid=bundle["backend_kid"],
            verify_key=UNUSABLE_VERIFY_KEY,
            encryption_key=PublicKey(bundle["backend_x25519"]),
        )
        operator = PublicIdentity(
            kid=bundle["operator_kid"],
            verify_key=VerifyKey(bundle["operator_ed25519"]),
            encryption_key=UNUSABLE_X25519_KEY,
        )
        return cls(
            state_dir=state_dir,
            device_id=identity.kid,
            identity=identity,
            tls_cert=d / TLS_CERT_FILE,
            tls_key=d / TLS_KEY_FILE,
            ca_cert=d / CA_FILE,
            broker_url=bundle["broker"],
            backend=backend,
            operators=PeerKeys([operator]),
            site=bundle["site"],
        )


def encode_bundle(
    *,
    device: str,
    cert_pem: bytes,
    ca_pem: bytes,
    broker_url: str,
    backend: PublicIdentity,
    operator: PublicIdentity,
    site: Mapping[str, Any],
    issued_at: int,
) -> bytes:
    """A bundle as the station makes it (provisioning.unit.Bundle), with the kids named."""
    return cbor2.dumps(
        {
            "v": BUNDLE_VERSION,
            "device": device,
            "cert": cert_pem,
            "ca": ca_pem,
            "broker": broker_url,
            "backend_x25519": bytes(backend.encryption_key),
            "backend_kid": backend.kid,
            "operator_ed25519": bytes(operator.verify_key),
            "operator_kid": operator.kid,
            "site": dict(site),
            "issued_at": issued_at,
        },
        canonical=True,
    )


def _read_bundle(path: Path) -> dict[str, Any]:
    try:
        m = cbor2.loads(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(
            f"{path} cannot be read ({exc.strerror}); re-provision the unit"
        ) from None
    except Exception:  # cbor2 raises several types on bad input
        raise KeyFileError(f"{path} is not CBOR; re-provision the unit") from None
    if not isinstance(m, dict) or m.get("v") != BUNDLE_VERSION:
        raise KeyFileError(f"{path} is not a version {BUNDLE_VERSION} bundle")
    expected: dict[str, type] = {
        "device": str,
        "broker": str,
        "backend_x25519": bytes,
        "operator_ed25519": bytes,
        "site": dict,
    }
    for name, kind in expected.items():
        if not isinstance(m.get(name), kind):
            raise KeyFileError(f"{path}: field {name!r} missing or malformed; re-provision")
    for name in ("backend_x25519", "operator_ed25519"):
        if len(m[name]) != 32:
            raise KeyFileError(f"{path}: {name} is not a 32-byte key; re-provision")
    m.setdefault("backend_kid", DEFAULT_BACKEND_KID)
    m.setdefault("operator_kid", DEFAULT_OPERATOR_KID)
    return m
