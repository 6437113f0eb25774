"""The light path for a new CRL: from the station to a running broker without a new broker bundle.

After ``camveil station revoke`` or ``camveil station renew`` the station's ``broker/crl.pem``
lists more certificates. ``camveil station crl DIR --out FILE`` copies just that file out (and
says what it lists, one line per certificate); on the broker host it is dropped into
``TARGET/incoming/crl.pem``, where the broker bundle's ``camveil-crl.path`` sees it and starts
``camveil-crl.service``, which runs ``TARGET/apply-crl.sh``:

1. the new CRL must be signed by the camveil CA in ``TARGET/ca.crt`` and carry a higher CRL
   number than the one in force (an older CRL would let revoked units back in); otherwise it is
   left in ``incoming/`` and the service fails, saying why in the journal;
2. it replaces ``TARGET/crl.pem`` (atomically);
3. mosquitto is **restarted**, not reloaded. Measured with mosquitto 2.0.11: a reload (SIGHUP)
   does make it refuse new handshakes of a certificate the changed CRL lists (TLS 1.2 and 1.3,
   resumed sessions too), but a connection already open with that certificate stays open (the
   CRL is checked only during the handshake; it still answered PINGREQ after the reload). A
   revoked unit, or a thief with a superseded key, must be cut off, so the only safe step is a
   restart: every client reconnects (units within seconds, their outboxes keep what they seal
   meanwhile; mosquitto saves its persistence on the clean stop).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Final

from contract.errors import ProvisioningError
from provisioning import pki
from provisioning.inventory import Inventory
from provisioning.station import load_ca, open_station

#: the broker bundle's files for this path (relative to the bundle), with their modes
APPLY_SCRIPT_NAME: Final = "apply-crl.sh"
PATH_UNIT_NAME: Final = "camveil-crl.path"
SERVICE_UNIT_NAME: Final = "camveil-crl.service"
INCOMING: Final = "incoming"

APPLY_SCRIPT: Final = """\
#!/bin/sh
# camveil: put a new CRL in force on this broker host. camveil-crl.service runs this when
# ${TARGET}/incoming/crl.pem is written (camveil-crl.path); as root by hand it does the same.
# The CRL must be signed by the camveil CA and newer than the one in force. Then mosquitto is
# RESTARTED: a reload (SIGHUP) refuses new handshakes of a listed certificate but leaves its
# open connections alone (mosquitto 2.0 checks the CRL only at the handshake).
#   RESTART (default "systemctl restart mosquitto.service"): the command that restarts it
set -eu
target='${TARGET}'
new="$$target/incoming/crl.pem"
restart=$${RESTART:-systemctl restart mosquitto.service}
if [ ! -e "$$new" ]; then
    echo "camveil-crl: no $$new, nothing to apply"
    exit 0
fi
if ! out=$$(openssl crl -in "$$new" -noout -CAfile "$$target/ca.crt" 2>&1) \\
        || ! printf '%s\\n' "$$out" | grep -qx "verify OK"; then
    echo "camveil-crl: $$new is not a CRL signed by the CA in $$target/ca.crt; not applied" \\
        "(make it with \\`camveil station crl\\` on the station): $$out" >&2
    exit 1
fi
number() {  # the CRL number of file $$1, in decimal (openssl prints it in hex)
    n=$$(openssl crl -in "$$1" -noout -crlnumber | sed -e 's/^crlNumber=//' -e 's/^0x//')
    printf '%d' "0x$$n"
}
new_number=$$(number "$$new")
old_number=0
if [ -e "$$target/crl.pem" ]; then
    old_number=$$(number "$$target/crl.pem")
fi
if [ "$$new_number" -le "$$old_number" ]; then
    if cmp -s "$$new" "$$target/crl.pem"; then
        echo "camveil-crl: CRL number $$new_number is already in force"
        rm -f "$$new"
        exit 0
    fi
    echo "camveil-crl: $$new has CRL number $$new_number, not newer than the $$old_number" \\
        "in force; not applied (an older CRL would let revoked units back in)" >&2
    exit 1
fi
install -m 0644 "$$new" "$$target/crl.pem.tmp"
mv -f "$$target/crl.pem.tmp" "$$target/crl.pem"
rm -f "$$new"
echo "camveil-crl: CRL number $$new_number in force; restarting mosquitto ($$restart) to" \\
    "refuse its certificates and end their open connections"
$$restart
"""

PATH_UNIT: Final = """\
# camveil: apply a new CRL as soon as it is written to ${TARGET}/incoming/crl.pem
# (made by `camveil station broker-bundle`; see camveil-crl.service)
[Unit]
Description=camveil: watch for a new CRL for mosquitto

[Path]
PathChanged=${TARGET}/incoming/crl.pem
Unit=camveil-crl.service

[Install]
WantedBy=multi-user.target
"""

SERVICE_UNIT: Final = """\
# camveil: check a new CRL, put it in force and restart mosquitto (a reload would leave the
# open connections of the certificates it lists alone); started by camveil-crl.path
[Unit]
Description=camveil: put a new CRL in force and restart mosquitto

[Service]
Type=oneshot
ExecStart=/bin/sh ${TARGET}/apply-crl.sh
"""


def render_files(target: Path) -> dict[str, str]:
    """The bundle's files for this path (bundle-relative name -> text), for ``target``."""
    values = {"TARGET": str(target)}
    return {
        APPLY_SCRIPT_NAME: Template(APPLY_SCRIPT).substitute(values),
        f"systemd/{PATH_UNIT_NAME}": Template(PATH_UNIT).substitute(values),
        f"systemd/{SERVICE_UNIT_NAME}": Template(SERVICE_UNIT).substitute(values),
    }


@dataclass(frozen=True)
class CrlEntry:
    """One certificate the station's CRL lists, with what the inventory knows of it."""

    serial: str  # hex
    device: str  # "?" when the inventory has no record of the serial
    state: str  # revoked | superseded | ?
    since: dt.datetime  # the CRL's revocation date
    reason: str

    def line(self) -> str:
        return (
            f"{self.serial}\t{self.device}\t{self.state}\t"
            f"{self.since.isoformat(timespec='seconds')}\t{self.reason}"
        )


@dataclass(frozen=True)
class CrlListing:
    number: int
    entries: list[CrlEntry]
    pem: bytes


def station_crl(root: Path) -> CrlListing:
    """The station's CRL (checked against its CA) and what it lists, in serial order."""
    paths = open_station(root)
    try:
        pem = paths.crl.read_bytes()
    except FileNotFoundError:
        raise ProvisioningError(
            f"{paths.crl} does not exist: a station from before revocation support; run "
            "`camveil station revoke` once or re-create the station"
        ) from None
    try:
        crl = pki.load_crl_pem(pem)
        number = crl.extensions.get_extension_for_class(pki.x509.CRLNumber).value.crl_number
    except (ValueError, pki.x509.ExtensionNotFound) as exc:
        raise ProvisioningError(f"{paths.crl} is not a CRL with a number: {exc}") from None
    if not crl.is_signature_valid(load_ca(paths).key.public_key()):
        raise ProvisioningError(f"{paths.crl} is not signed by the station's CA")
    known: dict[str, tuple[str, str, str]] = {}  # serial -> device, state, reason
    with Inventory(paths.inventory) as inventory:
        reasons = {}
        for revocation in inventory.revocations():
            known[revocation.serial] = (revocation.device, "revoked", revocation.reason)
            reasons[revocation.device] = revocation.reason
        for cert in inventory.certificates():
            reason = "renewed" if cert.state == "superseded" else reasons.get(cert.device, "")
            known.setdefault(cert.serial, (cert.device, cert.state, reason))
    entries = []
    for revoked in sorted(crl, key=lambda r: r.serial_number):
        serial = f"{revoked.serial_number:x}"
        device, state, reason = known.get(serial, ("?", "?", "not in the inventory"))
        entries.append(CrlEntry(serial, device, state, revoked.revocation_date_utc, reason))
    return CrlListing(number, entries, pem)


def export_crl(root: Path, out: Path) -> CrlListing:
    """Write the station's CRL to ``out`` (0644: a CRL is public); returns what it lists."""
    listing = station_crl(root)
    out = Path(out)
    if out.is_dir():
        raise ProvisioningError(f"--out {out} is a folder; give a file name, e.g. {out}/crl.pem")
    if not out.parent.is_dir():
        raise ProvisioningError(f"--out {out}: the folder {out.parent} does not exist")
    pki.write_atomic(out, listing.pem, 0o644)
    return listing
