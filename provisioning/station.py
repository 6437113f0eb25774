"""The station's end of provisioning: its directory (CA, keys, inventory) and the provisioning run.

Station directory (``camveil station init DIR``): the folder itself is 0711 (no listing; the
broker's user may only reach ``broker/``); everything in it but ``broker/`` is readable by the
station's user alone (files 0600, folders 0700)::

    ca/ca.crt ca/ca.key            the CA that signs device certificates (provisioning.pki)
    operator.key                   operator Ed25519 (+X25519) identity, kid "operator" (commands)
    backend.key                    backend X25519 (+Ed25519) identity, kid "backend": events are
                                   sealed to its X25519 key
    clients/                       TLS client certificates for backend-<name> (one per backend
                                   process connected at the same time: the broker takes the
                                   client id from the certificate; `camveil station
                                   add-backend`), operator-console
    share-group                    the backends' secret shared-subscription group (0600): copy it
                                   to the ingest hosts (`camveil listen --group-file`)
    broker/                        mosquitto config, ACL, server certificate (provisioning.broker)
                                   and crl.pem: the CRL of revoked units (`camveil station revoke`)
                                   and of certificates a renewal replaced (`camveil station renew`)
    station.json                   defaults: broker URL, backend and operator names, the
                                   camera every unit is given (``camera``: kind, source)
    inventory.sqlite               every unit (provisioning.inventory), and the certificates
                                   renewals issued (provisioning.renewal)
    devices.json                   trusted devices (dashboard, people): id -> public keys, site
    devices.cbor                   the same as a peers file (contract.envelope.keys.save_peers), for
                                   `camveil listen --devices DIR/devices.cbor`
    revocations.json               revoked units: id -> certificate serial, date, reason

A run (:meth:`Station.provision`): HELLO; for an unprovisioned unit CSR (CN = the device id the
station assigns) and signing; the bundle is recorded as pending *before* it is sent; BUNDLE; the
unit's signature over the bundle hash is verified; the unit is marked provisioned and the trusted
device lists are rewritten. Every step is safe to repeat after a cut cable or a station restart.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import pwd
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nacl.public import PublicKey
from nacl.signing import VerifyKey

from contract.envelope.keys import (
    Identity,
    PublicIdentity,
    load_identity,
    save_identity,
    save_peers,
)
from contract.errors import ProtocolViolationError, ProvisioningError
from contract.statedir import CAMERA_KINDS, Bundle, camera_source_problem
from provisioning import broker, pki
from provisioning.inventory import CertificateRecord, Inventory, Revocation, UnitRecord
from provisioning.proof import bundle_digest, verify_proof
from provisioning.serial_proto import (
    PROTOCOL_VERSION,
    Channel,
    Message,
)

logger = logging.getLogger(__name__)

DEFAULT_BROKER_URL: Final = "mqtts://camveil-broker.local:8883"
DEFAULT_SITE: Final = "default"
DEVICE_ID_PREFIX: Final = "cv-"
DEVICES_FILE_VERSION: Final = 1
UTC: Final = dt.timezone.utc


@dataclass(frozen=True)
class StationPaths:
    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def operator_key(self) -> Path:
        return self.root / "operator.key"

    @property
    def backend_key(self) -> Path:
        return self.root / "backend.key"

    @property
    def clients_dir(self) -> Path:
        return self.root / "clients"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def config(self) -> Path:
        return self.root / "station.json"

    @property
    def share_group(self) -> Path:
        return self.root / "share-group"

    def backend_cert(self, name: str) -> Path:
        return self.clients_dir / f"{pki.backend_identity(name)}.crt"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory.sqlite"

    @property
    def devices(self) -> Path:
        return self.root / "devices.json"

    @property
    def peers(self) -> Path:
        return self.root / "devices.cbor"

    @property
    def crl(self) -> Path:
        return self.broker_dir / "crl.pem"

    @property
    def revocations(self) -> Path:
        return self.root / "revocations.json"


@dataclass(frozen=True)
class CameraChoice:
    """The camera a unit is told to open at first boot (``[camera] kind`` and ``source`` of its
    config, unless its camveil.toml sets them)."""

    kind: str
    source: str | None = None
    """Device path, file or sensor number; ``None``: the kind's default (not sent)."""

    def __post_init__(self) -> None:
        if self.kind not in CAMERA_KINDS:
            raise ProvisioningError(
                f"camera kind {self.kind!r} is not one of {', '.join(CAMERA_KINDS)}"
            )
        if self.kind == "replay" and not self.source:
            raise ProvisioningError('camera kind "replay" needs a source (a video file)')
        if self.kind == "rtsp" and not self.source:
            raise ProvisioningError('camera kind "rtsp" needs a source (the stream URL)')
        problem = "" if self.source is None else camera_source_problem(self.kind, self.source)
        if problem:
            raise ProvisioningError(f"camera source {problem}")

    def as_settings(self) -> dict[str, str]:
        out = {"kind": self.kind}
        if self.source is not None:
            out["source"] = self.source
        return out


def unit_settings(camera: CameraChoice | None) -> dict[str, dict[str, Any]]:
    """The ``settings`` of a new bundle: MQTT on (the unit has just been given a broker, a
    certificate and the keys to seal to), and the camera when one was chosen."""
    settings: dict[str, dict[str, Any]] = {"mqtt": {"enabled": True}}
    if camera is not None:
        settings["camera"] = camera.as_settings()
    return settings


@dataclass(frozen=True)
class StationConfig:
    broker_url: str = DEFAULT_BROKER_URL
    backends: tuple[str, ...] = ("dashboard",)
    operators: tuple[str, ...] = ("console",)
    camera: CameraChoice | None = None
    """The camera every unit is given unless ``camveil provision --camera`` says otherwise;
    ``None`` (stations from before first-boot settings too): none sent, the unit's file decides."""

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "broker_url": self.broker_url,
            "backends": list(self.backends),
            "operators": list(self.operators),
        }
        if self.camera is not None:
            data["camera"] = self.camera.as_settings()
        return json.dumps(data, indent=2).encode() + b"\n"

    @classmethod
    def load(cls, path: Path) -> StationConfig:
        try:
            data = json.loads(path.read_text())
            camera = data.get("camera")
            return cls(
                broker_url=str(data["broker_url"]),
                backends=tuple(str(b) for b in data["backends"]),
                operators=tuple(str(o) for o in data["operators"]),
                camera=None if camera is None else CameraChoice(**camera),
            )
        except ProvisioningError as exc:
            raise ProvisioningError(f'{path}: {exc}; fix "camera" in it') from None
        except FileNotFoundError:
            raise ProvisioningError(
                f"{path.parent} is not a station directory (no {path.name}); create one with "
                f"`camveil station init {path.parent}`"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ProvisioningError(
                f"{path} is malformed ({exc}); restore it from backup"
            ) from None


def open_station(root: Path) -> StationPaths:
    """The paths of the existing station directory ``root``, after checking that it is one:
    ProvisioningError (naming the folder and the fix) for a missing path, a file, or a folder
    without the station's marker files (``station.json``, ``ca/ca.crt``, ``inventory.sqlite``).
    Nothing is created, so a mistyped folder is never turned into an empty station."""
    paths = StationPaths(Path(root))
    if not paths.root.exists():
        raise ProvisioningError(
            f"{root}: no such folder; create a station with `camveil station init {root}`"
        )
    if not paths.root.is_dir():
        raise ProvisioningError(f"{root} is a file, not a station directory")
    missing = [
        str(p.relative_to(paths.root))
        for p in (paths.config, paths.ca_dir / "ca.crt", paths.inventory)
        if not p.is_file()
    ]
    if missing:
        raise ProvisioningError(
            f"{root} is not a station directory (no {', '.join(missing)}); give the folder made "
            f"by `camveil station init`"
        )
    return paths


def _broker_owner(settings: broker.BrokerSettings) -> str | None:
    """Who must be able to read the broker's key: mosquitto drops root privileges to its user
    before loading it, so a station initialised as root hands the key to that user."""
    if os.geteuid() != 0:
        return None
    user = settings.user or "mosquitto"
    try:
        pwd.getpwnam(user)
    except KeyError:
        return None
    return user


def init_station(
    root: Path,
    *,
    broker_url: str = DEFAULT_BROKER_URL,
    broker_names: tuple[str, ...] = (),
    broker_settings: broker.BrokerSettings | None = None,
    backends: tuple[str, ...] = StationConfig.backends,
    camera: CameraChoice | None = None,
) -> StationPaths:
    """Create a station directory; refuses one that already has a CA. ``backends`` names the
    backend certificates to issue (``backend-<name>``, one per backend process connected at
    the same time); more can be added later with :func:`add_backend`.

    ``broker_url`` (``mqtts://host[:port]``) is where units will dial the broker: the broker
    certificate names its host and every one of ``broker_names`` (DNS names, or IP addresses as
    IP SANs), and the broker config listens on its port, on every address unless the host is
    loopback. ``broker_settings`` gives the rest; its port and bind address are taken from the
    URL."""
    paths = StationPaths(Path(root))
    if (paths.ca_dir / "ca.key").exists() or paths.config.exists():
        raise ProvisioningError(
            f"{root} is already a station directory; use it as it is, or choose an empty directory"
        )
    try:
        url = broker.parse_broker_url(broker_url)
        names = tuple(
            dict.fromkeys([url.host, *(broker.check_broker_name(n) for n in broker_names)])
        )
        backends = tuple(dict.fromkeys(backends))
        if not backends:
            raise ValueError("at least one backend certificate is needed")
        for name in backends:
            pki.backend_identity(name)
    except ValueError as exc:
        raise ProvisioningError(f"station init: {exc}") from None
    if paths.root.exists() and not paths.root.is_dir():
        raise ProvisioningError(f"station init: {root} is a file; choose a new folder")
    config = StationConfig(broker_url=url.url, backends=backends, camera=camera)
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    # 0711: no listing, but the broker's user may reach broker/ (its key is 0600, its own);
    # every other folder inside (ca/, clients/) is 0700 and every other file 0600.
    paths.root.chmod(0o711)
    for d in (paths.ca_dir, paths.clients_dir):
        d.mkdir(mode=0o700, exist_ok=True)
    ca = pki.make_ca()
    pki.write_issued(paths.ca_dir, "ca", ca)
    save_identity(paths.operator_key, Identity.generate("operator"))
    save_identity(paths.backend_key, Identity.generate("backend"))
    for name in config.backends:
        pki.write_issued(
            paths.clients_dir, pki.backend_identity(name), pki.make_backend_cert(ca, name)
        )
    for name in config.operators:
        pki.write_issued(
            paths.clients_dir, pki.operator_identity(name), pki.make_operator_cert(ca, name)
        )
    settings = dataclasses.replace(
        broker_settings or broker.BrokerSettings(),
        port=url.port,
        bind_address=url.bind_address,
    )
    broker.write_broker_state(
        paths.broker_dir,
        settings,
        owner=_broker_owner(settings),
        ca_cert=ca.cert,
        server=pki.make_server_cert(ca, names),
        backends=config.backends,
        operators=config.operators,
        crl=pki.make_crl(ca, [], number=1),
    )
    _create_private(paths.inventory)
    pki.write_atomic(paths.share_group, broker.new_share_group().encode() + b"\n", 0o600)
    with Inventory(paths.inventory):
        pass
    write_devices_file(paths.devices, [])
    save_peers(paths.peers, [])
    write_revocations_file(paths.revocations, [])
    pki.write_atomic(paths.config, config.to_json(), 0o600)
    logger.info("station initialised in %s", paths.root)
    return paths


def _create_private(path: Path) -> None:
    """Create an empty file 0600 (SQLite gives its -wal/-shm files the database file's mode)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    path.chmod(0o600)


def add_backend(root: Path, name: str) -> Path:
    """Issue the client certificate ``backend-<name>`` (into ``clients/``), record it in
    station.json and rewrite the broker ACL so it may ingest. Returns the certificate's path.
    mosquitto reads the ACL at start and on SIGHUP: reload it before the backend connects."""
    paths = open_station(root)
    config = StationConfig.load(paths.config)
    try:
        cn = pki.backend_identity(name)
    except ValueError as exc:
        raise ProvisioningError(f"add-backend: {exc}") from None
    if name in config.backends:
        raise ProvisioningError(
            f"{cn} exists already ({paths.backend_cert(name)}); pick a new name"
        )
    ca = load_ca(paths)
    pki.write_issued(paths.clients_dir, cn, pki.make_backend_cert(ca, name))
    config = dataclasses.replace(config, backends=(*config.backends, name))
    with Inventory(paths.inventory) as inventory:
        devices = [u.device for u in inventory.units("provisioned")]
    acl = broker.render_acl(config.backends, config.operators, devices)
    pki.write_atomic(paths.broker_dir / "acl", acl.encode(), 0o644)
    pki.write_atomic(paths.config, config.to_json(), 0o644)
    logger.info("issued the backend certificate %s", cn)
    return paths.backend_cert(name)


def load_ca(paths: StationPaths) -> pki.Issued:
    return pki.Issued(
        pki.load_key_pem((paths.ca_dir / "ca.key").read_bytes()),
        pki.load_cert_pem((paths.ca_dir / "ca.crt").read_bytes()),
    )


@dataclass(frozen=True)
class RevokeResult:
    revocation: Revocation
    #: the broker config had no ``crlfile`` (a station from before revocation) and now has one
    config_patched: bool


def revoke_unit(root: Path, device: str, reason: str = "unspecified") -> RevokeResult:
    """Revoke ``device``: its certificate serial joins the CRL (``broker/crl.pem``, signed by
    the station CA), it leaves the inventory and the trusted device lists (devices.cbor,
    devices.json) and the revocation is recorded (inventory, revocations.json). A pending unit
    (bundle built, not confirmed) is revoked as well: it may hold the certificate already.

    The broker enforces the CRL once it re-reads it (SIGHUP or restart; see docs/INSTALL.md)."""
    paths = open_station(root)
    config = StationConfig.load(paths.config)
    ca = load_ca(paths)
    with Inventory(paths.inventory) as inventory:
        record = inventory.by_device(device)
        if record is None:
            done = [r for r in inventory.revocations() if r.device == device]
            if done:
                when = _iso(done[-1].revoked_at)
                raise ProvisioningError(f"{device} was revoked already ({when})")
            known = ", ".join(u.device for u in inventory.units()) or "none"
            raise ProvisioningError(f"no unit {device!r} in the inventory (units: {known})")
        serial = current_certificate(inventory, record).serial_number

        def publish(units: list[UnitRecord], revocations: list[Revocation]) -> None:
            write_crl(paths, ca, revocations, inventory.certificates_in_crl())
            write_revocations_file(paths.revocations, revocations)
            publish_trusted(paths, config, units)

        revocation = inventory.revoke(device, serial, reason, publish)
    patched = _ensure_crlfile(paths)
    logger.info("revoked %s (certificate serial %s)", device, revocation.serial)
    return RevokeResult(revocation, patched)


def current_certificate(inventory: Inventory, record: UnitRecord) -> pki.x509.Certificate:
    """The certificate unit ``record`` uses: the last one it confirmed after a renewal, else the
    one in its bundle."""
    for cert in reversed(inventory.certificates(record.device)):
        if cert.state == "current":
            return pki.load_cert_pem(cert.cert)
    return pki.load_cert_pem(Bundle.decode(record.bundle).cert_pem)


def write_crl(
    paths: StationPaths,
    ca: pki.Issued,
    revocations: list[Revocation],
    certificates: list[CertificateRecord],
    now: float | None = None,
) -> None:
    """broker/crl.pem: every revoked unit's certificate, and every certificate a renewal
    superseded or a revocation took with it until it expires (an expired one is refused by the
    broker anyway). Its number is one more than the CRL it replaces."""
    now = time.time() if now is None else now
    entries = {int(r.serial, 16): r.revoked_at for r in revocations}
    for c in certificates:
        if c.not_after > now:
            entries.setdefault(int(c.serial, 16), c.changed_at)
    number = len(revocations) + 1
    try:
        old = pki.load_crl_pem(paths.crl.read_bytes())
        crl_number = old.extensions.get_extension_for_class(pki.x509.CRLNumber).value
        number = max(number, crl_number.crl_number + 1)
    except (OSError, ValueError, pki.x509.ExtensionNotFound):
        pass
    crl = pki.make_crl(
        ca,
        [
            pki.Revoked(serial, dt.datetime.fromtimestamp(at, UTC))
            for serial, at in sorted(entries.items())
        ],
        number=number,
    )
    pki.write_atomic(paths.crl, pki.crl_pem(crl), 0o644)


def _ensure_crlfile(paths: StationPaths) -> bool:
    """Add ``crlfile`` to the listener of a broker config rendered before stations had a CRL."""
    conf = paths.broker_dir / "mosquitto.conf"
    text = conf.read_text()
    if any(line.startswith("crlfile ") for line in text.splitlines()):
        return False
    lines = text.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("keyfile "))
    lines.insert(at + 1, broker.CRL_COMMENT + f"crlfile {paths.crl}\n")
    pki.write_atomic(conf, "".join(lines).encode(), 0o644)
    return True


def write_revocations_file(path: Path, revocations: list[Revocation]) -> None:
    """revocations.json: ``{"version": 1, "revoked": {device: {"serial", "revoked_at",
    "reason"}}}`` for the dashboard and people (the CRL is the broker's copy)."""
    data = {
        "version": DEVICES_FILE_VERSION,
        "revoked": {
            r.device: {"serial": r.serial, "revoked_at": _iso(r.revoked_at), "reason": r.reason}
            for r in revocations
        },
    }
    pki.write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", 0o600)


def publish_trusted(paths: StationPaths, config: StationConfig, units: list[UnitRecord]) -> None:
    """Rewrite what the backends and the broker trust from the provisioned ``units``: devices.json,
    devices.cbor (the ingest's peers file, replaced atomically so a reader sees old or new) and
    the ACL."""
    write_devices_file(paths.devices, units)
    save_peers(
        paths.peers,
        [PublicIdentity(u.device, VerifyKey(u.ed25519), PublicKey(u.x25519)) for u in units],
    )
    acl = broker.render_acl(config.backends, config.operators, [u.device for u in units])
    pki.write_atomic(paths.broker_dir / "acl", acl.encode(), 0o644)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def broker_cert_names(paths: StationPaths) -> list[str]:
    """The DNS names and IP addresses in the station's broker certificate."""
    cert = pki.load_cert_pem((paths.broker_dir / "server.crt").read_bytes())
    return pki.server_names(cert)


def derive_device_id(ed25519: bytes) -> str:
    """The default device id: ``cv-`` + 16 hex digits of sha256(Ed25519 public key).

    Derived from the key, so a station that restarts mid-run assigns the same id again.
    """
    return DEVICE_ID_PREFIX + hashlib.sha256(ed25519).hexdigest()[:16]


def write_devices_file(path: Path, units: list[UnitRecord]) -> None:
    """devices.json: ``{"version": 1, "devices": {id: {"ed25519", "x25519" (base64), ...}}}``."""
    devices = {
        u.device: {
            "ed25519": base64.b64encode(u.ed25519).decode(),
            "x25519": base64.b64encode(u.x25519).decode(),
            "site": u.site,
            "provisioned_at": dt.datetime.fromtimestamp(
                u.provisioned_at or 0, dt.timezone.utc
            ).isoformat(timespec="seconds"),
        }
        for u in units
    }
    data = {"version": DEVICES_FILE_VERSION, "devices": devices}
    pki.write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", 0o600)


@dataclass(frozen=True)
class ProvisionResult:
    device: str
    #: "provisioned" (this run), or "confirmed" (the unit already held this station's bundle)
    outcome: str
    seconds: float
    retries: int
    #: the bundle's first-boot settings (empty: a bundle from before them)
    settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


class Station:
    """One provisioning run over ``channel`` with the station directory ``paths``."""

    def __init__(
        self,
        paths: StationPaths,
        channel: Channel,
        *,
        timeout: float = 2.0,
        attempts: int = 5,
    ) -> None:
        self._paths = paths
        self._channel = channel
        self._timeout = timeout
        self._attempts = attempts

    def _request(self, t: str, body: dict[str, Any]) -> Message:
        return self._channel.request(t, body, timeout=self._timeout, attempts=self._attempts)

    def provision(
        self,
        *,
        site: str = DEFAULT_SITE,
        broker_url: str | None = None,
        device_id: str | None = None,
        camera: CameraChoice | None = None,
    ) -> ProvisionResult:
        """Provision the unit on the channel. ``camera`` (default: the station's, from
        station.json) is put in the bundle's settings, with MQTT on: the unit's agent applies
        them under its own config file (docs/PROTOCOL.md, "Bundle")."""
        start = time.monotonic()
        config = StationConfig.load(self._paths.config)
        url = config.broker_url if broker_url is None else self._check_url(broker_url)
        settings = unit_settings(camera or config.camera)
        hello = self._request("hello", {"proto": PROTOCOL_VERSION})
        if hello.b.get("proto") != PROTOCOL_VERSION:
            raise ProvisioningError(
                f"the unit speaks provisioning protocol {hello.b.get('proto')!r}, this station "
                f"{PROTOCOL_VERSION}: install the same camveil version on both"
            )
        state = hello.b.get("state")
        ed25519, x25519 = _key32(hello, "ed25519"), _key32(hello, "x25519")
        with Inventory(self._paths.inventory) as inventory:
            revoked = inventory.revoked_key(ed25519)
            if revoked is not None:
                raise ProvisioningError(
                    f"this unit was revoked as {revoked.device} ({_iso(revoked.revoked_at)}): "
                    "its keys are not trusted again; run `camveil factory-reset --yes` on it "
                    "for new keys, then provision it"
                )
            record = inventory.by_ed25519(ed25519)
            if state == "provisioned":
                bundle_bytes = self._known_bundle(hello, record)
                outcome = "confirmed"
            elif state == "unprovisioned":
                pending = self._pending_bundle(record, x25519, site, url, device_id, settings)
                bundle_bytes = pending or self._new_bundle(
                    inventory, ed25519, x25519, site, url, device_id, settings
                )
                outcome = "provisioned"
            else:
                raise ProtocolViolationError(f"hello: unknown unit state {state!r}")
            sent = Bundle.decode(bundle_bytes)
            device = sent.device
            reply = self._request("bundle", {"bundle": bundle_bytes})
            sig = reply.b.get("sig")
            if reply.b.get("device") != device or not isinstance(sig, bytes):
                raise ProtocolViolationError("bundle reply does not name the device or has no sig")
            if not verify_proof(ed25519, bundle_bytes, sig):
                raise ProtocolViolationError(
                    "the unit's proof of possession does not verify; the unit is provisioned but "
                    "NOT trusted: factory-reset it and provision again"
                )
            inventory.mark_provisioned(device, lambda units: self._publish(units, config))
        elapsed = time.monotonic() - start
        logger.info("unit %s %s in %.2f s", device, outcome, elapsed)
        return ProvisionResult(device, outcome, elapsed, self._channel.retries, sent.settings)

    def _check_url(self, url: str) -> str:
        """A per-unit broker URL, refused unless the broker certificate names its host (the
        unit would fail every TLS handshake)."""
        try:
            parsed = broker.parse_broker_url(url)
        except ValueError as exc:
            raise ProvisioningError(str(exc)) from None
        names = broker_cert_names(self._paths)
        if parsed.host not in names:
            raise ProvisioningError(
                f"the broker certificate does not name {parsed.host} (it names "
                f"{', '.join(names)}); use one of those, or re-create the station with "
                f"--broker-name {parsed.host}"
            )
        return parsed.url

    def _known_bundle(self, hello: Message, record: UnitRecord | None) -> bytes:
        device = hello.b.get("device")
        digest = hello.b.get("bundle_sha256")
        if record is None or record.device != device or bundle_digest(record.bundle) != digest:
            raise ProvisioningError(
                f"the unit is already provisioned as {device!r}, but not with a bundle from this "
                "station; run `camveil factory-reset --yes` on the unit to provision it here"
            )
        return record.bundle

    @staticmethod
    def _pending_bundle(
        record: UnitRecord | None,
        x25519: bytes,
        site: str,
        url: str,
        device_id: str | None,
        settings: dict[str, dict[str, Any]],
    ) -> bytes | None:
        """The bundle built for this unit by an earlier, interrupted run, if it still fits."""
        if record is None:
            return None
        if record.state == "provisioned" or record.x25519 != x25519:
            raise ProvisioningError(
                f"inventory already holds a provisioned unit {record.device} with this key, but "
                "the unit says it is unprovisioned; check the inventory (restored backup?)"
            )
        bundle = Bundle.decode(record.bundle)
        wanted = device_id in (None, bundle.device)
        same = bundle.site.get("name") == site and bundle.broker_url == url
        if wanted and same and bundle.settings == settings:
            logger.info("resending the pending bundle of %s", record.device)
            return record.bundle
        return None

    def _new_bundle(
        self,
        inventory: Inventory,
        ed25519: bytes,
        x25519: bytes,
        site: str,
        url: str,
        device_id: str | None,
        settings: dict[str, dict[str, Any]],
    ) -> bytes:
        device = pki.check_device_id(device_id or derive_device_id(ed25519))
        other = inventory.by_device(device)
        if other is not None and other.ed25519 != ed25519:
            raise ProvisioningError(
                f"device id {device} already belongs to another unit in the inventory; "
                "choose another --device-id"
            )
        reply = self._request("csr", {"device": device})
        csr_pem = reply.b.get("csr")
        if not isinstance(csr_pem, bytes):
            raise ProtocolViolationError("csr reply has no 'csr' bytes")
        ca = pki.Issued(
            key=pki.load_key_pem((self._paths.ca_dir / "ca.key").read_bytes()),
            cert=pki.load_cert_pem((self._paths.ca_dir / "ca.crt").read_bytes()),
        )
        try:
            cert = pki.sign_device_csr(ca, pki.load_csr_pem(csr_pem), expected_device_id=device)
        except ValueError as exc:
            raise ProtocolViolationError(f"the unit's CSR is not acceptable: {exc}") from None
        backend = load_identity(self._paths.backend_key)
        operator = load_identity(self._paths.operator_key)
        bundle = Bundle(
            device=device,
            cert_pem=pki.cert_pem(cert),
            ca_pem=pki.cert_pem(ca.cert),
            broker_url=url,
            backend_x25519=bytes(backend.encryption_key.public_key),
            backend_ed25519=bytes(backend.signing_key.verify_key),
            backend_kid=backend.kid,
            operator_ed25519=bytes(operator.signing_key.verify_key),
            operator_kid=operator.kid,
            site={"name": site},
            issued_at=int(time.time()),
            settings=settings,
        ).encode()
        inventory.add_pending(
            UnitRecord(device, ed25519, x25519, "pending", site, bundle, time.time())
        )
        return bundle

    def _publish(self, units: list[UnitRecord], config: StationConfig) -> None:
        publish_trusted(self._paths, config, units)


def _key32(message: Message, name: str) -> bytes:
    value = message.b.get(name)
    if not isinstance(value, bytes) or len(value) != 32:
        raise ProtocolViolationError(f"{message.t}: field {name!r} missing or not 32 bytes")
    return value
