"""Key ids and device ids. A unit's key id is its device id, which is also a level of every MQTT
topic it uses (:mod:`contract.topics`), so it may not hold the topic separator or wildcards; a
device id is also a certificate CN and MQTT user name, so it is stricter still."""

from __future__ import annotations

import re
from typing import Final

MAX_KID_BYTES: Final = 64


def check_kid(kid: str) -> str:
    """Return ``kid`` if usable as a key id: 1..64 printable ASCII chars without '/', '+', '#'."""
    if (
        not isinstance(kid, str)
        or not 0 < len(kid) <= MAX_KID_BYTES
        or not kid.isascii()
        or not kid.isprintable()
        or any(c in kid for c in "/+#")
        or kid.strip() != kid
    ):
        raise ValueError(
            f"invalid key id {kid!r}: use 1..64 printable ASCII characters without '/', '+', '#'"
        )
    return kid


BACKEND_PREFIX: Final = "backend-"
OPERATOR_PREFIX: Final = "operator-"
RESERVED_PREFIXES: Final = (BACKEND_PREFIX, OPERATOR_PREFIX)
_DEVICE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it can be a device identity, else raise ValueError.

    1..64 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit, and not
    starting with a reserved prefix (``backend-``, ``operator-``). The id is the certificate CN,
    the MQTT username and client id and a topic level, so it can never hold ``/ + # $``, which
    would let the broker's ``%u`` ACL patterns match other devices' topics.
    """
    if not isinstance(device_id, str) or not _DEVICE_ID.fullmatch(device_id):
        raise ValueError(
            f"invalid device id {device_id!r}: use 1..64 characters from A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    if device_id.startswith(RESERVED_PREFIXES):
        raise ValueError(
            f"invalid device id {device_id!r}: the prefixes {', '.join(RESERVED_PREFIXES)} "
            "are reserved for backend and operator certificates"
        )
    return device_id
