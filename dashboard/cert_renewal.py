"""`camveil station renew`: renew units' TLS client certificates over MQTT, from the station
(docs/PROTOCOL.md, "Certificate renewal").

Per unit, on one MQTT connection with the station's operator certificate:

1. ``renew_cert``, sealed with the operator key to the unit's key from the station's inventory;
   the ack, signed by the unit's Ed25519 key and sealed to the operator, carries the CSR for a
   key the unit just made;
2. the station checks and certifies it (:func:`provisioning.renewal.issue_renewal`; the CA key
   is read on this host only, nothing of it goes on the wire);
3. ``install_cert`` with the certificate; the unit checks it, reconnects with it, and acks from
   the new connection once the broker accepted it;
4. the station records the new certificate as the unit's and the old ones as superseded (CRL).

If the unit reports (step 1) a certificate the station issued but never saw confirmed (the last
ack of an earlier run was lost), that one is recorded as the unit's first.

A failure at any step leaves the unit on its old certificate (the unit fails closed) and is
reported; the next run starts over with a new key.

:func:`renew_units` renews several units at once (``jobs`` threads) over one MQTT connection:
the broker takes the client id from the operator certificate, so a connection per unit would
disconnect the others. Each step at the station opens the inventory in its own thread (SQLite
WAL, one connection per call, writes in ``BEGIN IMMEDIATE`` transactions that wait for each
other), and the CRL is rewritten inside the transaction that supersedes a unit's old
certificate, so concurrent renewals never drop each other's entries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from contract.commands import INSTALL_CERT, RENEW_CERT, seal_command
from contract.errors import CamveilError, ProvisioningError
from dashboard.command_client import AckWaiter, OperatorKeys, new_command_id
from provisioning.renewal import (
    DEFAULT_JOBS,
    MAX_JOBS,
    IssuedCertificate,
    RenewalTarget,
    confirm_renewal,
    issue_renewal,
)

logger = logging.getLogger(__name__)

INSTALL_WAIT_S: Final = 45.0
"""How long to wait for the ``install_cert`` ack: the unit reconnects first (up to 30 s)."""


@dataclass(frozen=True)
class RenewOutcome:
    device: str
    ok: bool
    message: str
    old_serial: str = ""
    new_serial: str = ""
    not_after: float | None = None
    superseded: list[str] = field(default_factory=list)


class RenewalFailedError(CamveilError):
    """One unit's renewal did not complete; the message says at which step and why."""


def _accepted(ack: Mapping[str, Any], step: str) -> Mapping[str, Any]:
    body = ack.get("body")
    if not isinstance(body, Mapping) or body.get("status") != "accepted":
        reason = body.get("reason") if isinstance(body, Mapping) else "malformed ack"
        text = str(reason)[:300]
        shown = text if text.isprintable() else repr(text)  # no terminal escapes from a unit
        raise RenewalFailedError(f"{step} refused by the unit: {shown}")
    result = body.get("result")
    if not isinstance(result, Mapping):
        raise RenewalFailedError(f"{step}: the unit's ack has no result (an older camveil?)")
    return result


def _reconcile(station: Path, device: str, serial: str) -> None:
    """The unit says (in its signed ack) it uses ``serial``, not the certificate the station
    has as current: an earlier renewal's last ack was lost. Record it as current (the older ones
    are superseded); a serial the station never issued to it is only logged."""
    try:
        confirm_renewal(station, device, serial)
    except ProvisioningError as exc:
        logger.warning("%s reports certificate %s: %s", device, serial, exc)
    else:
        logger.info("%s: recorded certificate %s, installed by an earlier renewal", device, serial)


def renew_unit(
    keys: OperatorKeys,
    station: Path,
    target: RenewalTarget,
    *,
    host: str,
    port: int,
    timeout: float,
    expires_s: int = 300,
    waiter: AckWaiter | None = None,
) -> RenewOutcome:
    """Renew one unit (see the module docstring); never raises for a unit's failure. With
    ``waiter`` (subscribed to this unit's acks) its connection is used, else one is opened."""
    try:
        if waiter is None:
            with AckWaiter(keys, host, port, target.identity) as own:
                old_serial, issued = _exchange(keys, station, target, own, timeout, expires_s)
        else:
            old_serial, issued = _exchange(keys, station, target, waiter, timeout, expires_s)
    except CamveilError as exc:
        logger.warning("renewal of %s failed: %s", target.device, exc)
        return RenewOutcome(target.device, False, str(exc), old_serial=target.serial)
    superseded = confirm_renewal(station, target.device, issued.serial)
    return RenewOutcome(
        target.device,
        True,
        "renewed",
        old_serial=old_serial,
        new_serial=issued.serial,
        not_after=issued.not_after,
        superseded=[c.serial for c in superseded],
    )


def renew_units(
    keys: OperatorKeys,
    station: Path,
    targets: Sequence[RenewalTarget],
    *,
    host: str,
    port: int,
    timeout: float,
    jobs: int = DEFAULT_JOBS,
) -> Iterator[RenewOutcome]:
    """Renew ``targets``, up to ``jobs`` at a time, over one connection; yields one outcome per
    target in the order of ``targets`` (each as soon as it and those before it are done).
    A broker that cannot be reached fails every unit, with the reason."""
    if not 1 <= jobs <= MAX_JOBS:
        raise ValueError(f"jobs must be 1 to {MAX_JOBS}, not {jobs}")
    if not targets:
        return
    connection = ExitStack()
    try:
        waiter = connection.enter_context(
            AckWaiter(keys, host, port, *(t.identity for t in targets))
        )
    except CamveilError as exc:
        for target in targets:
            yield RenewOutcome(target.device, False, str(exc), old_serial=target.serial)
        return

    def one(target: RenewalTarget) -> RenewOutcome:
        return renew_unit(
            keys, station, target, host=host, port=port, timeout=timeout, waiter=waiter
        )

    with connection:
        pool = ThreadPoolExecutor(min(jobs, len(targets)), thread_name_prefix="renew")
        try:
            yield from pool.map(one, targets)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: units not started yet stay


def _exchange(
    keys: OperatorKeys,
    station: Path,
    target: RenewalTarget,
    waiter: AckWaiter,
    timeout: float,
    expires_s: int,
) -> tuple[str, IssuedCertificate]:
    """Steps 1-3 of the module docstring; RenewalFailedError (or another CamveilError) says
    where it stopped. Returns the serial the unit used before and the certificate it uses now."""
    device = target.identity

    def command(name: str, args: Mapping[str, Any] | None) -> tuple[Any, str]:
        command_id = new_command_id()
        envelope = seal_command(
            name,
            command_id=command_id,
            device=device,
            operator=keys.operator,
            seq=int(time.time() * 1000),
            expires_at=int(time.time()) + expires_s,
            args=args,
        )
        return envelope, command_id

    envelope, command_id = command(RENEW_CERT, None)
    try:
        ack = waiter.send(envelope, command_id, timeout)
    except TimeoutError as exc:
        raise RenewalFailedError(f"renew_cert: {exc} (is the unit online?)") from None
    result = _accepted(ack, RENEW_CERT)
    csr = result.get("csr")
    if not isinstance(csr, bytes):
        raise RenewalFailedError("renew_cert: the ack carries no CSR")
    old_serial = str(result.get("serial", target.serial))
    if old_serial != target.serial:
        _reconcile(station, target.device, old_serial)
    issued = issue_renewal(station, target.device, csr)
    envelope, command_id = command(INSTALL_CERT, {"cert": issued.cert_pem})
    try:
        ack = waiter.send(envelope, command_id, max(timeout, INSTALL_WAIT_S))
    except TimeoutError as exc:
        raise RenewalFailedError(
            f"install_cert: {exc}; certificate {issued.serial} was issued but the unit "
            "did not confirm it: run the renewal again"
        ) from None
    result = _accepted(ack, INSTALL_CERT)
    if result.get("serial") != issued.serial:
        raise RenewalFailedError(
            f"install_cert: the unit reports certificate {result.get('serial')!r}, "
            f"not {issued.serial}"
        )
    return old_serial, issued
