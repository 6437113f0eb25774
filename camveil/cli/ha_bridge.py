"""`camveil ha-bridge`: the dashboard's verified values as Home Assistant MQTT discovery entities.

    camveil ha-bridge --broker mqtt://ha.local:1883 --username camveil --password-file FILE
                      (--station DIR | --store FILE [--revocations FILE]) [--interval 5]

Reads the dashboard's store read-only (beside the running dashboard) and publishes to Home
Assistant's broker (dashboard.homeassistant; docs/DASHBOARD.md, "Home Assistant"). SIGTERM or
Ctrl-C publish the bridge's ``offline`` and stop; exit status 0 (130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from camveil.cli.dashboard import STORE_NAME
from contract.errors import ConfigError
from dashboard.homeassistant import Bridge, BridgeConfig, Topics
from dashboard.web.views import Thresholds

PRIVACY = """\
what leaves for Home Assistant, per unit, and nothing else:
  connectivity (online or not), the status text (online / silent / offline / unknown /
  revoked), frames per second, and the people and faces in view of its latest presence window:
  the unit's own differentially private counts (attributes name whether they were noised and
  with which epsilon), only while the unit is online and the window is recent.
never: snapshots, other event bodies, visitor counts, rejections, commands, keys; and of a
revoked unit nothing but its status. Only values the dashboard verified (signed by a trusted
unit, decrypted with the backend key) are read; the store is opened read-only.
Home Assistant's broker is outside camveil's trust boundary: use mqtts:// and a password.
"""

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_TOPIC_FORBIDDEN = set("+#\0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = PRIVACY
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--station",
        type=Path,
        help=f"station directory: reads its {STORE_NAME} and revocations.json",
    )
    where.add_argument("--store", type=Path, help="the dashboard's SQLite store")
    parser.add_argument(
        "--revocations",
        type=Path,
        help="the station's revocations.json (with --store; revoked units show only 'revoked')",
    )
    parser.add_argument(
        "--broker",
        required=True,
        help="Home Assistant's broker: mqtt://host[:1883] or mqtts://host[:8883]",
    )
    parser.add_argument("--ca-file", type=Path, help="mqtts: CA certificate (default: system's)")
    parser.add_argument("--username", help="MQTT user name on Home Assistant's broker")
    parser.add_argument(
        "--password-file", type=Path, help="file whose first line is the MQTT password"
    )
    parser.add_argument(
        "--prefix", default="homeassistant", help="discovery prefix (default homeassistant)"
    )
    parser.add_argument(
        "--topic-root", default="camveil", help="root of states and availability (default camveil)"
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between reads (default 5)"
    )
    parser.add_argument("--client-id", default="camveil-ha-bridge", help="MQTT client id")
    parser.add_argument("--stale-after", type=float, default=180.0, help="seconds (default 180)")
    parser.add_argument("--offline-after", type=float, default=300.0, help="seconds (default 300)")


def _broker(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(f"--broker {url!r}: use mqtt://host:port or mqtts://host:port")
    if parts.username or parts.password:
        raise ConfigError(
            f"--broker {url!r}: no credentials in the URL; use --username and --password-file"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--broker {url!r}: only mqtt[s]://host:port, nothing after the port")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ConfigError(f"--broker {url!r}: the port is not a number from 1 to 65535") from None
    return parts.hostname, port, parts.scheme == "mqtts"


def _topic(option: str, value: str) -> str:
    if not value or value.startswith("/") or value.endswith("/") or "//" in value:
        raise ConfigError(f"{option} {value!r}: a topic like 'homeassistant' or 'site/camveil'")
    if _TOPIC_FORBIDDEN & set(value):
        raise ConfigError(f"{option} {value!r}: no MQTT wildcards (+, #) in a topic")
    return value


def _password(path: Path | None, username: str | None) -> str | None:
    if path is None:
        return None
    if username is None:
        raise ConfigError("--password-file needs --username")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the password file {path}: {why}") from None
    if not lines or not lines[0]:
        raise ConfigError(f"the password file {path} is empty: put the password on its 1st line")
    return lines[0]


def config_from_args(args: argparse.Namespace) -> BridgeConfig:
    """The bridge's settings; ConfigError (one line, exit status 2) for a bad option."""
    host, port, tls = _broker(args.broker)
    if args.ca_file is not None:
        if not tls:
            raise ConfigError("--ca-file goes with an mqtts:// broker")
        if not args.ca_file.is_file():
            raise ConfigError(f"--ca-file {args.ca_file}: no such file")
    password = _password(args.password_file, args.username)
    if not args.interval > 0:
        raise ConfigError(f"--interval {args.interval}: give a number of seconds above 0")
    if args.station is not None:
        if not args.station.is_dir():
            raise ConfigError(f"--station {args.station} is not a folder")
        store = args.station / STORE_NAME
        revocations = args.revocations or args.station / "revocations.json"
    elif args.store is not None:
        store, revocations = args.store, args.revocations
    else:
        raise ConfigError("give --store FILE (the dashboard's store) or --station DIR")
    if store.is_dir():
        raise ConfigError(f"{store} is a folder: give the dashboard's store file")
    return BridgeConfig(
        store=store,
        host=host,
        port=port,
        topics=Topics(_topic("--prefix", args.prefix), _topic("--topic-root", args.topic_root)),
        tls=tls,
        ca_file=args.ca_file,
        username=args.username,
        password=password,
        revocations=revocations,
        interval_s=args.interval,
        limits=Thresholds(stale_after_s=args.stale_after, offline_after_s=args.offline_after),
        client_id=args.client_id,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    scheme = "mqtts" if config.tls else "mqtt"
    print(
        f"camveil ha-bridge: {config.store} -> {scheme}://{config.host}:{config.port} "
        f"(discovery prefix {config.topics.prefix}, states under {config.topics.root}/, "
        f"every {config.interval_s:g} s)",
        flush=True,
    )
    try:
        Bridge(config).run(stop)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
