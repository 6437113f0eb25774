"""The configuration a ``set_config`` command asks for: which sections may change, the
``remote.toml`` overlay with the patch merged in, validated over the file (agent.config.remote
keeps it; the daemon swaps the frame path and persists it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.commands import CommandRejectedError
from agent.config import AgentConfig, config_from_mapping, load_with_remote, merge_mapping
from contract.commands import REMOTE_SECTIONS
from contract.errors import ConfigError


def remote_change(
    patch: object, config_path: Path | None, current: AgentConfig
) -> tuple[AgentConfig, dict[str, Any]]:
    """The new config and the overlay to persist for ``args.config`` = ``patch``.

    A patch that may not be applied raises CommandRejectedError (the ack says ``invalid``); a
    config file that can no longer be read raises its ConfigError (``failed``)."""
    if not isinstance(patch, Mapping) or not patch:
        raise CommandRejectedError("args.config must be a non-empty table of sections")
    bad = sorted(set(patch) - set(REMOTE_SECTIONS))
    if bad:
        raise CommandRejectedError(
            f"section(s) {', '.join(map(str, bad))} cannot be changed remotely "
            f"(allowed: {', '.join(REMOTE_SECTIONS)})"
        )
    if config_path is None:
        raise CommandRejectedError("the agent runs without a config file")
    _, base, overlay = load_with_remote(config_path, current.mqtt.state_dir)
    overlay = merge_mapping(overlay, plain(patch))
    try:
        new_config = config_from_mapping(merge_mapping(base, overlay))
    except ConfigError as exc:
        raise CommandRejectedError(str(exc)) from None
    if (new_config.mqtt, new_config.outbox) != (current.mqtt, current.outbox):
        raise CommandRejectedError("the change would alter [mqtt] or [outbox]")
    return new_config, overlay


def plain(value: Any) -> Any:
    """A decoded CBOR value as the TOML loader's types (tuples -> lists, mappings -> dicts)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
