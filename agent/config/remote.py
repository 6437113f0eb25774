"""Changes made by signed ``set_config`` commands: kept in ``remote.toml`` in the state directory
and merged over the file at every start (not [mqtt] or [outbox]); an overlay that no longer
validates is moved aside so the unit still starts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agent.config.layers import load_layers, merge_mapping
from agent.config.sections import AgentConfig, config_from_mapping
from agent.config.toml import read_toml
from contract.errors import ConfigError

logger = logging.getLogger(__name__)

REMOTE_CONFIG_FILE = "remote.toml"


def remote_config_path(config: AgentConfig) -> Path:
    """Where changes made by ``set_config`` commands are kept: ``remote.toml`` in the state dir.

    ``/etc/camveil/camveil.toml`` stays the administrator's file: it is root-owned and read-only
    for the agent (``ProtectSystem=strict``, only ``/var/lib/camveil`` writable), so remote
    changes live beside the unit's other state and are merged on top of it at every start.
    """
    return config.mqtt.state_dir / REMOTE_CONFIG_FILE


def load_with_remote(
    path: Path, state_dir: Path | None = None
) -> tuple[AgentConfig, dict[str, Any], dict[str, Any]]:
    """The config file (over the provisioned settings) with the remote overlay merged on top
    (when ``[mqtt]`` is enabled).

    Returns the validated config, the base mapping (provisioned settings and file) and the
    overlay's mapping. An overlay that no longer validates (e.g. after a software update) is moved
    aside to ``remote.toml.rejected`` and logged, so the unit still starts (and stays reachable)
    with the file's own settings.
    """
    loaded = load_layers(path, state_dir)
    config, base = loaded.config, loaded.base
    overlay_path = remote_config_path(config)
    if not config.mqtt.enabled or not overlay_path.exists():
        return config, base, {}
    overlay = read_toml(overlay_path)
    try:
        merged = config_from_mapping(merge_mapping(base, overlay))
        if (merged.mqtt, merged.outbox) != (config.mqtt, config.outbox):
            raise ConfigError("it may not change [mqtt] or [outbox]")
    except ConfigError as exc:
        aside = overlay_path.with_name(overlay_path.name + ".rejected")
        overlay_path.replace(aside)
        logger.error("remote config %s ignored (moved to %s): %s", overlay_path, aside, exc)
        return config, base, {}
    return merged, base, overlay
