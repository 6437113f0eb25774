"""provisioning.pki and provisioning.broker: certificates, CSR checks, atomic 0600 key files,
rendered broker config and ACL."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning import broker, pki

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.make_ca()


def _verify(cert: x509.Certificate, ca: pki.Issued) -> None:
    cert.verify_directly_issued_by(ca.cert)


def test_ca_is_a_p256_ca_limited_to_end_entities(ca: pki.Issued) -> None:
    assert isinstance(ca.key.curve, ec.SECP256R1)
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature


def test_server_cert_names_and_usage(ca: pki.Issued) -> None:
    server = pki.make_server_cert(ca, ["broker.example", "10.0.0.5"])
    _verify(server.cert, ca)
    san = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "10.0.0.5", "127.0.0.1", "::1",
    ]  # fmt: skip
    assert server.common_name == "broker.example"
    eku = server.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    only = pki.make_server_cert(ca, ["broker.example"], loopback=False)
    san = only.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    with pytest.raises(ValueError, match="at least one name"):
        pki.make_server_cert(ca, [], loopback=False)


def test_device_csr_becomes_a_client_cert_with_the_device_id_as_cn(ca: pki.Issued) -> None:
    key = pki.make_device_key()
    csr = pki.load_csr_pem(pki.csr_pem(pki.make_csr(key, "cam-0042")))
    cert = pki.load_cert_pem(
        pki.cert_pem(pki.sign_device_csr(ca, csr, expected_device_id="cam-0042"))
    )
    _verify(cert, ca)
    assert pki.common_name(cert) == "cam-0042"
    assert cert.public_key() == key.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_csr_for_another_id_or_with_a_forged_signature_is_refused(ca: pki.Issued) -> None:
    key = pki.make_device_key()
    csr = pki.make_csr(key, "cam-1")
    with pytest.raises(ValueError, match="expected 'cam-2'"):
        pki.sign_device_csr(ca, csr, expected_device_id="cam-2")
    # same subject, another key's public key spliced in: proof of possession fails
    other = pki.make_csr(pki.make_device_key(), "cam-1")
    forged_der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    theirs = other.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    start = bytes(forged_der).index(mine)
    forged_der[start : start + len(mine)] = theirs
    forged = x509.load_der_x509_csr(bytes(forged_der))
    with pytest.raises(ValueError, match="signature"):
        pki.sign_device_csr(ca, forged)


def test_csr_with_a_non_p256_key_is_refused(ca: pki.Issued) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-1")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    with pytest.raises(ValueError, match="P-256"):
        pki.sign_device_csr(ca, csr)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a/b",
        "a+b",
        "a#b",
        "$SYS",
        "-lead",
        "with space",
        "x" * 65,
        "backend-x",
        "operator-y",
        "é",
    ],
)
def test_device_ids_that_could_widen_acl_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid device id"):
        pki.check_device_id(bad)
    with pytest.raises(ValueError):
        pki.make_csr(pki.make_device_key(), bad)


def test_backend_and_operator_identities(ca: pki.Issued) -> None:
    backend = pki.make_backend_cert(ca, "dashboard")
    operator = pki.make_operator_cert(ca, "console")
    assert backend.common_name == "backend-dashboard"
    assert operator.common_name == "operator-console"
    for issued in (backend, operator):
        _verify(issued.cert, ca)
    with pytest.raises(ValueError):
        pki.backend_identity("a/b")


def test_private_keys_are_written_0600_atomically(ca: pki.Issued, tmp_path: Path) -> None:
    old_umask = os.umask(0)  # a careless umask must not widen the key file
    try:
        files = pki.write_issued(tmp_path, "srv", ca)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.cert.stat().st_mode) == 0o644
    assert pki.load_key_pem(files.key.read_bytes()).private_numbers() == ca.key.private_numbers()
    assert pki.load_cert_pem(files.cert.read_bytes()) == ca.cert
    pki.write_private_key(files.key, pki.make_key())  # replacing works, no temp files left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["srv.crt", "srv.key"]


def test_acl_uses_patterns_for_devices_and_lists_backends() -> None:
    acl = broker.render_acl(["dashboard", "ingest"], ["console"], ["cam-1", "cam-2"])
    lines = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert lines[:4] == [
        "pattern write camveil/v1/%u/event/#",
        "pattern write camveil/v1/%u/status",
        "pattern write camveil/v1/%u/cmd/ack",
        "pattern read camveil/v1/%u/cmd",
    ]
    assert "user backend-dashboard" in lines and "user backend-ingest" in lines
    assert "user operator-console" in lines
    assert "cam-1" not in acl  # devices are never listed
    with pytest.raises(ValueError):
        broker.render_acl([], [], ["backend-dashboard"])


def test_config_has_the_tls_and_auth_settings(tmp_path: Path) -> None:
    text = broker.render_config(
        broker.BrokerSettings(port=18883, persistence=False, user="camveil"),
        acl_file=tmp_path / "acl",
        cafile=tmp_path / "ca.crt",
        certfile=tmp_path / "s.crt",
        keyfile=tmp_path / "s.key",
        persistence_dir=tmp_path / "data",
    )
    lines = set(text.splitlines())
    for expected in (
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
        "listener 18883 127.0.0.1",
        "persistence false",
        f"persistence_location {tmp_path}/data/",
        f"acl_file {tmp_path}/acl",
        "user camveil",
    ):
        assert expected in lines, expected
    with pytest.raises(ValueError, match="spaces"):
        broker.render_config(
            broker.BrokerSettings(),
            acl_file=Path("/a b/acl"),
            cafile=tmp_path,
            certfile=tmp_path,
            keyfile=tmp_path,
            persistence_dir=tmp_path,
        )


def test_deploy_examples_are_current() -> None:
    for name, text in broker.render_examples().items():
        path = REPO / "deploy" / "mosquitto" / name
        assert path.read_text() == text, (
            f"run: python -m provisioning.broker deploy/mosquitto ({name})"
        )


def test_broker_state_files_and_owner(ca: pki.Issued, tmp_path: Path) -> None:
    server = pki.make_server_cert(ca)
    kwargs: dict[str, Any] = {"ca_cert": ca.cert, "server": server, "backends": ["dashboard"]}
    files = broker.write_broker_state(tmp_path / "a", broker.BrokerSettings(), **kwargs)
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    assert files.persistence_dir.is_dir()
    assert f"acl_file {files.acl}" in files.config.read_text().splitlines()
    assert "user backend-dashboard" in files.acl.read_text()
    nobody = pwd.getpwnam("nobody")
    if os.geteuid() == 0:
        owned = broker.write_broker_state(
            tmp_path / "b",
            broker.BrokerSettings(),
            owner="nobody",
            **kwargs,
        )
        for path in (owned.server_key, owned.persistence_dir):
            assert (path.stat().st_uid, path.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    else:
        with pytest.raises(PermissionError):
            broker.write_broker_state(
                tmp_path / "b",
                broker.BrokerSettings(),
                owner="nobody",
                **kwargs,
            )
    with pytest.raises(ValueError, match="no such user"):
        broker.write_broker_state(
            tmp_path / "c",
            broker.BrokerSettings(),
            owner="no-such-user-xyz",
            **kwargs,
        )


def test_crl_lists_the_revoked_serials_signed_by_the_ca(ca: pki.Issued) -> None:
    import datetime as dt

    device = pki.make_device_cert(ca, "cv-crl")
    lifetime = device.cert.not_valid_after_utc - device.cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=pki.DEVICE_DAYS) == dt.timedelta(days=730)
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    crl = pki.load_crl_pem(
        pki.crl_pem(pki.make_crl(ca, [pki.Revoked(device.cert.serial_number, at)], number=7))
    )
    assert crl.is_signature_valid(ca.cert.public_key())
    assert crl.issuer == ca.cert.subject
    entry = crl.get_revoked_certificate_by_serial_number(device.cert.serial_number)
    assert entry is not None and entry.revocation_date_utc == at
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl.next_update_utc is not None and crl.last_update_utc is not None
    # an expired CRL locks every client out, so it lives as long as the CA
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(days=pki.CA_DAYS)
    empty = pki.make_crl(ca, [], number=1)
    assert empty.get_revoked_certificate_by_serial_number(device.cert.serial_number) is None


@pytest.mark.parametrize(
    ("url", "host", "port", "bind"),
    [
        ("mqtts://broker.example.org", "broker.example.org", 8883, None),
        ("mqtts://10.0.0.5:9883", "10.0.0.5", 9883, None),
        ("mqtts://localhost:1884", "localhost", 1884, "127.0.0.1"),
        ("mqtts://127.0.0.2:1884", "127.0.0.2", 1884, "127.0.0.2"),
        ("mqtts://[::1]:1884", "::1", 1884, "::1"),
        ("mqtts://Cams.Example.", "cams.example", 8883, None),
    ],
)
def test_broker_url(url: str, host: str, port: int, bind: str | None) -> None:
    parsed = broker.parse_broker_url(url)
    assert (parsed.host, parsed.port, parsed.bind_address) == (host, port, bind)
    assert broker.parse_broker_url(parsed.url) == parsed


@pytest.mark.parametrize(
    "url",
    ["broker.local", "http://foo", "ssl://foo", "mqtts://", "mqtts://h:0", "mqtts://h:65536",
     "mqtts://h:x", "mqtts://u@h", "mqtts://h/path", "mqtts://h?q", "mqtts://a_b", "mqtts://1.2.3"],
)  # fmt: skip
def test_broker_url_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"broker (URL|name)"):
        broker.parse_broker_url(url)
