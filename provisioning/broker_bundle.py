"""``camveil station broker-bundle OUT``: what a broker host needs, copied out of the station.

The station folder holds the CA key, so the broker host must never read files from it. The
bundle is a folder to copy to the broker host::

    OUT/conf.d/camveil.conf     a mosquitto conf.d drop-in (Debian: /etc/mosquitto/conf.d/);
                                its paths point into TARGET (default /etc/mosquitto/camveil)
    OUT/files/                  ca.crt, server.crt, server.key (0600), crl.pem, acl
    OUT/apply-crl.sh            puts a new CRL in force (provisioning.broker_crl): installed
                                into TARGET, run by camveil-crl.service
    OUT/systemd/                camveil-crl.path (watches TARGET/incoming/crl.pem) and
                                camveil-crl.service (oneshot: apply-crl.sh, which checks the CRL
                                and restarts mosquitto), for /etc/systemd/system
    OUT/install.sh              run as root on the broker host: copies files/ into TARGET (the key
                                owned by the mosquitto user, which mosquitto switches to before
                                it reads it), apply-crl.sh beside them, the drop-in into conf.d,
                                the two units into systemd (camveil-crl.path enabled), then
                                restarts mosquitto

After ``camveil station revoke`` or ``renew`` only the CRL changes: ``camveil station crl DIR
--out FILE`` and FILE copied to TARGET/incoming/crl.pem on the broker host is enough (no new
bundle).

The drop-in leaves ``user``, ``persistence``, ``persistence_location`` and ``log_dest`` to the
host's main mosquitto.conf (Debian's sets them; mosquitto 2.0.11 refuses a second ``user`` or
``persistence_location`` with "Duplicate ... value in configuration").
"""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Final

from contract.errors import ProvisioningError
from provisioning import broker, broker_crl, pki
from provisioning.station import StationConfig, open_station

DEFAULT_TARGET: Final = Path("/etc/mosquitto/camveil")
DROPIN_NAME: Final = "camveil.conf"
#: options the broker host's main config owns (see the module docstring)
HOST_OWNED: Final = ("user", "persistence", "persistence_location", "log_dest")
#: the files copied, and their modes in the bundle
FILES: Final = {"ca.crt": 0o644, "server.crt": 0o644, "server.key": 0o600, "crl.pem": 0o644,
                "acl": 0o644}  # fmt: skip

INSTALL_SCRIPT: Final = """\
#!/bin/sh
# Install camveil's mosquitto files on this broker host; run as root from anywhere.
#   sh install.sh              copy everything, then restart mosquitto
#   RELOAD="systemctl reload mosquitto" sh install.sh
#                              after `camveil station add-backend`: a SIGHUP re-reads the ACL
#                              (a new CRL alone needs no new bundle: see apply-crl.sh)
# MOSQUITTO_USER (default mosquitto) must own the key: mosquitto drops root before reading it.
# CONF_D (default /etc/mosquitto/conf.d) is where the drop-in goes, SYSTEMD_DIR (default
# /etc/systemd/system) the units of the CRL path; SYSTEMCTL (default systemctl) enables them.
set -eu
here=$$(cd "$$(dirname "$$0")" && pwd)
target='${TARGET}'
user=$${MOSQUITTO_USER:-mosquitto}
group=$$(id -gn "$$user")
conf_d=$${CONF_D:-/etc/mosquitto/conf.d}
reload=$${RELOAD:-systemctl restart mosquitto}
systemd_dir=$${SYSTEMD_DIR:-/etc/systemd/system}
systemctl=$${SYSTEMCTL:-systemctl}
install -d -m 0755 "$$target" "$$target/incoming"
for f in ca.crt server.crt crl.pem acl; do
    install -m 0644 "$$here/files/$$f" "$$target/$$f"
done
install -m 0600 -o "$$user" -g "$$group" "$$here/files/server.key" "$$target/server.key"
install -m 0755 "$$here/${APPLY}" "$$target/${APPLY}"
install -m 0644 "$$here/conf.d/${DROPIN}" "$$conf_d/${DROPIN}"
install -m 0644 "$$here/systemd/${PATH_UNIT}" "$$here/systemd/${SERVICE_UNIT}" "$$systemd_dir/"
$$systemctl daemon-reload
$$systemctl enable --now ${PATH_UNIT}
echo "camveil broker files in $$target, drop-in $$conf_d/${DROPIN}; new CRLs go to" \
    "$$target/incoming/crl.pem (${PATH_UNIT}); running: $$reload"
$$reload
"""


def render_dropin(settings: broker.BrokerSettings, target: Path) -> str:
    """The drop-in: the station's broker config with its files in ``target``, without the
    options the host's main config owns."""
    config = broker.render_config(
        settings,
        acl_file=target / "acl",
        cafile=target / "ca.crt",
        certfile=target / "server.crt",
        keyfile=target / "server.key",
        persistence_dir=target / "unused",
        crlfile=target / "crl.pem",
    )
    kept = [
        line
        for line in config.splitlines()
        if line.split(" ", 1)[0] not in HOST_OWNED and not line.startswith("# user:")
    ]
    header = (
        "# camveil: a mosquitto conf.d drop-in made by `camveil station broker-bundle`.\n"
        "# user, persistence, persistence_location, log_dest: from the main mosquitto.conf.\n"
    )
    return header + "\n".join(kept[1:]) + "\n"  # the first line is the full config's header


def write_broker_bundle(root: Path, out: Path, target: Path = DEFAULT_TARGET) -> Path:
    """Write the bundle (module docstring) into the new or empty folder ``out``; returns the
    drop-in's path. ``target`` is where install.sh puts the files on the broker host."""
    paths = open_station(root)
    config = StationConfig.load(paths.config)
    if not target.is_absolute():
        raise ProvisioningError(f"--target-dir {target}: give an absolute path")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ProvisioningError(f"{out} exists and is not an empty folder; choose a new one")
    if out.resolve().is_relative_to(paths.root.resolve()):
        raise ProvisioningError(f"{out} is inside the station folder; write the bundle elsewhere")
    missing = [name for name in FILES if not (paths.broker_dir / name).is_file()]
    if missing:
        raise ProvisioningError(
            f"{paths.broker_dir} has no {', '.join(missing)}: a station from before revocation "
            f"support; run `camveil station revoke` once or re-create the station"
        )
    url = broker.parse_broker_url(config.broker_url)
    settings = broker.BrokerSettings(port=url.port, bind_address=url.bind_address)
    try:
        dropin = render_dropin(settings, target)
    except ValueError as exc:
        raise ProvisioningError(f"--target-dir {target}: {exc}") from None
    script = Template(INSTALL_SCRIPT).substitute(
        TARGET=target,
        DROPIN=DROPIN_NAME,
        APPLY=broker_crl.APPLY_SCRIPT_NAME,
        PATH_UNIT=broker_crl.PATH_UNIT_NAME,
        SERVICE_UNIT=broker_crl.SERVICE_UNIT_NAME,
    )
    (out / "files").mkdir(mode=0o700, parents=True)
    (out / "conf.d").mkdir(mode=0o755)
    (out / "systemd").mkdir(mode=0o755)
    out.chmod(0o700)  # holds the broker's private key
    for name, mode in FILES.items():
        data = (paths.broker_dir / name).read_bytes()
        pki.write_atomic(out / "files" / name, data, mode)
    dropin_path = out / "conf.d" / DROPIN_NAME
    pki.write_atomic(dropin_path, dropin.encode(), 0o644)
    pki.write_atomic(out / "install.sh", script.encode(), 0o755)
    for name, text in broker_crl.render_files(target).items():
        pki.write_atomic(out / name, text.encode(), 0o755 if name.endswith(".sh") else 0o644)
    return dropin_path
