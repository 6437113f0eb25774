"""The operator's side of commands: keys from a station or dev-pki folder, sealing, sending, and
waiting for the unit's ack (`camveil cmd`).

A command is sealed with the operator identity to the device's X25519 key (``devices.cbor``),
published QoS 1 on ``camveil/v1/<device>/cmd`` with the operator's client certificate (the ACL
lets operators write ``+/cmd`` and read ``+/cmd/ack``), and answered by the unit on
``camveil/v1/<device>/cmd/ack``, sealed to the operator (the X25519 form of its Ed25519 key,
:func:`contract.envelope.keys.ack_recipient`). So the operator tool needs only the operator's own
key material, the trusted devices and its client certificate: never the backend's key, which
opens every event and snapshot.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from contract.certclaim import claim_client_cert, key_for
from contract.commands import ACK_TYPE, REMOTE_SECTIONS, ack_answers, seal_command
from contract.envelope.keys import (
    Identity,
    PeerKeys,
    PublicIdentity,
    ack_reader,
    load_identity,
    load_peers,
)
from contract.envelope.replay import ReplayGuard
from contract.envelope.seal import SealedEnvelope, open_envelope
from contract.errors import CamveilError, ConfigError, EnvelopeError
from contract.mqtt import tls_context
from contract.topics import ack_topic

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib


@dataclass(frozen=True)
class OperatorKeys:
    """Everything `camveil cmd` needs, from a station or a dev-pki folder."""

    operator: Identity
    devices: PeerKeys
    ca: Path
    cert: Path
    key: Path
    broker_url: str | None

    def device(self, device_id: str) -> PublicIdentity:
        try:
            return self.devices[device_id]
        except KeyError:
            known = ", ".join(sorted(self.devices)) or "none"
            raise ConfigError(
                f"device {device_id!r} is not in the trusted devices (known: {known})"
            ) from None


def _first_cert(directory: Path) -> Path:
    """The first operator certificate no other process on this machine holds (the broker takes
    the client id from the certificate: two connections with one disconnect each other)."""
    certs = sorted(directory.glob("operator-*.crt"))
    if not certs:
        raise ConfigError(f"no operator client certificate (operator-*.crt) in {directory}")
    hint = f"wait for the other command, or add an operator-*.crt/.key pair to {directory}"
    return claim_client_cert([(c, key_for(c)) for c in certs], hint=hint).cert


def load_station(root: Path) -> OperatorKeys:
    """A station directory (provisioning.station): operator.key, devices.cbor,
    clients/operator-*.crt, ca/ca.crt, station.json (broker URL). backend.key is not read."""
    if not (root / "operator.key").exists():
        raise ConfigError(f"{root} is not a station directory (no operator.key)")
    cert = _first_cert(root / "clients")
    broker_url: str | None = None
    try:
        broker_url = str(json.loads((root / "station.json").read_text())["broker_url"])
    except (OSError, ValueError, KeyError, TypeError):
        broker_url = None
    return OperatorKeys(
        operator=load_identity(root / "operator.key"),
        devices=load_peers(root / "devices.cbor"),
        ca=root / "ca" / "ca.crt",
        cert=cert,
        key=cert.with_suffix(".key"),
        broker_url=broker_url,
    )


def load_dev_pki(root: Path) -> OperatorKeys:
    """A `camveil dev-pki` folder: operator/ (identity, certificate), the trusted devices
    (operator/devices.cbor, else backend/devices.cbor: public keys only), ca.crt,
    broker/mosquitto.conf. The backend's identity is not read."""
    if not (root / "operator" / "identity.cbor").exists():
        raise ConfigError(f"{root} is not a dev-pki folder (no operator/identity.cbor)")
    cert = _first_cert(root / "operator")
    return OperatorKeys(
        operator=load_identity(root / "operator" / "identity.cbor"),
        devices=load_peers(_first_existing(root / "operator", root / "backend", "devices.cbor")),
        ca=root / "ca.crt",
        cert=cert,
        key=cert.with_suffix(".key"),
        broker_url=_dev_broker_url(root / "broker" / "mosquitto.conf"),
    )


def _first_existing(first: Path, second: Path, name: str) -> Path:
    return first / name if (first / name).exists() else second / name


def _dev_broker_url(conf: Path) -> str | None:
    try:
        for line in conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "listener":
                host = parts[2] if len(parts) >= 3 else "127.0.0.1"
                return f"mqtts://{host}:{int(parts[1])}"
    except (OSError, ValueError):
        return None
    return None


def parse_config_pairs(pairs: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` pairs -> ``{section: {key: value}}``; values are TOML (``2``,
    ``true``, ``"x"``, ``[1, 2]``), a value that is not TOML is taken as a plain string."""
    config: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not section or not key or "." in key:
            raise ConfigError(f"set-config: {pair!r} is not section.key=value")
        if section not in REMOTE_SECTIONS:
            raise ConfigError(
                f"set-config: section {section!r} cannot be changed remotely "
                f"(only {', '.join(REMOTE_SECTIONS)})"
            )
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        config.setdefault(section, {})[key] = value
    if not config:
        raise ConfigError("set-config needs at least one section.key=value")
    return config


def new_command_id() -> str:
    return f"op-{int(time.time())}-{secrets.token_hex(4)}"


class AckWaiter:
    """One MQTT connection with the operator's certificate: subscribes to the ack topics of
    ``devices``, publishes commands to them, and returns each one's matching opened ack.

    :meth:`send` may be called from several threads at once (one command per thread, each
    waiting for its own ack): the broker takes the client id from the certificate, so a second
    connection with the same operator certificate would disconnect the first, and commands to
    many units share this one."""

    def __init__(self, keys: OperatorKeys, host: str, port: int, *devices: PublicIdentity) -> None:
        if not devices:
            raise ValueError("AckWaiter needs at least one device")
        self._keys = keys
        self._reader = ack_reader(keys.operator)
        self._devices = PeerKeys(devices)
        self._host = host
        self._port = port
        self._guard = ReplayGuard()
        self._lock = threading.Condition()
        self._acks: list[dict[str, Any]] = []
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"camveil-cmd-{os.getpid()}-{secrets.token_hex(3)}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.tls_set_context(tls_context(keys.ca, keys.cert, keys.key))
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._refused = f"the broker refused the connection: {reason_code.getName()}"
            self._subscribed.set()
            return
        client.subscribe([(ack_topic(kid), 1) for kid in sorted(self._devices)])

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [c for c in reason_codes if c.is_failure]
        if refused:
            self._refused = f"the broker refused the ack subscription: {refused[0].getName()}"
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            opened = open_envelope(
                bytes(message.payload),
                topic=message.topic,
                trusted_senders=self._devices,
                recipient=self._reader,
                replay_guard=self._guard,
            )
        except EnvelopeError:
            return
        if opened.message.get("type") != ACK_TYPE:
            return
        with self._lock:
            self._acks.append(dict(opened.message))
            self._lock.notify_all()

    def __enter__(self) -> AckWaiter:
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except OSError as exc:
            raise ConfigError(f"cannot reach the broker {self._host}:{self._port}: {exc}") from None
        self._client.loop_start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def send(self, envelope: SealedEnvelope, command_id: str, timeout: float) -> dict[str, Any]:
        """Publish ``envelope`` and return the ack's plaintext; TimeoutError when none came."""
        deadline = time.monotonic() + timeout
        if not self._subscribed.wait(max(0.0, deadline - time.monotonic())):
            raise TimeoutError("not connected/subscribed to the broker in time")
        if self._refused is not None:
            raise CamveilError(self._refused)
        info = self._client.publish(envelope.topic, envelope.data, qos=1)
        try:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as exc:  # paho: not connected, queue full
            raise CamveilError(
                f"command {command_id} not sent to {self._host}:{self._port}: {exc}"
            ) from None
        with self._lock:
            while True:
                for ack in self._acks:
                    if ack_answers(ack.get("body"), command_id, envelope.seq):
                        return ack
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no ack for command {command_id} in {timeout:g} s")
                self._lock.wait(left)


def send_command(
    keys: OperatorKeys,
    *,
    host: str,
    port: int,
    device_id: str,
    name: str,
    args: Mapping[str, Any] | None,
    command_id: str,
    expires_s: int,
    timeout: float,
) -> dict[str, Any]:
    """Seal, publish and wait: the opened ack's plaintext (TimeoutError when none came)."""
    device = keys.device(device_id)
    envelope = seal_command(
        name,
        command_id=command_id,
        device=device,
        operator=keys.operator,
        # milliseconds, like the demo and the dashboard: one operator seq scale per unit
        seq=int(time.time() * 1000),
        expires_at=int(time.time()) + expires_s,
        args=args,
    )
    with AckWaiter(keys, host, port, device) as waiter:
        return waiter.send(envelope, command_id, timeout)
