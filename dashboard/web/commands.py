"""Commands from the page: validated, recorded, audited, then sealed and sent one at a time.

:class:`CommandDesk` checks a command before anything leaves (the name; for ``set_config`` the
``section.key=value`` lines: :func:`dashboard.command_client.parse_config_pairs`, then the
unit's own config validator, injected by the command line because the dashboard may not import
the unit's code; for ``gallery_remove`` the subject id, :data:`contract.commands.SUBJECT_ID`),
records it in the ``commands`` table as ``sent``, appends it to the audit log,
and hands it to a worker thread. The worker sends through a :class:`CommandSender` (the real
one seals with the operator key and waits for the unit's ack over MQTT,
:class:`StationSender`) and records ``accepted``, ``rejected`` (with the unit's reason),
``timeout`` or ``error``. An accepted ``set_config`` is also folded into the keys set from
this dashboard (:func:`dashboard.drift.record_set`), against which the unit's reported config
hashes are judged.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from contract.commands import SUBJECT_ID
from contract.confighash import scrub
from contract.errors import CamveilError, ConfigError
from dashboard import audit, drift
from dashboard.command_client import (
    OperatorKeys,
    new_command_id,
    parse_config_pairs,
    send_command,
)
from dashboard.store import Store

logger = logging.getLogger(__name__)

COMMANDS: Final = {
    "snapshot": "request a snapshot",
    "restart_pipeline": "restart the pipeline",
    "set_config": "change the configuration",
    "gallery_remove": "erase an enrolled subject",
}

ConfigValidator = Callable[[Mapping[str, Any]], None]
"""Raises ConfigError for a ``{section: {key: value}}`` patch the unit would refuse."""


class CommandSender(Protocol):
    def send(
        self, device: str, name: str, args: Mapping[str, Any] | None, command_id: str
    ) -> Mapping[str, Any]:
        """Seal, publish, wait: the ack's plaintext (``body`` with ``status`` and ``reason``;
        the unit's ``boot``, ``seq`` and ``ts``); TimeoutError when no ack came."""
        ...


class StationSender:
    """The real sender: the operator's keys and certificate (a station or dev-pki folder)."""

    def __init__(self, keys: OperatorKeys, host: str, port: int, timeout_s: float = 15.0) -> None:
        self._keys = keys
        self._host = host
        self._port = port
        self._timeout = timeout_s

    def send(
        self, device: str, name: str, args: Mapping[str, Any] | None, command_id: str
    ) -> Mapping[str, Any]:
        return send_command(
            self._keys,
            host=self._host,
            port=self._port,
            device_id=device,
            name=name,
            args=args,
            command_id=command_id,
            expires_s=300,
            timeout=self._timeout,
        )


@dataclass(frozen=True)
class _Queued:
    id: str
    device: str
    name: str
    args: dict[str, Any] | None
    operator: str


@dataclass(frozen=True)
class Submitted:
    id: str
    device: str
    name: str


class CommandDesk:
    def __init__(
        self,
        store: Store,
        sender: CommandSender | None,
        validate_config: ConfigValidator | None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._validate = validate_config
        self._queue: queue.Queue[_Queued | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self._sender is not None

    def start(self) -> None:
        if self._sender is not None and self._thread is None:
            self._thread = threading.Thread(target=self._work, name="commands", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=30)

    def check(self, name: str, config_text: str = "", subject: str = "") -> dict[str, Any] | None:
        """The command's args, or ConfigError saying what is wrong (nothing is sent)."""
        if name not in COMMANDS:
            raise ConfigError(f"unknown command {name!r}")
        if name == "gallery_remove":
            subject = subject.strip()
            if not SUBJECT_ID.fullmatch(subject):
                raise ConfigError(
                    "a subject id is 1-64 letters, digits and _ . : - (the opaque id the "
                    "subject was enrolled with, e.g. staff-0017)"
                )
            return {"subject": subject}
        if name != "set_config":
            return None
        lines = [line.strip() for line in config_text.splitlines() if line.strip()]
        patch = parse_config_pairs(lines)
        if self._validate is None:
            raise ConfigError("this dashboard has no config validator; set-config is disabled")
        self._validate(patch)
        return {"config": patch}

    def submit(
        self, operator: str, device: str, name: str, config_text: str = "", subject: str = ""
    ) -> Submitted:
        """Validate, record, audit and queue one command; ConfigError when refused."""
        if self._sender is None:
            raise ConfigError("commands are disabled: the dashboard runs without operator keys")
        args = self.check(name, config_text, subject)
        command_id = new_command_id()
        # What is stored and audited has its secrets scrubbed (a camera password typed into a
        # set_config goes to the unit sealed, never into the dashboard's tables or audit log).
        args_text = json.dumps(scrub(args or {}), sort_keys=True, default=str)
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO commands (id, device, name, args, operator, sent_at, status) "
                "VALUES (?, ?, ?, ?, ?, ?, 'sent')",
                (command_id, device, name, args_text, operator, self._store.now()),
            )
        audit.append(self._store, operator, "command", f"{device} {name} {command_id} {args_text}")
        self._queue.put(_Queued(command_id, device, name, args, operator))
        return Submitted(command_id, device, name)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            status, reason, ack = self._send(item)
            now = self._store.now()
            with self._store.transaction() as conn:
                conn.execute(
                    "UPDATE commands SET status = ?, reason = ?, done_at = ? WHERE id = ?",
                    (status, reason, now, item.id),
                )
                patch = (item.args or {}).get("config")
                if item.name == "set_config" and status == "accepted" and isinstance(patch, dict):
                    drift.record_set(
                        conn, item.device, patch, command_id=item.id, operator=item.operator,
                        now=now, ack=ack,
                    )  # fmt: skip
            self._store.notify()

    def _send(self, item: _Queued) -> tuple[str, str, Mapping[str, Any]]:
        assert self._sender is not None
        try:
            ack = self._sender.send(item.device, item.name, item.args, item.id)
        except TimeoutError as exc:
            return "timeout", str(exc), {}
        except CamveilError as exc:
            return "error", str(exc), {}
        except Exception as exc:  # one failed send must not end the worker
            logger.exception("sending command %s to %s failed", item.id, item.device)
            return "error", type(exc).__name__, {}
        body = ack.get("body")
        body = body if isinstance(body, Mapping) else {}
        reason = str(body.get("reason", ""))
        return ("accepted" if body.get("status") == "accepted" else "rejected"), reason, ack
