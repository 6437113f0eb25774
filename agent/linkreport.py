"""Why the unit cannot publish, said once in its journal at WARNING (not on every attempt).

The transport logs each failed attempt (agent.transport); this is the line an operator looks for
after a first boot that "does nothing": it names the broker, the reason, what that usually
means, and how many sealed envelopes wait. It is logged at the first failure, again when the
reason changes, and at most every ``interval`` seconds while the same failure lasts; when a
connection succeeds after a failure, one INFO line says that publishing works again.

The same events choose the status LED's pattern (:mod:`hw.led`): ``ok`` while connected,
``refused`` when the broker refuses this unit (TLS handshake, certificate, CONNACK: provisioning
or revocation trouble, retrying will not fix it), ``unreachable`` for everything else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from agent.transport import ConnectionEvent, ConnectionState

logger = logging.getLogger(__name__)

REPORT_INTERVAL: Final = 600.0
"""Seconds between two reports of the same lasting failure."""

_HINTS: Final = (
    (
        ("certificate revoked",),
        "the broker has this unit's certificate on its CRL: it was revoked (`camveil station "
        "revoke`) or replaced by a renewal; factory-reset and provision it again if it belongs "
        "in the fleet",
        "refused",
    ),
    (
        ("certificate expired",),
        "this unit's certificate (or the broker's clock) is past its end date: provision the "
        "unit again over USB (`camveil station list` shows the date)",
        "refused",
    ),
    (
        ("unknown ca",),
        "the broker does not know the CA of this unit's certificate: the unit was provisioned "
        "by another station, or the broker has another station's files",
        "refused",
    ),
    (
        ("certificate verify failed",),
        "the broker's certificate is not from this unit's CA or does not name the host it "
        "dials: start the broker from the station's broker files, or provision again",
        "refused",
    ),
    (
        ("right after the TLS handshake",),
        "under TLS 1.3 the broker checks this unit's certificate after the handshake: it may "
        "be revoked, expired or not from the broker's CA; see the broker's log",
        "refused",
    ),
    (
        ("tlsv1 alert", "certificate", "TLS"),
        "the TLS handshake failed: is this unit's certificate revoked, or the broker not the "
        "station's?",
        "refused",
    ),
    (
        ("ConnectionRefusedError: [Errno", "Connection refused"),
        "nothing listens there: is mosquitto running with the station's configuration?",
        "unreachable",
    ),
    (
        ("Name or service not known", "Temporary failure in name resolution", "gaierror"),
        "the broker's host name does not resolve on this unit",
        "unreachable",
    ),
    (
        ("CONNACK",),
        "the broker refused the session: is the unit revoked, or not in its ACL?",
        "refused",
    ),
)


def hint(reason: str) -> str:
    """What a transport failure reason usually means (empty when there is no known hint)."""
    for needles, text, _ in _HINTS:
        if any(n in reason for n in needles):
            return text
    return ""


def led_pattern(reason: str) -> str:
    """The status LED pattern for a failure reason: ``refused`` or ``unreachable``."""
    for needles, _, pattern in _HINTS:
        if any(n in reason for n in needles):
            return pattern
    return "unreachable"


class LinkReport:
    """Feed it every connection event; it logs as described in the module docstring."""

    def __init__(
        self,
        broker: str,
        waiting: Callable[[], int],
        *,
        interval: float = REPORT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        show: Callable[[str], None] | None = None,
    ) -> None:
        """``show`` receives the status LED pattern for every connection event."""
        self._broker = broker
        self._show = show
        self._waiting = waiting
        self._interval = interval
        self._clock = clock
        self._failing_since: float | None = None
        self._last: tuple[str, float] | None = None  # reason, when reported
        self.reports = 0

    def on_event(self, event: ConnectionEvent) -> None:
        if event.state is ConnectionState.CONNECTED:
            if self._show is not None:
                self._show("ok")
            if self._failing_since is not None:
                logger.info(
                    "publishing to %s again after %.0f s",
                    self._broker,
                    self._clock() - self._failing_since,
                )
            self._failing_since, self._last = None, None
            return
        if event.state not in (ConnectionState.CONNECT_FAILED, ConnectionState.DISCONNECTED):
            return
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        reason = event.reason or event.state.value
        if self._show is not None:
            self._show(led_pattern(reason))
        if (
            self._last is not None
            and self._last[0] == reason
            and now - self._last[1] < (self._interval)
        ):
            return
        self._last = (reason, now)
        self.reports += 1
        meaning = hint(reason)
        logger.warning(
            "cannot publish to %s: %s%s; %d sealed envelope(s) wait in the outbox (retrying; "
            "repeated every %.0f min while it lasts)",
            self._broker,
            reason,
            f" ({meaning})" if meaning else "",
            self._waiting(),
            self._interval / 60,
        )
