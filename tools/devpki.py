"""Throw-away keys and certificates for the demo and tests. Never for units
in the field: the CA key is written next to everything else.

Layout of DIR::

    ca.crt  ca.key                  the CA (P-256)
    broker/                         mosquitto.conf, acl, ca.crt, server.crt/.key, data/ (the
                                    repo's broker config: TLS, client certificates, ACL)
    unit/                           a unit's state dir, as provisioning leaves it
        provisioned/                identity.cbor, tls.key, tls.crt, ca.crt, bundle.cbor
    backend/                        identity.cbor (kid "backend"), devices.cbor (trusted units),
                                    share-group (the secret shared-subscription group, 0600),
                                    backend-<name>.crt/.key (MQTT client certificates: one
                                    per process connected at the same time, ``--backends``)
    operator/                       identity.cbor (kid "operator"),
                                    operator-<name>.crt/.key (MQTT client certificates, as many)

The broker takes each client's id from its certificate name, so two processes connected with one
certificate disconnect each other: `camveil listen --dev-pki`, `camveil cmd --pki` and `camveil
chaos --pki` each claim a certificate no other process holds (contract.certclaim).

The unit's keys are made here in one place rather than on the unit; the certificate still goes
through a CSR, as on a real unit (provisioning.pki).
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass
from pathlib import Path

from contract.envelope.keys import Identity, PublicIdentity, save_identity, save_peers
from contract.statedir import (
    BUNDLE_FILE,
    CA_FILE,
    DEFAULT_BACKEND_KID,
    DEFAULT_OPERATOR_KID,
    IDENTITY_FILE,
    PROVISIONED,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    Bundle,
)
from provisioning import broker as broker_config
from provisioning import pki

DEFAULT_DEVICE = "cv-demo-0001"
#: certificates of each kind: enough for a shared-subscription pair, a chaos run and a spare
DEFAULT_CLIENTS = 4
SHARE_GROUP_FILE = "share-group"


def client_names(first: str, count: int) -> tuple[str, ...]:
    """``first``, ``first-2``, ... ``first-<count>``."""
    if count < 1:
        raise ValueError("need at least one backend and one operator certificate")
    return (first, *(f"{first}-{n}" for n in range(2, count + 1)))


@dataclass(frozen=True)
class ClientPaths:
    """Where a backend or operator tool finds its keys."""

    identity: Path
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class DevPki:
    root: Path
    device_id: str
    broker_url: str
    broker: broker_config.BrokerFiles
    unit_dir: Path
    #: the first backend certificate (``backends[0]``)
    backend: ClientPaths
    devices: Path
    #: the first operator certificate (``operators[0]``)
    operator: ClientPaths
    #: one per concurrently connected backend process
    backends: tuple[ClientPaths, ...] = ()
    operators: tuple[ClientPaths, ...] = ()
    #: the file holding the secret shared-subscription group of the backends
    share_group: Path | None = None


def write_unit_state(
    state_dir: Path,
    *,
    ca: pki.Issued,
    device_id: str,
    broker_url: str,
    backend: PublicIdentity,
    operator: PublicIdentity,
    site: dict[str, str] | None = None,
) -> Identity:
    """A provisioned state dir for ``device_id`` (keys made here, certificate via a CSR)."""
    d = state_dir / PROVISIONED
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir.chmod(0o700)
    identity = Identity.generate(device_id)
    tls_key = pki.make_device_key()
    cert = pki.sign_device_csr(ca, pki.make_csr(tls_key, device_id), expected_device_id=device_id)
    save_identity(d / IDENTITY_FILE, identity)
    pki.write_private_key(d / TLS_KEY_FILE, tls_key)
    pki.write_cert(d / TLS_CERT_FILE, cert)
    pki.write_cert(d / CA_FILE, ca.cert)
    bundle = Bundle(
        device=device_id,
        cert_pem=pki.cert_pem(cert),
        ca_pem=pki.cert_pem(ca.cert),
        broker_url=broker_url,
        backend_x25519=bytes(backend.encryption_key),
        backend_ed25519=bytes(backend.verify_key),
        operator_ed25519=bytes(operator.verify_key),
        site=site or {"name": "dev"},
        issued_at=int(time.time()),
        backend_kid=backend.kid,
        operator_kid=operator.kid,
    ).encode()
    pki.write_atomic(d / BUNDLE_FILE, bundle, 0o600)
    return identity


def _clients(
    directory: Path, issued: list[pki.Issued], identity: Identity, ca_file: Path
) -> tuple[ClientPaths, ...]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    save_identity(directory / IDENTITY_FILE, identity)
    out = []
    for one in issued:
        files = pki.write_issued(directory, one.common_name, one)
        out.append(ClientPaths(directory / IDENTITY_FILE, files.cert, files.key, ca_file))
    return tuple(out)


def make_dev_pki(
    root: Path,
    *,
    device_id: str = DEFAULT_DEVICE,
    port: int = 8883,
    host: str = "127.0.0.1",
    backend_name: str = "dashboard",
    operator_name: str = "console",
    clients: int = DEFAULT_CLIENTS,
) -> DevPki:
    """Write everything (see the module docstring) into ``root``, which must not exist yet."""
    pki.check_device_id(device_id)
    backend_names = client_names(backend_name, clients)
    operator_names = client_names(operator_name, clients)
    root.mkdir(parents=True, mode=0o700)
    ca = pki.make_ca("camveil dev CA")
    ca_file = root / "ca.crt"
    pki.write_cert(ca_file, ca.cert)
    pki.write_private_key(root / "ca.key", ca.key)

    server = pki.make_server_cert(ca, (host,), loopback=True)
    settings = broker_config.BrokerSettings(
        port=port,
        bind_address=host,
        # as root, mosquitto drops to user "mosquitto", which cannot read our 0600 key
        user=getpass.getuser(),
        autosave_interval=5,
    )
    broker_files = broker_config.write_broker_state(
        root / "broker",
        settings,
        ca_cert=ca.cert,
        server=server,
        backends=backend_names,
        operators=operator_names,
        devices=[device_id],
    )

    backend_id = Identity.generate(DEFAULT_BACKEND_KID)
    operator_id = Identity.generate(DEFAULT_OPERATOR_KID)
    backends = _clients(
        root / "backend", [pki.make_backend_cert(ca, n) for n in backend_names], backend_id, ca_file
    )
    operators = _clients(
        root / "operator",
        [pki.make_operator_cert(ca, n) for n in operator_names],
        operator_id,
        ca_file,
    )
    share_group = root / "backend" / SHARE_GROUP_FILE
    pki.write_atomic(share_group, broker_config.new_share_group().encode() + b"\n", 0o600)
    broker_url = f"mqtts://{host}:{port}"
    device = write_unit_state(
        root / "unit",
        ca=ca,
        device_id=device_id,
        broker_url=broker_url,
        backend=backend_id.public(),
        operator=operator_id.public(),
    )
    devices = root / "backend" / "devices.cbor"
    save_peers(devices, [device.public()])
    return DevPki(
        root=root,
        device_id=device_id,
        broker_url=broker_url,
        broker=broker_files,
        unit_dir=root / "unit",
        backend=backends[0],
        devices=devices,
        operator=operators[0],
        backends=backends,
        operators=operators,
        share_group=share_group,
    )
