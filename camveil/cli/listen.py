"""`camveil listen`: verify, decrypt and print what units publish, as JSON lines.

One line per first-time message on stdout: ``device``, ``seq``, ``type``, ``topic`` and the
plaintext (``ts``, ``boot``, ``body``). Byte strings are replaced by their length and sha256
(``{"bytes": n, "sha256": "..."}``) unless ``--snapshots DIR`` is given, which writes snapshot
JPEGs to ``DIR/<device>-<seq>.jpg`` and puts the path in the line. Duplicates (QoS 1 redeliveries)
and bad messages are counted; a summary goes to stderr at the end (JSON, ``listen_summary``).

Keys: ``--dev-pki DIR`` takes everything from a `camveil dev-pki` folder; otherwise give
``--broker``, ``--ca``, ``--cert``, ``--key``, ``--identity`` (the backend's identity file),
``--devices`` (trusted units, a peers file) and ``--group-file`` (or ``--group``).

De-duplication survives restarts by default: (device, seq) pairs go to a SQLite file, ``--db``
or else ``listen-<hash of the group>.db`` beside the backend identity file (created 0600), so a
restarted listener refuses envelopes replayed to it. ``--no-db`` keeps them in memory only, for
throwaway use: a restarted listener then accepts replays of what it saw before.

Each process connects with a certificate of its own (the broker takes the client id from it):
with ``--dev-pki`` the first ``backend-*`` certificate no other process holds, with ``--cert``
that one, refused while another process on this machine holds it (contract.certclaim). The
shared-subscription group is a secret of the backends (provisioning.broker.new_share_group): a
unit that knew it could join the group and make the broker drop its share of every message.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from agent.unitstate import parse_broker_url
from camveil.cli.common import non_negative_int
from contract.certclaim import ClaimedCert, claim_client_cert, key_for
from contract.envelope.keys import load_identity, load_peers
from contract.errors import ConfigError
from dashboard.listener import (
    DedupeStore,
    Listener,
    ListenerConfig,
    MemoryDedupe,
    Opener,
    Received,
    SqliteDedupe,
)
from dashboard.receipts import Receipter
from provisioning.broker import check_share_group


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dev-pki", type=Path, help="a `camveil dev-pki` folder (all keys)")
    parser.add_argument("--broker", help="mqtts://host:port")
    parser.add_argument("--ca", type=Path, help="CA certificate (PEM)")
    parser.add_argument("--cert", type=Path, help="backend client certificate (PEM)")
    parser.add_argument("--key", type=Path, help="backend client key (PEM)")
    parser.add_argument("--identity", type=Path, help="backend identity file (X25519)")
    parser.add_argument("--devices", type=Path, help="trusted devices (peers file)")
    parser.add_argument(
        "--group", help="shared-subscription group: a secret of 23+ characters (see --group-file)"
    )
    parser.add_argument(
        "--group-file",
        type=Path,
        help="file holding the shared-subscription group (dev-pki: backend/share-group)",
    )
    parser.add_argument(
        "--client-id",
        help="keep a persistent session (the broker names it after the certificate, whatever "
        "the id given)",
    )
    parser.add_argument(
        "--no-share",
        action="store_true",
        help="plain subscription instead of $share/GROUP (one ingest process; with --client-id "
        "it survives mosquitto restarts, which forget shared subscriptions)",
    )
    dedupe = parser.add_mutually_exclusive_group()
    dedupe.add_argument(
        "--db",
        type=Path,
        help="SQLite file that de-duplicates across restarts (default: listen-HASH.db beside "
        "the backend identity file)",
    )
    dedupe.add_argument(
        "--no-db",
        action="store_true",
        help="throwaway use: de-duplicate in memory only (a restarted listener accepts "
        "replayed envelopes again)",
    )
    parser.add_argument(
        "--no-receipts",
        action="store_true",
        help="send units no receipts (an observer beside the real backend; units in the default "
        'delete_on = "receipt" mode then keep their envelopes until the backend receipts)',
    )
    parser.add_argument("--snapshots", type=Path, help="write snapshot JPEGs into this folder")
    parser.add_argument("--base64", action="store_true", help="print bytes as base64")
    parser.add_argument("--count", type=non_negative_int, default=0, help="exit after N messages")
    parser.add_argument("--duration", type=float, default=0, help="exit after S seconds")
    parser.add_argument(
        "--idle-exit", type=float, default=0, help="exit S seconds after the last message"
    )
    parser.add_argument(
        "--until-offline",
        action="store_true",
        help="exit when every device that said online has said offline",
    )


def _paths(args: argparse.Namespace) -> dict[str, Path | str]:
    found: dict[str, Path | str | None] = {
        "broker": args.broker,
        "ca": args.ca,
        "cert": args.cert,
        "key": args.key,
        "identity": args.identity,
        "devices": args.devices,
    }
    root: Path | None = args.dev_pki
    if root is not None:
        backend = root / "backend"
        certs = sorted(backend.glob("backend-*.crt"))
        if not certs:
            raise ConfigError(f"--dev-pki {root}: no backend certificate in {backend}")
        defaults: dict[str, Path | str] = {
            "ca": root / "ca.crt",
            "cert": certs[0],
            "key": certs[0].with_suffix(".key"),
            "identity": backend / "identity.cbor",
            "devices": backend / "devices.cbor",
        }
        conf = root / "broker" / "mosquitto.conf"
        port = _listener_port(conf)
        if port is not None:
            defaults["broker"] = f"mqtts://127.0.0.1:{port}"
        for name, value in defaults.items():
            if found[name] is None:
                found[name] = value
    missing = [f"--{name}" for name, value in found.items() if value is None]
    if missing:
        raise ConfigError(f"camveil listen needs {', '.join(missing)} (or --dev-pki DIR)")
    return {k: v for k, v in found.items() if v is not None}


def _claim(args: argparse.Namespace, paths: Mapping[str, Path | str]) -> ClaimedCert:
    """This process's certificate: ``--cert``, or the first free one of the dev-pki folder."""
    root: Path | None = args.dev_pki
    if args.cert is None and root is not None:
        certs = sorted((root / "backend").glob("backend-*.crt"))
        hint = f"make more with `camveil dev-pki --clients N {root} --force`"
        return claim_client_cert([(c, key_for(c)) for c in certs], hint=hint)
    hint = "give each listener process its own certificate (`camveil station add-backend`)"
    return claim_client_cert([(Path(paths["cert"]), Path(paths["key"]))], hint=hint)


def _group(args: argparse.Namespace) -> str:
    """The shared-subscription group: ``--group``, ``--group-file`` or the dev-pki's file."""
    group: str | None = args.group
    source: Path | None = args.group_file
    if group is None and source is None and args.dev_pki is not None:
        source = args.dev_pki / "backend" / "share-group"
    if group is None and source is not None:
        try:
            group = source.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the shared-subscription group {source}: {exc}"
            ) from None
    if group is None:
        if args.no_share:
            return "unshared"  # not used: a plain subscription
        raise ConfigError(
            "camveil listen needs --group-file (the station's share-group file) or --group"
        )
    try:
        return check_share_group(group)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _listener_port(conf: Path) -> int | None:
    try:
        for line in conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "listener":
                return int(parts[1])
    except (OSError, ValueError):
        return None
    return None


def dedupe_path(args: argparse.Namespace, group: str, identity: Path) -> Path | None:
    """Where (device, seq) pairs persist: ``--db``, else ``listen-<hash of group>.db`` beside the
    backend identity (one file per shared-subscription group, since groups each see every
    message; the group is a secret, so the file is named by its hash); None with ``--no-db``."""
    if args.no_db:
        return None
    if args.db is not None:
        return Path(args.db)
    digest = hashlib.sha256(group.encode()).hexdigest()[:16]
    return identity.parent / f"listen-{digest}.db"


def _open_dedupe(path: Path | None) -> DedupeStore:
    if path is None:
        return MemoryDedupe()
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # SQLite keeps the mode
    except OSError as exc:
        raise ConfigError(
            f"cannot create the de-duplication file {path} ({exc.strerror}); pass --db FILE "
            "somewhere writable, or --no-db for throwaway use"
        ) from None
    return SqliteDedupe(path)


def to_json(received: Received, snapshots: Path | None, as_base64: bool) -> dict[str, Any]:
    """The printed line: header fields and the body, bytes summarised (or written out)."""
    message = dict(received.message)
    body = message.get("body")
    line: dict[str, Any] = {
        "device": received.device,
        "seq": received.seq,
        "type": received.type,
        "topic": received.topic,
        "ts": message.get("ts"),
        "boot": message.get("boot"),
        "body": _plain(body, as_base64),
    }
    if snapshots is not None and received.type == "snapshot" and isinstance(body, Mapping):
        jpeg = body.get("jpeg")
        if isinstance(jpeg, bytes):
            snapshots.mkdir(parents=True, exist_ok=True)
            path = snapshots / f"{received.device}-{received.seq}.jpg"
            path.write_bytes(jpeg)
            line["file"] = str(path)
    return line


def _plain(value: Any, as_base64: bool) -> Any:
    if isinstance(value, bytes):
        if as_base64:
            return base64.b64encode(value).decode("ascii")
        return {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v, as_base64) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, as_base64) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    paths = _paths(args)
    group = _group(args)
    claimed = _claim(args, paths)
    broker = parse_broker_url(str(paths["broker"]))
    identity = load_identity(Path(paths["identity"]))
    devices = load_peers(Path(paths["devices"]))
    dedupe = _open_dedupe(dedupe_path(args, group, Path(paths["identity"])))
    opener = Opener(identity, devices, dedupe)
    done = threading.Event()
    lock = threading.Lock()
    state = {"count": 0, "last": time.monotonic()}
    online: set[str] = set()

    def on_received(received: Received) -> None:
        line = to_json(received, args.snapshots, args.base64)
        with lock:
            print(json.dumps(line, sort_keys=True), flush=True)
            state["count"] += 1
            state["last"] = time.monotonic()
            if received.type == "status":
                body = received.message.get("body")
                if isinstance(body, Mapping) and body.get("state") == "online":
                    online.add(received.device)
                elif args.until_offline and received.device in online:
                    online.discard(received.device)
                    if not online:
                        done.set()
            if args.count and state["count"] >= args.count:
                done.set()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    config = ListenerConfig(
        host=broker.host,
        port=broker.port,
        ca_file=Path(paths["ca"]),
        cert_file=claimed.cert,
        key_file=claimed.key,
        group=group,
        client_id=args.client_id,
        shared=not args.no_share,
    )
    receipter: Receipter | None = None
    if not args.no_receipts:  # a line printed is a message stored: the unit may forget it
        receipter = Receipter(identity, lambda: devices, lambda e: listener.publish_receipt(e))
    listener = Listener(config, opener, on_received, receipter=receipter)
    start = time.monotonic()
    try:
        with listener:
            if receipter is not None:
                receipter.start()
            try:
                if not listener.subscribed.wait(15.0):
                    print("camveil listen: not subscribed after 15 s", file=sys.stderr)
                print("camveil listen: subscribed", file=sys.stderr, flush=True)
                while not done.wait(0.2):
                    now = time.monotonic()
                    if args.duration and now - start >= args.duration:
                        break
                    with lock:
                        idle = now - state["last"]
                        seen = state["count"]
                    if args.idle_exit and seen and idle >= args.idle_exit:
                        break
            finally:
                if receipter is not None:
                    receipter.stop()  # the last receipts go out before the client closes
    finally:
        dedupe.close()
    summary = opener.stats.as_dict()
    if receipter is not None:
        summary["receipts"] = {"sent": receipter.stats.sent, "seqs": receipter.stats.seqs}
    print(json.dumps({"listen_summary": summary}, sort_keys=True), file=sys.stderr, flush=True)
    return 0
