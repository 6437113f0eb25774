"""The command wire format both sides share (docs/PROTOCOL.md, "Commands and acknowledgements"):
what an operator seals to a unit on ``camveil/v1/<device>/cmd`` and what the unit's ack on
``.../cmd/ack`` carries. The unit's processor is :mod:`agent.commands`; the operator's client is
:mod:`dashboard.command_client`.

Command plaintext, besides the envelope's own keys::

    {"id": tstr,            ; the operator's command id (1-64 of A-Z a-z 0-9 _ . : / -)
     "cmd": tstr,           ; one of COMMANDS
     ? "args": {* tstr => any}}

Ack plaintext: an event header with ``"type": ACK_TYPE`` and :meth:`Ack.body` as ``"body"``.

Certificate renewal (docs/PROTOCOL.md, "Certificate renewal"): ``renew_cert`` (no args) makes the
unit stage a new TLS key and answer with ``"result": {"csr": bstr (PEM), "serial": tstr (hex
serial of the certificate in use), "not_after": int}``; ``install_cert`` (``args = {"cert":
bstr}``, the PEM certificate the station issued for that CSR) answers, once the broker accepted
the new certificate, with ``"result": {"serial": tstr, "not_after": int}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from contract.envelope.keys import Identity, PublicIdentity
from contract.envelope.seal import SealedEnvelope, seal
from contract.topics import command_topic

RENEW_CERT: Final = "renew_cert"
INSTALL_CERT: Final = "install_cert"
COMMANDS: Final = (
    "snapshot",
    "set_config",
    "restart_pipeline",
    "gallery_add",
    "gallery_remove",
    RENEW_CERT,
    INSTALL_CERT,
)
"""``gallery_add`` / ``gallery_remove``: enrolled verification (agent.enrolment documents the
args; refused unless the unit's ``[enrolment]`` is on, which ``set_config`` cannot change).
``renew_cert`` / ``install_cert``: client-certificate renewal (agent.certrenewal)."""
MAX_RESULT_BYTES: Final = 8192
"""An ack's ``result`` (a CSR, a serial) stays well under this; the unit refuses to send more."""
REMOTE_SECTIONS: Final = ("camera", "detector", "privacy", "events")
"""Sections a ``set_config`` command may change. ``mqtt`` and ``outbox`` are left out on purpose:
a wrong broker or state directory sent remotely would cut the unit off for good."""
ACK_TYPE: Final = "cmd_ack"
COMMAND_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}")
"""What a command id may be (matched in full)."""
SUBJECT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
"""What an enrolled subject's id (``args.subject`` of ``gallery_add`` / ``gallery_remove``) may
be, matched in full: an opaque reference (e.g. ``staff-0017``), never a name."""
MAX_REASON_CHARS: Final = 200


@dataclass(frozen=True)
class Ack:
    """The unit's answer to one command (its ``body`` is what goes on the wire)."""

    command_id: str | None
    command_seq: int | None
    accepted: bool
    reason: str
    operator: str | None = None
    """Kid of the operator the ack is sealed to: the command's signer, or for a command that
    did not open the (unauthenticated) kid it names; None: the unit's first operator."""
    result: Mapping[str, Any] | None = None
    """What an accepted command hands back (``renew_cert``: the CSR); absent from the wire when
    None."""

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.command_id,
            "cmd_seq": self.command_seq,
            "status": "accepted" if self.accepted else "rejected",
            "reason": self.reason[:MAX_REASON_CHARS],
        }
        if self.result is not None:
            body["result"] = dict(self.result)
        return body


def ack_answers(body: Any, command_id: str, seq: int) -> bool:
    """Whether an ack ``body`` answers the command ``command_id`` sent with ``seq``: by id, or,
    for a command that did not open (acked with id null), by its (unauthenticated) seq."""
    if not isinstance(body, Mapping):
        return False
    if body.get("id") == command_id:
        return True
    return body.get("id") is None and body.get("cmd_seq") == seq


def seal_command(
    name: str,
    *,
    command_id: str,
    device: PublicIdentity,
    operator: Identity,
    seq: int,
    expires_at: int,
    args: Mapping[str, Any] | None = None,
) -> SealedEnvelope:
    """The operator side: a command for ``device`` (tools, tests, the dashboard)."""
    message: dict[str, Any] = {"id": command_id, "cmd": name}
    if args is not None:
        message["args"] = dict(args)
    return seal(
        message,
        sender=operator,
        recipient=device,
        topic=command_topic(device.kid),
        seq=seq,
        device=device.kid,
        expires_at=expires_at,
    )
