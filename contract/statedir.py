"""The unit's state directory and the provisioning bundle, defined once: provisioning writes
them (:mod:`provisioning.unit`), the agent reads them (:mod:`agent.unitstate`), the dev PKI
makes them (:mod:`tools.devpki`). Wire format of the bundle: docs/PROTOCOL.md, "Provisioning over
USB serial", "Bundle" and "Unit state".

::

    <state_dir>/                    default /var/lib/camveil, 0700 (0600 private files)
        pending/                    keys made on the unit before it has an identity (first HELLO)
            identity.cbor           Ed25519 + X25519 (contract.envelope.keys format, kid "pending")
            tls.key                 ECDSA P-256 key of the TLS client certificate (PKCS#8 PEM)
        provisioned/                present only when provisioning completed
            identity.cbor           the same keys under kid = device id (0600)
            tls.key  tls.crt        TLS client key (0600) and certificate, CN = device id
                                    (replaced by a renewal over MQTT: docs/PROTOCOL.md,
                                    "Certificate renewal")
            tls-next.key            a renewal's staged TLS key (0600), made on the unit for the
                                    CSR of a ``renew_cert`` command
            tls-next.crt            its certificate from ``install_cert``, until the broker
                                    accepted it; then both are renamed over tls.key / tls.crt
            ca.crt                  the CA pinned at provisioning (broker trust anchor)
            bundle.cbor             the exact bundle bytes the station sent (signed in the proof):
                                    device, broker URL, backend X25519 key, operator Ed25519 key,
                                    site config, and the provisioned settings (camera kind and
                                    source, MQTT on) that the agent's config loader puts *under*
                                    the operator's camveil.toml (agent.config); its
                                    certificate stays the one issued at provisioning, tls.crt is
                                    the one in use
        seq                         the agent's sequence counter (agent.sequence)
        cmd-replay.cbor             replay memory of accepted commands (agent.commands)
        outbox.db                   default outbox (agent.outbox)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cbor2

from contract.errors import ProtocolViolationError
from contract.ids import check_device_id, check_kid

DEFAULT_STATE_DIR: Final = Path("/var/lib/camveil")
PENDING: Final = "pending"
PROVISIONED: Final = "provisioned"
IDENTITY_FILE: Final = "identity.cbor"
TLS_KEY_FILE: Final = "tls.key"
TLS_CERT_FILE: Final = "tls.crt"
TLS_NEXT_KEY_FILE: Final = "tls-next.key"
TLS_NEXT_CERT_FILE: Final = "tls-next.crt"
CA_FILE: Final = "ca.crt"
BUNDLE_FILE: Final = "bundle.cbor"
SEQ_FILE: Final = "seq"
REPLAY_FILE: Final = "cmd-replay.cbor"
OUTBOX_FILE: Final = "outbox.db"

BUNDLE_VERSION: Final = 1

CAMERA_KINDS: Final = ("synthetic", "replay", "v4l2", "picamera2", "gstreamer", "rtsp")
"""The camera kinds a station may put in a bundle (``hw.camera.config.KINDS``; a unit test keeps
the two equal: provisioning cannot import ``hw``)."""
PROVISIONED_SETTINGS: Final[Mapping[str, Mapping[str, type]]] = {
    "camera": {"kind": str, "source": str},
    "mqtt": {"enabled": bool},
}
"""The settings a bundle may carry (``settings``), by config section and key, with their type.
The agent applies these and ignores (with a warning) any other key a newer station sent."""
DEFAULT_BACKEND_KID: Final = "backend"
DEFAULT_OPERATOR_KID: Final = "operator"


@dataclass(frozen=True)
class Bundle:
    """What the station gives a unit (docs/PROTOCOL.md, "Provisioning", "Bundle")."""

    device: str
    cert_pem: bytes
    ca_pem: bytes
    broker_url: str
    backend_x25519: bytes
    operator_ed25519: bytes
    site: Mapping[str, Any]
    issued_at: int
    backend_kid: str = DEFAULT_BACKEND_KID
    operator_kid: str = DEFAULT_OPERATOR_KID
    backend_ed25519: bytes | None = None
    """The backend's verify key, for its receipts (docs/PROTOCOL.md, "Receipts"); bundles
    issued before receipts have none, and such a unit forgets envelopes on the PUBACK."""
    settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    """Config settings from the station, as ``{section: {key: value}}`` (``PROVISIONED_SETTINGS``):
    e.g. ``{"camera": {"kind": "picamera2", "source": "0"}, "mqtt": {"enabled": True}}``. The
    agent merges them under its config file (the file wins). Bundles issued before first-boot
    settings have none (an empty map is not encoded): the config file alone decides."""

    def encode(self) -> bytes:
        extra: dict[str, Any] = {}
        if self.backend_ed25519 is not None:
            extra["backend_ed25519"] = self.backend_ed25519
        if self.settings:
            extra["settings"] = {k: dict(v) for k, v in self.settings.items()}
        return cbor2.dumps(
            {
                **extra,
                "v": BUNDLE_VERSION,
                "device": self.device,
                "cert": self.cert_pem,
                "ca": self.ca_pem,
                "broker": self.broker_url,
                "backend_x25519": self.backend_x25519,
                "backend_kid": self.backend_kid,
                "operator_ed25519": self.operator_ed25519,
                "operator_kid": self.operator_kid,
                "site": dict(self.site),
                "issued_at": self.issued_at,
            },
            canonical=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> Bundle:
        """Parse and check the shape; ProtocolViolationError names the first bad field."""
        try:
            m = cbor2.loads(data)
        except Exception:  # cbor2 raises several types
            raise ProtocolViolationError("bundle is not CBOR") from None
        if not isinstance(m, dict) or m.get("v") != BUNDLE_VERSION:
            raise ProtocolViolationError(f"bundle is not a version {BUNDLE_VERSION} map")

        def field(name: str, kind: type, size: int | None = None) -> Any:
            value = m.get(name)
            if not isinstance(value, kind) or (size is not None and len(value) != size):  # type: ignore[arg-type]
                raise ProtocolViolationError(f"bundle field {name!r} missing or malformed")
            return value

        try:
            device = check_device_id(field("device", str))
        except ValueError as exc:
            raise ProtocolViolationError(str(exc)) from None
        return cls(
            device=device,
            cert_pem=field("cert", bytes),
            ca_pem=field("ca", bytes),
            broker_url=field("broker", str),
            backend_x25519=field("backend_x25519", bytes, 32),
            operator_ed25519=field("operator_ed25519", bytes, 32),
            site=field("site", dict),
            issued_at=field("issued_at", int),
            backend_kid=_kid(m.get("backend_kid", DEFAULT_BACKEND_KID), "backend_kid"),
            operator_kid=_kid(m.get("operator_kid", DEFAULT_OPERATOR_KID), "operator_kid"),
            backend_ed25519=field("backend_ed25519", bytes, 32) if "backend_ed25519" in m else None,
            settings=check_settings(m["settings"]) if "settings" in m else {},
        )


def camera_source_problem(kind: str, source: str) -> str:
    """Why ``source`` may not come from a station for camera ``kind`` (empty: it may).

    A station names a device, a sensor or a file, never a GStreamer pipeline: a pipeline can tee
    unredacted frames anywhere (``udpsink``, ``filesink``), and OpenCV may parse a replay "file"
    containing ``!`` as one. Pipelines belong in the unit's own camveil.toml."""
    if not source or not source.isprintable():
        return f"{source!r} is empty or not printable"
    if "!" in source:
        return f"{source!r}: a GStreamer pipeline can only be set in the unit's camveil.toml"
    if kind in ("picamera2", "gstreamer") and not source.isdigit():
        return f"{source!r}: kind {kind!r} takes a sensor number (0, 1, ...)"
    if kind == "v4l2" and not (source.isdigit() or source.startswith("/dev/")):
        return f"{source!r}: kind 'v4l2' takes a device path (/dev/video0) or number"
    if kind == "rtsp":
        scheme, _, rest = source.partition("://")
        if scheme not in ("rtsp", "rtsps") or not rest or rest[0] in "/:":
            return f"{source!r}: kind 'rtsp' takes an rtsp:// or rtsps:// URL with a host"
        if "@" in rest.split("/", 1)[0]:
            # the station keeps what it provisions; a camera password stays on the unit
            return (
                "the URL carries a user or password: give the URL without it here and put the "
                "full URL in the unit's camveil.toml ([camera] source)"
            )
    return ""


def check_settings(value: object) -> dict[str, dict[str, Any]]:
    """A bundle's ``settings``: a map of section -> map of key -> text, bool or number, with the
    known keys (``PROVISIONED_SETTINGS``) of their type and a known camera kind. Unknown keys are
    kept (a newer station may send more; the agent says it ignores them).
    ProtocolViolationError names the first bad one."""
    if not isinstance(value, dict):
        raise ProtocolViolationError("bundle field 'settings' is not a map")
    out: dict[str, dict[str, Any]] = {}
    for section, table in value.items():
        if not isinstance(section, str) or not isinstance(table, dict):
            raise ProtocolViolationError(f"bundle settings {section!r}: not a map of settings")
        known = PROVISIONED_SETTINGS.get(section, {})
        for key, item in table.items():
            where = f"bundle setting {section}.{key}"
            if not isinstance(key, str) or not isinstance(item, str | bool | int | float):
                raise ProtocolViolationError(f"{where}: not text, true/false or a number")
            kind = known.get(key)
            if kind is not None and (type(item) is not kind):
                raise ProtocolViolationError(f"{where} = {item!r}: expected {kind.__name__}")
        if section == "camera" and table.get("kind", "synthetic") not in CAMERA_KINDS:
            raise ProtocolViolationError(
                f"bundle setting camera.kind = {table['kind']!r}: this unit knows "
                f"{', '.join(CAMERA_KINDS)}; update its software or provision another kind"
            )
        if section == "camera" and "source" in table:
            problem = camera_source_problem(table.get("kind", "synthetic"), table["source"])
            if problem:
                raise ProtocolViolationError(f"bundle setting camera.source: {problem}")
        out[section] = dict(table)
    return out


def _kid(value: object, name: str) -> str:
    try:
        return check_kid(value)  # type: ignore[arg-type]
    except ValueError:
        raise ProtocolViolationError(f"bundle field {name!r} is not a key id") from None
