"""`camveil station init DIR`: create a provisioning station (CA, operator and backend keys,
broker configuration, inventory); `camveil station add-backend DIR NAME`: one more backend
certificate (one per backend process connected at the same time); `camveil station list DIR`:
the units in its inventory; `camveil station revoke DIR UNIT`: take a unit out of the fleet;
`camveil station crl DIR [--out FILE]`: what the CRL lists, and a copy of it for the broker host;
`camveil station renew DIR UNIT... | --expiring-within DAYS`: renew units' TLS certificates over
MQTT (docs/PROTOCOL.md, "Certificate renewal")."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from contract.errors import ProvisioningError
from contract.statedir import CAMERA_KINDS
from provisioning.broker_bundle import DEFAULT_TARGET, write_broker_bundle
from provisioning.inventory import Inventory
from provisioning.renewal import DEFAULT_JOBS, MAX_JOBS
from provisioning.station import (
    DEFAULT_BROKER_URL,
    CameraChoice,
    StationConfig,
    StationPaths,
    add_backend,
    broker_cert_names,
    current_certificate,
    init_station,
    open_station,
    revoke_unit,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="create a station directory")
    init.add_argument(
        "dir",
        type=Path,
        help="station directory (created 0711 so that the broker can reach broker/; everything "
        "else in it is readable by you alone: files 0600, folders 0700)",
    )
    init.add_argument(
        "--broker-url",
        default=DEFAULT_BROKER_URL,
        help=f"where units dial the broker: mqtts://HOST[:PORT] (default {DEFAULT_BROKER_URL}; "
        "port 8883 if none). The broker config listens on PORT, on every address unless HOST "
        "is loopback",
    )
    init.add_argument(
        "--broker-name",
        action="append",
        default=[],
        metavar="NAME",
        help="one more DNS name or IP address units may dial, put in the broker certificate "
        "(repeatable; the URL's host is always in it)",
    )
    init.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="NAME",
        help="issue the backend certificate backend-NAME (repeatable; default: dashboard); one "
        "per backend process connected at the same time",
    )
    add_camera_arguments(init, "every unit (camveil provision --camera overrides it)")
    add = sub.add_parser("add-backend", help="issue one more backend certificate")
    add.add_argument("dir", type=Path, help="station directory")
    add.add_argument("name", help="the certificate is backend-NAME")
    listing = sub.add_parser(
        "list",
        help="list the units in the inventory: device, state, site, certificate expiry; then the "
        "revoked ones",
    )
    listing.add_argument("dir", type=Path, help="station directory")
    bundle = sub.add_parser(
        "broker-bundle",
        help="write the broker host's files (mosquitto conf.d drop-in, certificates, key, CRL, "
        "ACL, the CRL path's systemd units, install.sh) into a new folder, copied out of the "
        "station folder",
    )
    bundle.add_argument("dir", type=Path, help="station directory")
    bundle.add_argument("out", type=Path, help="new (or empty) folder for the bundle")
    bundle.add_argument(
        "--target-dir",
        type=Path,
        default=DEFAULT_TARGET,
        help=f"where install.sh puts the files on the broker host (default {DEFAULT_TARGET})",
    )
    crl = sub.add_parser(
        "crl",
        help="list what the station's CRL refuses (one line per certificate: serial, device, "
        "revoked or superseded, since, reason) and with --out copy it for the broker host, "
        "after `revoke` or `renew`: no new broker bundle needed",
    )
    crl.add_argument("dir", type=Path, help="station directory")
    crl.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the CRL here; on the broker host put it in "
        f"{DEFAULT_TARGET}/incoming/crl.pem, where the bundle's camveil-crl.path checks it and "
        "restarts mosquitto (a reload would leave a revoked unit's open connection alone)",
    )
    revoke = sub.add_parser(
        "revoke",
        help="revoke a unit: its certificates join the station's CRL (the broker gets it with "
        "`camveil station crl --out`), it leaves the trusted devices",
    )
    revoke.add_argument("dir", type=Path, help="station directory")
    revoke.add_argument("device", help="device id of the unit (see `camveil station list`)")
    revoke.add_argument("--reason", default="unspecified", help="recorded with the revocation")
    renew = sub.add_parser(
        "renew",
        help="renew units' TLS client certificates over MQTT: each unit makes a new key, the "
        "station certifies it, the unit switches once the broker accepts it; the old "
        "certificates join the CRL (`camveil station crl --out` for the broker)",
    )
    renew.add_argument("dir", type=Path, help="station directory")
    renew.add_argument("devices", nargs="*", metavar="UNIT", help="device ids to renew")
    renew.add_argument(
        "--expiring-within",
        type=float,
        metavar="DAYS",
        help="also every provisioned unit whose certificate expires within DAYS days",
    )
    renew.add_argument("--broker", help="mqtts://host:port (default: the station's broker URL)")
    renew.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to wait for each unit's answer"
    )
    renew.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"renew up to N units at the same time over one connection (default {DEFAULT_JOBS}, "
        f"at most {MAX_JOBS}; 1: one after the other). The lines come in device order whatever "
        "order the units finish in",
    )


def add_camera_arguments(parser: argparse.ArgumentParser, who: str) -> None:
    """``--camera KIND`` and ``--camera-source SRC``: the camera a bundle tells ``who`` to open."""
    parser.add_argument(
        "--camera",
        choices=CAMERA_KINDS,
        metavar="KIND",
        help=f"camera kind for {who}: {', '.join(CAMERA_KINDS)}; put in the bundle, applied by "
        "the unit unless its /etc/camveil/camveil.toml sets [camera] kind",
    )
    parser.add_argument(
        "--camera-source",
        metavar="SRC",
        help="the camera's device, file or sensor number (v4l2: /dev/video0; picamera2: 0; "
        "replay: a video file); default: the kind's own",
    )


def camera_choice(args: argparse.Namespace) -> CameraChoice | None:
    """The ``--camera`` / ``--camera-source`` options as a CameraChoice (ProvisioningError when
    they do not fit together)."""
    if args.camera is None:
        if args.camera_source is not None:
            raise ProvisioningError("--camera-source needs --camera KIND")
        return None
    return CameraChoice(args.camera, args.camera_source)


def run(args: argparse.Namespace) -> int:
    if args.action == "init":
        paths = init_station(
            args.dir,
            broker_url=args.broker_url,
            broker_names=tuple(args.broker_name),
            backends=tuple(args.backend) or StationConfig.backends,
            camera=camera_choice(args),
        )
        print(f"station ready in {paths.root}")
        print(f"  CA certificate:   {paths.ca_dir / 'ca.crt'}")
        print(f"  broker config:    {paths.broker_dir / 'mosquitto.conf'}")
        print(f"  broker names:     {', '.join(broker_cert_names(paths))}")
        print(f"  trusted devices:  {paths.peers} (camveil listen --devices)")
        print(f"  share group:      {paths.share_group} (secret; copy to the ingest hosts)")
        camera = StationConfig.load(paths.config).camera
        given = "unit's own" if camera is None else " ".join(camera.as_settings().values())
        print(f"  units are given:  MQTT on, camera: {given} (see docs/INSTALL.md, first boot)")
        print(f"next: camveil provision --port /dev/ttyACM0 --station {paths.root}")
        return 0
    if args.action == "add-backend":
        cert = add_backend(args.dir, args.name)
        print(f"issued {cert} (key beside it); reload mosquitto (SIGHUP) to apply the new ACL")
        return 0
    if args.action == "broker-bundle":
        dropin = write_broker_bundle(args.dir, args.out, args.target_dir)
        print(f"broker bundle in {args.out} (private: it holds the broker's key)")
        print(f"  drop-in:  {dropin} -> /etc/mosquitto/conf.d/ (files in {args.target_dir})")
        print(f"next: copy {args.out} to the broker host and run `sudo sh install.sh` in it")
        return 0
    if args.action == "renew":
        return renew(args)
    if args.action == "crl":
        return crl(args)
    if args.action == "revoke":
        result = revoke_unit(args.dir, args.device, args.reason)
        paths = StationPaths(args.dir)
        print(f"revoked {args.device} (certificate serial {result.revocation.serial})")
        print(f"  CRL:              {paths.crl}")
        print(f"  trusted devices:  {paths.peers} (the unit is no longer in it)")
        if result.config_patched:
            print(f"  broker config:    {paths.broker_dir / 'mosquitto.conf'} now has crlfile")
            print("next: restart mosquitto (it reads a new crlfile line only at start)")
        else:
            print(f"next: {CRL_NEXT.format(dir=args.dir)}")
        return 0
    with Inventory(open_station(args.dir).inventory) as inventory:
        for unit in inventory.units():
            issued = current_certificate(inventory, unit)
            expires = issued.not_valid_after_utc.date().isoformat()
            print(f"{unit.device}\t{unit.state}\t{unit.site}\tcertificate until {expires}")
        for revoked in inventory.revocations():
            when = dt.datetime.fromtimestamp(revoked.revoked_at, dt.timezone.utc)
            print(f"{revoked.device}\trevoked\t{when.isoformat(timespec='seconds')}")
    return 0


CRL_NEXT = (
    "camveil station crl {dir} --out crl.pem, copy crl.pem to the broker host's "
    f"{DEFAULT_TARGET}/incoming/crl.pem (its camveil-crl.path restarts mosquitto with it: "
    "the certificates are refused and their open connections end)"
)


def crl(args: argparse.Namespace) -> int:
    """``camveil station crl``: one line per certificate the CRL lists; ``--out``: a copy."""
    from provisioning.broker_crl import export_crl, station_crl

    listing = station_crl(args.dir) if args.out is None else export_crl(args.dir, args.out)
    for entry in listing.entries:
        print(entry.line())
    print(f"CRL number {listing.number}: {len(listing.entries)} certificate(s) refused")
    if args.out is not None:
        print(f"written to {args.out}")
        print(
            f"next: copy it to the broker host's {DEFAULT_TARGET}/incoming/crl.pem (e.g. `sudo "
            f"install -m 0644 crl.pem {DEFAULT_TARGET}/incoming/`); camveil-crl.path checks it "
            "and restarts mosquitto"
        )
    return 0


def renew(args: argparse.Namespace) -> int:
    """Renew the units, ``--jobs`` at a time; one line per unit in device order; exit 0 when all
    were renewed, 1 otherwise."""
    from agent.unitstate import parse_broker_url
    from dashboard.cert_renewal import renew_units
    from dashboard.command_client import load_station
    from provisioning.renewal import renewal_targets

    if not args.devices and args.expiring_within is None:
        raise ProvisioningError("name the units to renew, or give --expiring-within DAYS")
    if args.expiring_within is not None and args.expiring_within < 0:
        raise ProvisioningError("--expiring-within must be 0 or more days")
    if not args.timeout > 0:
        raise ProvisioningError("--timeout must be more than 0 seconds")
    if not 1 <= args.jobs <= MAX_JOBS:
        raise ProvisioningError(f"--jobs must be 1 to {MAX_JOBS}, not {args.jobs}")
    targets = renewal_targets(
        args.dir, tuple(args.devices), expiring_within_days=args.expiring_within
    )
    if not targets:
        print(f"no unit's certificate expires within {args.expiring_within:g} days")
        return 0
    keys = load_station(args.dir)
    url = args.broker or keys.broker_url
    if url is None:
        raise ProvisioningError("no broker URL in station.json; pass --broker mqtts://host:port")
    broker = parse_broker_url(url)
    failed = 0
    superseded = 0
    outcomes = renew_units(
        keys, args.dir, targets, host=broker.host, port=broker.port, timeout=args.timeout,
        jobs=args.jobs,
    )  # fmt: skip
    for target, outcome in zip(targets, outcomes, strict=True):
        if outcome.ok:
            until = dt.datetime.fromtimestamp(outcome.not_after or 0, dt.timezone.utc)
            superseded += len(outcome.superseded)
            print(
                f"{target.device}\trenewed\tcertificate {outcome.old_serial} -> "
                f"{outcome.new_serial}, until {until.date().isoformat()}"
            )
        else:
            failed += 1
            print(f"{target.device}\tnot renewed\t{outcome.message}")
    if superseded:
        paths = StationPaths(args.dir)
        print(
            f"{superseded} superseded certificate(s) are in {paths.crl}; so that an old key is "
            f"refused too: {CRL_NEXT.format(dir=args.dir)}"
        )
    return 0 if failed == 0 else 1
