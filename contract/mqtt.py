"""How every camveil client talks to the broker, unit and backend alike: QoS and the TLS
client context (TLS 1.2+, the pinned CA as the only trust anchor, host name checked, a
client certificate). One place, so the unit's transport, the backend's ingest and the operator's
command client cannot drift apart (wire details in docs/PROTOCOL.md).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

from contract.errors import ConfigError

QOS: Final = 1


def tls_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """TLS 1.2+, the pinned CA as the only trust anchor, host name checked, our certificate
    (units and backends alike). ConfigError (naming the file) when a file cannot be loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(_unusable("CA certificate", str(ca_file), exc)) from None
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        files = f"{cert_file} / {key_file}"
        raise ConfigError(_unusable("client certificate and key", files, exc)) from None
    return context


def _unusable(what: str, where: str, exc: BaseException) -> str:
    return (
        f"mqtt: cannot load the {what} ({where}): {exc}. These files come from provisioning; "
        "re-provision the unit if they are missing or damaged."
    )
