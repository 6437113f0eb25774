"""`camveil dashboard`: ingest and the web page in one process (docs/DASHBOARD.md).

    camveil dashboard --station DIR [--bind 127.0.0.1] [--port 8080] [--store FILE]
    camveil dashboard --dev-pki DIR ...
    camveil dashboard add-operator NAME [--password-file FILE] (--station DIR | --store FILE)

The ingest is the one of `camveil listen` (dashboard.ingest): this process claims a backend
client certificate no other process on this machine holds (``clients/backend-*.crt`` of a
station, ``backend/backend-*.crt`` of a dev-pki folder), opens envelopes with the backend key,
trusts the devices of ``devices.cbor``, subscribes through the station's shared-subscription
group and stores what verifies in ``--store`` (default ``dashboard.sqlite`` in the folder,
created 0600). Commands are signed with the operator key of the same folder (``--no-commands``
leaves it unread). The first start with no operator creates ``admin`` and prints its password
once. SIGTERM or Ctrl-C stop the web server, then the ingest, then close the store.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import config_from_mapping
from agent.unitstate import parse_broker_url
from contract.certclaim import claim_client_cert, key_for
from contract.envelope.keys import Identity, PeerKeys, load_identity, load_peers
from contract.errors import ConfigError
from dashboard.command_client import OperatorKeys, load_dev_pki, load_station
from dashboard.ingest import Ingest
from dashboard.listener import ListenerConfig
from dashboard.revocations import RevocationFile
from dashboard.store import Store
from dashboard.web import WebConfig, create_app, first_operator_password
from dashboard.web.auth import Passwords, check_operator_name
from dashboard.web.commands import StationSender
from dashboard.web.views import Thresholds
from provisioning.broker import check_share_group

DEFAULT_PORT = 8080
STORE_NAME = "dashboard.sqlite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _folder_arguments(parser)
    parser.add_argument(
        "--store", type=Path, help=f"SQLite store (default: {STORE_NAME} in the folder)"
    )
    parser.add_argument(
        "--bind", default="127.0.0.1", help="address of the web page (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument("--broker", help="mqtts://host:port (default: from the folder)")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="... and this key (PEM)")
    parser.add_argument(
        "--metrics-token-file",
        type=Path,
        help="file holding a bearer token that may read /metrics without a session",
    )
    parser.add_argument(
        "--no-share",
        action="store_true",
        help="plain subscription instead of the shared group (one ingest process)",
    )
    parser.add_argument(
        "--no-commands", action="store_true", help="do not read the operator key; no commands"
    )
    parser.add_argument("--stale-after", type=float, default=180.0, help="seconds (default 180)")
    parser.add_argument("--offline-after", type=float, default=300.0, help="seconds (default 300)")
    parser.add_argument(
        "--offline-alert-after", type=float, default=120.0, help="seconds (default 120)"
    )
    parser.add_argument(
        "--cert-alert-days",
        type=float,
        default=30.0,
        help="alert when a unit's TLS certificate expires within this many days (default 30; "
        "renew with `camveil station renew`)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    add = sub.add_parser("add-operator", help="add an operator, or set a new password")
    add.add_argument("name", help="operator name")
    add.add_argument("--password-file", type=Path, help="read the password from this file")
    _folder_arguments(add, suppress=True)
    add.add_argument("--store", type=Path, default=argparse.SUPPRESS, help="SQLite store")


def _folder_arguments(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--station", type=Path, default=default, help="station directory")
    where.add_argument("--dev-pki", type=Path, default=default, help="a `camveil dev-pki` folder")


@dataclass(frozen=True)
class Backend:
    """What the ingest needs, from a station or dev-pki folder."""

    ca: Path
    certs: list[Path]
    identity: Path
    devices: Path
    group_file: Path
    broker_url: str | None
    sites: Mapping[str, str]
    revocations: Path | None = None
    """The station's revocations.json (None: a dev-pki, which revokes nothing)."""


def _folder(args: argparse.Namespace) -> Path:
    root: Path | None = args.station or args.dev_pki
    if root is None:
        raise ConfigError("camveil dashboard needs --station DIR (or --dev-pki DIR)")
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder: give the station directory")
    return root


def _station(root: Path) -> Backend:
    if not (root / "backend.key").exists():
        raise ConfigError(f"{root} is not a station directory (no backend.key)")
    url: str | None = None
    sites: dict[str, str] = {}
    try:
        url = str(json.loads((root / "station.json").read_text())["broker_url"])
    except (OSError, ValueError, KeyError, TypeError):
        url = None
    try:
        listed = json.loads((root / "devices.json").read_text())["devices"]
        sites = {str(k): str(v.get("site", "")) for k, v in listed.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        sites = {}
    return Backend(
        ca=root / "ca" / "ca.crt",
        certs=sorted((root / "clients").glob("backend-*.crt")),
        identity=root / "backend.key",
        devices=root / "devices.cbor",
        group_file=root / "share-group",
        broker_url=url,
        sites=sites,
        revocations=root / "revocations.json",
    )


def _dev_pki(root: Path) -> Backend:
    backend = root / "backend"
    if not (backend / "identity.cbor").exists():
        raise ConfigError(f"{root} is not a dev-pki folder (no backend/identity.cbor)")
    url: str | None = None
    try:
        for line in (root / "broker" / "mosquitto.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "listener":
                url = f"mqtts://127.0.0.1:{int(parts[1])}"
                break
    except (OSError, ValueError):
        url = None
    return Backend(
        ca=root / "ca.crt",
        certs=sorted(backend.glob("backend-*.crt")),
        identity=backend / "identity.cbor",
        devices=backend / "devices.cbor",
        group_file=backend / "share-group",
        broker_url=url,
        sites={},
    )


def _store_path(args: argparse.Namespace) -> Path:
    store: Path | None = getattr(args, "store", None)
    if store is not None:
        return store
    station, dev = getattr(args, "station", None), getattr(args, "dev_pki", None)
    if station is not None:
        return Path(station) / STORE_NAME
    if dev is not None:
        return Path(dev) / "backend" / STORE_NAME
    raise ConfigError("give --store FILE (or --station DIR, whose folder holds the store)")


def open_store(path: Path) -> Store:
    """The store, its file created 0600 first (SQLite keeps the mode; the WAL files follow)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:
        raise ConfigError(f"cannot create the store {path}: {exc.strerror}") from None
    return Store(path).open()


def _read_password(args: argparse.Namespace) -> str:
    source: Path | None = args.password_file
    if source is not None:
        try:
            lines = source.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read {source}: {exc.strerror}") from None
        return lines[0] if lines else ""
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise ConfigError("the passwords differ")
    return first


def add_operator(args: argparse.Namespace) -> int:
    name = check_operator_name(args.name)
    password = _read_password(args)
    store = open_store(_store_path(args))
    try:
        Passwords(store).set(name, password)
    finally:
        store.close()
    print(f"operator {name} saved (Argon2id) in {_store_path(args)}")
    return 0


def _validate_config(patch: Mapping[str, Any]) -> None:
    """The unit's own validator over its defaults: unknown keys, wrong types and out-of-range
    values are refused here, before anything is sent (the unit validates again, merged over its
    own file)."""
    config_from_mapping({str(k): dict(v) for k, v in patch.items()})


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _metrics_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the metrics token file {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"the metrics token in {path} is shorter than 16 characters")
    return token


def run(args: argparse.Namespace) -> int:
    if args.action == "add-operator":
        return add_operator(args)
    root = _folder(args)
    backend = _station(root) if args.station is not None else _dev_pki(root)
    url = args.broker or backend.broker_url
    if url is None:
        raise ConfigError("no broker URL in the folder; pass --broker mqtts://host:port")
    broker = parse_broker_url(url)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    token = _metrics_token(args.metrics_token_file)
    try:
        group = check_share_group(backend.group_file.read_text().strip())
    except OSError as exc:
        raise ConfigError(
            f"cannot read the share group {backend.group_file}: {exc.strerror}"
        ) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    hint = f"issue one more with `camveil station add-backend {root} NAME`"
    claimed = claim_client_cert([(c, key_for(c)) for c in backend.certs], hint=hint)
    identity: Identity = load_identity(backend.identity)
    devices: PeerKeys = load_peers(backend.devices)
    operator: OperatorKeys | None = None
    if not args.no_commands:
        operator = load_station(root) if args.station is not None else load_dev_pki(root)
    sock = _listen_socket(args.bind, args.port)
    store = open_store(_store_path(args))
    try:
        for device, site in backend.sites.items():
            store.set_site(device, site)
        config = WebConfig(
            limits=Thresholds(
                stale_after_s=args.stale_after,
                offline_after_s=args.offline_after,
                cert_alert_days=args.cert_alert_days,
            ),
            offline_alert_after_s=args.offline_alert_after,
            metrics_token=token,
            secure_cookies=True if args.tls_cert else None,
            revocations=RevocationFile(backend.revocations),
        )
        sender = StationSender(operator, broker.host, broker.port) if operator else None
        app = create_app(store, config=config, sender=sender, validate_config=_validate_config)
        password = first_operator_password(app)
        listener = ListenerConfig(
            host=broker.host,
            port=broker.port,
            ca_file=backend.ca,
            cert_file=claimed.cert,
            key_file=claimed.key,
            group=group,
            client_id=f"camveil-dashboard-{claimed.cert.stem}",
            shared=not args.no_share,
        )
        scheme = "https" if args.tls_cert else "http"
        print(
            f"camveil dashboard: {scheme}://{args.bind}:{args.port}  (store {_store_path(args)}, "
            f"{len(devices)} trusted unit(s), broker {broker.host}:{broker.port})",
            flush=True,
        )
        if password is not None:
            print(
                f"first start: operator admin, password {password}  (shown once; change it with "
                "`camveil dashboard add-operator admin`)",
                flush=True,
            )
        with Ingest(listener, identity, devices, store):
            _serve(app, sock, args)
    finally:
        sock.close()
        store.close()
    return 0


def _serve(app: Any, sock: socket.socket, args: argparse.Namespace) -> None:
    import uvicorn  # imported here: the other subcommands do not need it

    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=3,
        ssl_certfile=str(args.tls_cert) if args.tls_cert else None,
        ssl_keyfile=str(args.tls_key) if args.tls_key else None,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # uvicorn stops gracefully on SIGTERM / SIGINT, then raises the signal again for the handler
    # that was there before: a no-op for SIGTERM, so that the ingest and the store close cleanly
    # afterwards and the exit status is 0 (SIGINT keeps Python's KeyboardInterrupt: status 130)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        print("camveil dashboard: the web server did not start", file=sys.stderr)
