"""How the transport words a connection that ended before the broker's CONNACK."""

from __future__ import annotations

import ssl

from agent.linkreport import led_pattern
from agent.transport.client import CLOSED_AFTER_HANDSHAKE, describe, describe_refusal


def alert(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] ...")
    error.reason = reason
    return error


def test_a_close_without_an_alert_says_when_it_happened() -> None:
    assert describe_refusal(None) == CLOSED_AFTER_HANDSHAKE
    assert led_pattern(describe_refusal(None)) == "refused"


def test_the_brokers_alert_is_named_readably() -> None:
    reason = describe_refusal(alert("SSLV3_ALERT_CERTIFICATE_REVOKED"))
    assert reason == f"{CLOSED_AFTER_HANDSHAKE}: sslv3 alert certificate revoked"
    assert describe(alert("TLSV1_ALERT_UNKNOWN_CA")) == "TLS: tlsv1 alert unknown ca"


def test_a_connack_refusal_and_other_errors_keep_their_words() -> None:
    connack = ConnectionRefusedError("CONNACK 0x87 Not authorized")
    assert describe_refusal(connack) == "ConnectionRefusedError: CONNACK 0x87 Not authorized"
    reset = ConnectionResetError(104, "Connection reset by peer")
    assert describe_refusal(reset) == (
        f"{CLOSED_AFTER_HANDSHAKE} (ConnectionResetError: [Errno 104] Connection reset by peer)"
    )
