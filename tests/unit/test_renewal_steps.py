"""Certificate renewal without a broker: the unit's staged files (checks, swap, recovery after a
power cut at each step), its command handlers with a fake reconnect (fail closed), and the
station's issuing, superseding, CRL and revocation rules."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.public import PrivateKey

from agent.certrenewal import CertRenewal
from agent.commands import Command, CommandRejectedError
from contract.commands import Ack
from contract.envelope.keys import Identity
from contract.errors import ProtocolViolationError, ProvisioningError
from provisioning import pki
from provisioning.inventory import Inventory, UnitRecord
from provisioning.renewal import confirm_renewal, issue_renewal, renewal_targets
from provisioning.station import StationPaths, init_station, load_ca, revoke_unit
from provisioning.unit_renewal import ClientCertFiles
from tools.devpki import write_unit_state

DEVICE = "cv-renew-0001"


@pytest.fixture
def ca() -> pki.Issued:
    return pki.make_ca()


@pytest.fixture
def files(tmp_path: Path, ca: pki.Issued) -> ClientCertFiles:
    other = Identity.generate("backend").public()
    write_unit_state(tmp_path / "unit", ca=ca, device_id=DEVICE, broker_url="mqtts://h:1",
                     backend=other, operator=other)  # fmt: skip
    return ClientCertFiles(tmp_path / "unit" / "provisioned")


def _issue(ca: pki.Issued, csr_pem: bytes, **kw: object) -> bytes:
    return pki.cert_pem(pki.sign_device_csr(ca, pki.load_csr_pem(csr_pem), **kw))  # type: ignore[arg-type]


def test_a_staged_certificate_must_be_for_the_staged_key_this_unit_and_the_pinned_ca(
    files: ClientCertFiles, ca: pki.Issued
) -> None:
    with pytest.raises(ProtocolViolationError, match="no renewal in progress"):
        files.stage_cert(pki.cert_pem(pki.make_device_cert(ca, DEVICE).cert), DEVICE)
    csr = files.stage_key(DEVICE)
    assert files.next_key.stat().st_mode & 0o777 == 0o600
    assert pki.common_name(pki.load_csr_pem(csr)) == DEVICE
    now = dt.datetime.now(dt.timezone.utc)
    refused = {
        "not for this unit's TLS key": pki.cert_pem(pki.make_device_cert(ca, DEVICE).cert),
        "is for 'cv-other-unit01'": pki.cert_pem(pki.make_device_cert(ca, "cv-other-unit01").cert),
        "does not verify under the CA": _issue(pki.make_ca(), csr),
        "expired": _issue(ca, csr, now=now - dt.timedelta(days=800)),
        "not valid before": _issue(ca, csr, now=now + dt.timedelta(days=2)),
        "exactly one": _issue(ca, csr) + _issue(ca, csr),
        "certificate refused": b"-----BEGIN CERTIFICATE-----\nnot base64\n",
    }
    for reason, pem in refused.items():
        with pytest.raises(ProtocolViolationError, match=reason):
            files.stage_cert(pem, DEVICE)
        assert not files.next_cert.exists() and files.next_key.exists()
    info = files.stage_cert(_issue(ca, csr), DEVICE)
    assert files.next_cert.exists() and info.not_after > time.time()


def test_promote_replaces_the_pair_and_the_old_key_is_gone(
    files: ClientCertFiles, ca: pki.Issued
) -> None:
    old_key = files.key.read_bytes()
    csr = files.stage_key(DEVICE)
    info = files.stage_cert(_issue(ca, csr), DEVICE)
    staged_key = files.next_key.read_bytes()
    files.promote()
    assert files.current().serial == info.serial
    assert files.key.read_bytes() == staged_key != old_key
    assert not files.next_key.exists() and not files.next_cert.exists()
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert all(old_key not in p.read_bytes() for p in files.dir.iterdir())


@pytest.mark.parametrize("cut", ["staged", "between_renames"])
def test_recover_after_a_power_cut(files: ClientCertFiles, ca: pki.Issued, cut: str) -> None:
    old = files.current()
    csr = files.stage_key(DEVICE)
    new = files.stage_cert(_issue(ca, csr), DEVICE)
    if cut == "between_renames":  # the key was renamed, the certificate not yet
        files.next_key.replace(files.key)
        assert files.recover() == "finished an interrupted certificate swap"
        assert files.current() == new
    else:  # the trial connection never finished: the old pair stays (fail closed)
        assert "old pair stays" in (files.recover() or "")
        assert files.current() == old and files.next_key.exists()
    assert not files.next_cert.exists()
    key = pki.load_key_pem(files.key.read_bytes())
    cert = pki.load_cert_pem(files.cert.read_bytes())
    assert pki.spki(key.public_key()) == pki.spki(cert.public_key())
    assert files.recover() is None


def _renewal(
    files: ClientCertFiles, accept: Callable[[Path], bool]
) -> tuple[CertRenewal, list[Path]]:
    tried: list[Path] = []

    def reconnect(cert: Path, key: Path, wait_s: float) -> bool:
        tried.append(cert)
        return accept(cert)

    return CertRenewal(DEVICE, files, reconnect, lambda c, k: None, trial_s=0.1), tried


def _cmd(name: str, **args: object) -> Command:
    return Command("c1", name, args, 1, "operator")


def test_a_certificate_the_broker_refuses_leaves_the_old_pair_in_use(
    files: ClientCertFiles, ca: pki.Issued
) -> None:
    before = files.cert.read_bytes(), files.key.read_bytes()
    renewal, tried = _renewal(files, lambda cert: cert == files.cert)  # only the old pair works
    outcome = renewal.renew(_cmd("renew_cert"))
    assert outcome.result["serial"] == files.current().serial
    cert = _issue(ca, outcome.result["csr"])  # type: ignore[arg-type]
    with pytest.raises(CommandRejectedError, match="did not accept the new certificate"):
        renewal.install(_cmd("install_cert", cert=cert))
    assert tried == [files.next_cert, files.cert]  # tried the new pair, then back to the old
    assert (files.cert.read_bytes(), files.key.read_bytes()) == before
    assert not files.next_key.exists() and not files.next_cert.exists()
    with pytest.raises(CommandRejectedError, match="no renewal in progress"):
        renewal.install(_cmd("install_cert", cert=cert))
    with pytest.raises(CommandRejectedError, match="PEM certificate"):
        renewal.install(_cmd("install_cert", cert="text"))
    with pytest.raises(CommandRejectedError, match="no arguments"):
        renewal.renew(_cmd("renew_cert", x=1))

    accepted, tried = _renewal(files, lambda cert: True)
    csr = accepted.renew(_cmd("renew_cert")).result["csr"]
    done = accepted.install(_cmd("install_cert", cert=_issue(ca, csr)))  # type: ignore[arg-type]
    assert tried == [files.next_cert] and files.current().serial == done.result["serial"]


def test_ack_result_is_in_the_body_only_when_given() -> None:
    assert "result" not in Ack("a", 1, True, "ok").body()
    assert Ack("a", 1, True, "ok", result={"csr": b"x"}).body()["result"] == {"csr": b"x"}


# --- the station ------------------------------------------------------------------------------


def _provisioned(root: Path, device: str) -> tuple[StationPaths, pki.PrivateKey]:
    """A station with one unit marked provisioned (the bundle as the station builds it)."""
    paths = init_station(root)
    ca = load_ca(paths)
    key = pki.make_device_key()
    cert = pki.sign_device_csr(ca, pki.make_csr(key, device), expected_device_id=device)
    from contract.statedir import Bundle

    bundle = Bundle(device, pki.cert_pem(cert), pki.cert_pem(ca.cert), "mqtts://h:1", bytes(32),
                    bytes(32), {"name": "s"}, 0).encode()  # fmt: skip
    identity = Identity.generate(device)
    x25519 = bytes(PrivateKey.generate().public_key)
    with Inventory(paths.inventory) as inventory:
        ed = bytes(identity.signing_key.verify_key)
        inventory.add_pending(UnitRecord(device, ed, x25519, "pending", "s", bundle, 0.0))
        inventory.mark_provisioned(device)
    return paths, key


def test_station_issues_supersedes_and_revokes_every_certificate(tmp_path: Path) -> None:
    paths, first_key = _provisioned(tmp_path / "st", DEVICE)
    (target,) = renewal_targets(paths.root, [DEVICE])
    first_serial = int(target.serial, 16)
    assert renewal_targets(paths.root, expiring_within_days=700) == []
    assert [t.device for t in renewal_targets(paths.root, expiring_within_days=731)] == [DEVICE]

    for csr, reason in (
        (pki.csr_pem(pki.make_csr(first_key, DEVICE)), "certified for this unit before"),
        (pki.csr_pem(pki.make_csr(pki.make_device_key(), "cv-someone-else1")), "expected"),
        (b"garbage", "not acceptable"),
    ):
        with pytest.raises(ProvisioningError, match=reason):
            issue_renewal(paths.root, DEVICE, csr)
    with pytest.raises(ProvisioningError, match="no provisioned unit 'cv-nobody'"):
        issue_renewal(paths.root, "cv-nobody", b"")

    issued = [
        issue_renewal(paths.root, DEVICE, pki.csr_pem(pki.make_csr(pki.make_device_key(), DEVICE)))
        for _ in range(2)
    ]  # the first was never confirmed (its install_cert lost, say)
    superseded = confirm_renewal(paths.root, DEVICE, issued[1].serial)
    assert sorted(c.serial for c in superseded) == sorted([target.serial, issued[0].serial])
    crl = pki.load_crl_pem(paths.crl.read_bytes())
    numbers = [crl.extensions.get_extension_for_class(pki.x509.CRLNumber).value.crl_number]
    for serial in (first_serial, int(issued[0].serial, 16)):
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(int(issued[1].serial, 16)) is None
    (target,) = renewal_targets(paths.root, [DEVICE])
    assert target.serial == issued[1].serial  # `station list` and the next renewal see it
    with pytest.raises(ProvisioningError, match="was not issued to it"):
        confirm_renewal(paths.root, DEVICE, "abc")

    result = revoke_unit(paths.root, DEVICE, "stolen")
    assert result.revocation.serial == issued[1].serial  # the certificate in use
    crl = pki.load_crl_pem(paths.crl.read_bytes())
    numbers.append(crl.extensions.get_extension_for_class(pki.x509.CRLNumber).value.crl_number)
    assert numbers[1] > numbers[0]
    for serial in (first_serial, *(int(i.serial, 16) for i in issued)):
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    with pytest.raises(ProvisioningError, match="was revoked"):
        renewal_targets(paths.root, [DEVICE])
    with Inventory(paths.inventory) as inventory:
        assert {c.state for c in inventory.certificates(DEVICE)} == {"revoked"}


def test_a_handler_outcome_travels_in_the_ack_and_an_oversized_one_is_refused(
    tmp_path: Path,
) -> None:
    from agent.commands import CommandProcessor, Outcome
    from contract.commands import MAX_RESULT_BYTES, seal_command
    from contract.envelope.keys import PeerKeys
    from contract.topics import command_topic

    device, operator = Identity.generate(DEVICE), Identity.generate("operator")
    sent: list[Ack] = []
    processor = CommandProcessor(
        device=device,
        operators=PeerKeys([operator.public()]),
        replay_path=tmp_path / "cmd-replay.cbor",
        handlers={
            "renew_cert": lambda c: Outcome("ok: staged", {"csr": b"pem"}),
            "install_cert": lambda c: Outcome("ok", {"x": b"0" * MAX_RESULT_BYTES}),
        },
        send_ack=sent.append,
    )
    for seq, name in enumerate(("renew_cert", "install_cert"), 1):
        expires = int(time.time()) + 60
        envelope = seal_command(name, command_id=f"c{seq}", device=device.public(),
                                operator=operator, seq=seq, expires_at=expires)  # fmt: skip
        processor.handle(command_topic(DEVICE), envelope.data)
    assert sent[0].body()["result"] == {"csr": b"pem"} and sent[0].reason == "ok: staged"
    assert not sent[1].accepted and sent[1].reason == "failed: result too large"
    assert "result" not in sent[1].body()


def test_station_renew_command_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from camveil.__main__ import main

    paths, _ = _provisioned(tmp_path / "st", DEVICE)
    root = str(paths.root)
    cases = {
        (): "name the units to renew, or give --expiring-within DAYS",
        ("--expiring-within", "-1"): "--expiring-within must be 0 or more days",
        ("cv-nobody",): f"no provisioned unit 'cv-nobody' in the inventory (units: {DEVICE})",
        (DEVICE, "--timeout", "0"): "--timeout must be more than 0 seconds",
    }
    for argv, message in cases.items():
        assert main(["station", "renew", root, *argv]) == 2
        assert capsys.readouterr().err == f"camveil station: error: {message}\n"
    assert main(["station", "renew", root, "--expiring-within", "30"]) == 0
    assert capsys.readouterr().out == "no unit's certificate expires within 30 days\n"
    assert main(["station", "renew", str(tmp_path / "nowhere"), DEVICE]) == 2
    assert "no such folder" in capsys.readouterr().err
