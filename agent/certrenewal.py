"""Client-certificate renewal over MQTT, the unit's commands (docs/PROTOCOL.md, "Certificate
renewal"; the files are :mod:`provisioning.unit_renewal`, the station's end is
:mod:`provisioning.renewal`).

- ``renew_cert`` (no args): a new TLS key is made and staged (0600), and the ack carries the CSR
  for it (CN = the device id, signed with the new key) and the serial and notAfter of the
  certificate in use. The ack is signed with the unit's Ed25519 identity and sealed to the
  operator, so the station knows the CSR is this unit's and fresh: it answers this command id.
- ``install_cert`` (``{"cert": PEM}``): the certificate must chain to the CA pinned at
  provisioning, name this unit, certify the staged key and be a valid client certificate;
  then the MQTT session is restarted with the staged pair. Only when the broker accepted it
  (CONNACK) are key and certificate renamed over the old pair, whose key is thereby gone; the
  ack then goes out over the new connection. If the broker refuses it (twice: a TLS or CONNACK
  refusal) or has not accepted it within ``trial_s``, the staged pair is discarded, the session
  goes back to the old pair and the command is refused (fail closed).

Both are operator commands like any other: signed, expiring, encrypted, replay-checked
(:mod:`agent.commands`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from agent.commands import Command, CommandRejectedError, Handler, Outcome
from contract.commands import INSTALL_CERT, RENEW_CERT
from contract.errors import ConfigError, ProtocolViolationError
from provisioning.unit_renewal import CertInfo, ClientCertFiles

logger = logging.getLogger(__name__)

TRIAL_S: Final = 30.0
"""How long the broker has to accept the new certificate before the old pair is used again."""
MAX_CERT_BYTES: Final = 16 * 1024

Reconnect = Callable[[Path, Path, float], bool]
"""Restart the MQTT session with (certificate, key); True once the broker accepted it."""


class CertRenewal:
    """The ``renew_cert`` and ``install_cert`` handlers. Constructor only stores."""

    def __init__(
        self,
        device_id: str,
        files: ClientCertFiles,
        reconnect: Reconnect,
        use_files: Callable[[Path, Path], None],
        *,
        trial_s: float = TRIAL_S,
    ) -> None:
        self._device = device_id
        self._files = files
        self._reconnect = reconnect
        self._use_files = use_files
        self._trial_s = trial_s

    def handlers(self) -> Mapping[str, Handler]:
        return {RENEW_CERT: self.renew, INSTALL_CERT: self.install}

    def current(self) -> CertInfo | None:
        """The certificate in use (for health); None if it cannot be read."""
        try:
            return self._files.current()
        except (OSError, ValueError):
            return None

    def renew(self, command: Command) -> Outcome:
        if command.args:
            raise CommandRejectedError("renew_cert takes no arguments")
        current = self._files.current()
        csr = self._files.stage_key(self._device)
        logger.info("certificate renewal: new key staged, CSR sent (command %s)", command.id)
        return Outcome(
            "ok: key staged",
            {"csr": csr, "serial": current.serial, "not_after": current.not_after},
        )

    def install(self, command: Command) -> Outcome:
        cert = command.args.get("cert")
        if not isinstance(cert, bytes) or not 0 < len(cert) <= MAX_CERT_BYTES:
            raise CommandRejectedError("install_cert needs args.cert: a PEM certificate (bytes)")
        files = self._files
        try:
            info = files.stage_cert(cert, self._device)
        except ProtocolViolationError as exc:
            logger.warning("certificate renewal: %s", exc)
            raise CommandRejectedError(str(exc)) from None
        old = files.current()
        try:
            accepted = self._reconnect(files.next_cert, files.next_key, self._trial_s)
        except ConfigError as exc:  # the pair does not load: nothing was disconnected
            files.discard()
            raise CommandRejectedError(f"the new certificate does not load: {exc}") from None
        if not accepted:
            files.discard()
            back = self._reconnect(files.cert, files.key, self._trial_s)
            logger.error(
                "certificate renewal: the broker did not accept certificate %s (refused, or no "
                "answer within %.0f s); kept certificate %s (%s)",
                info.serial,
                self._trial_s,
                old.serial,
                "reconnected" if back else "reconnecting",
            )
            raise CommandRejectedError(
                "the broker did not accept the new certificate (refused, or no answer within "
                f"{self._trial_s:.0f} s); the old one ({old.serial}) stays in use"
            )
        files.promote()
        self._use_files(files.cert, files.key)
        logger.info(
            "certificate renewal: connected with certificate %s (until %d); certificate %s and "
            "its key are gone",
            info.serial,
            info.not_after,
            old.serial,
        )
        return Outcome(
            f"ok: connected with certificate {info.serial}",
            {"serial": info.serial, "not_after": info.not_after},
        )
