"""Typed configuration, read once at start from TOML, validated with errors that name the key.

Every section is a frozen dataclass whose fields are documented where they are declared;
:func:`from_mapping` turns a TOML table into one, refusing unknown keys and wrong types with a
:class:`~contract.errors.ConfigError` such as ``[detector] threads = "two": expected an integer``.

Where a setting comes from, lowest first (each layer replaces single keys of the one below)::

    defaults (the dataclasses below)
    provisioned settings   the ``settings`` of the bundle in <state_dir>/provisioned/bundle.cbor:
                           [camera] kind, source and [mqtt] enabled, chosen at the station
    the config file        /etc/camveil/camveil.toml, the operator's: it always wins
    remote.toml            changes made by signed ``set_config`` commands (not [mqtt]/[outbox])

So a unit installed from the template (which leaves those keys unset) and provisioned publishes
from its first boot, and an operator who writes a key in the file overrides the station.

The package, by job:

- :mod:`agent.config.sections`: the sections (:class:`AgentConfig` and the tables it holds);
- :mod:`agent.config.validate`: a TOML table into a dataclass, errors naming the key;
- :mod:`agent.config.layers`: the provisioned settings and the file merged and validated;
- :mod:`agent.config.remote`: the ``set_config`` overlay (``remote.toml``);
- :mod:`agent.config.digest`: the hashes of the running config reported in health;
- :mod:`agent.config.toml`: reading, writing and replacing TOML files.
"""

from agent.config.digest import config_digest
from agent.config.layers import (
    LoadedConfig,
    Provisioned,
    load_config,
    load_layers,
    merge_mapping,
    read_provisioned,
)
from agent.config.remote import REMOTE_CONFIG_FILE, load_with_remote, remote_config_path
from agent.config.sections import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    EventsConfig,
    MqttConfig,
    OutboxConfig,
    OutputConfig,
    ZoneConfig,
    config_from_mapping,
)
from agent.config.toml import dump_toml, read_toml, write_config_atomic
from agent.config.validate import from_mapping

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "REMOTE_CONFIG_FILE",
    "AgentConfig",
    "EventsConfig",
    "LoadedConfig",
    "MqttConfig",
    "OutboxConfig",
    "OutputConfig",
    "Provisioned",
    "ZoneConfig",
    "config_digest",
    "config_from_mapping",
    "dump_toml",
    "from_mapping",
    "load_config",
    "load_layers",
    "load_with_remote",
    "merge_mapping",
    "read_provisioned",
    "read_toml",
    "remote_config_path",
    "write_config_atomic",
]
