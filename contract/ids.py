"""Key ids. A unit's key id is its device id, which is also a level of every MQTT topic it uses
(:mod:`contract.topics`), so it may not hold the topic separator or wildcards."""

from __future__ import annotations

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
