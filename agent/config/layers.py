"""Where the agent's settings come from, lowest first (each layer replaces single keys of the one
below; the order is drawn in :mod:`agent.config`): the provisioned settings of the bundle, the
config file over them, validated into an :class:`~agent.config.AgentConfig`. The remote overlay
on top is :mod:`agent.config.remote`."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from agent.config.sections import AgentConfig, config_from_mapping
from agent.config.toml import read_toml
from contract.errors import ConfigError, ProtocolViolationError
from contract.statedir import (
    BUNDLE_FILE,
    DEFAULT_STATE_DIR,
    PROVISIONED,
    PROVISIONED_SETTINGS,
    Bundle,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Provisioned:
    """The settings the station put in this unit's bundle (the layers: :mod:`agent.config`)."""

    path: Path
    """``<state_dir>/provisioned/bundle.cbor``."""
    present: bool
    """The unit is provisioned (the bundle exists), whether or not it carries settings."""
    settings: dict[str, dict[str, Any]]
    """``{section: {key: value}}``; empty when not provisioned or for a bundle from before
    first-boot settings."""


def read_provisioned(state_dir: Path) -> Provisioned:
    """The provisioned settings in ``state_dir`` (nothing if the unit is not provisioned).

    Keys this version does not know (a newer station's) are ignored with a warning. A bundle
    that cannot be read or decoded is a ConfigError that names the file and the fix."""
    path = Path(state_dir) / PROVISIONED / BUNDLE_FILE
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return Provisioned(path, False, {})
    except OSError as exc:
        raise ConfigError(
            f"cannot read the provisioned settings in {path}: {exc.strerror or exc}; run as the "
            "unit's user (sudo -u camveil), or give another state dir ([mqtt] state_dir)"
        ) from None
    try:
        settings = Bundle.decode(data).settings
    except ProtocolViolationError as exc:
        raise ConfigError(f"{path}: {exc}; factory-reset the unit and provision it again") from None
    known: dict[str, dict[str, Any]] = {}
    ignored = []
    for section, table in settings.items():
        for key, value in table.items():
            if key in PROVISIONED_SETTINGS.get(section, {}):
                known.setdefault(section, {})[key] = value
            else:
                ignored.append(f"{section}.{key}")
    if ignored:
        logger.warning(
            "%s: provisioned setting(s) %s unknown to this camveil version: ignored",
            path,
            ", ".join(sorted(ignored)),
        )
    return Provisioned(path, True, known)


@dataclasses.dataclass(frozen=True)
class LoadedConfig:
    """A validated config and the layers it was built from."""

    config: AgentConfig
    file: dict[str, Any]
    """The config file's mapping (with a ``state_dir`` override applied)."""
    provisioned: Provisioned
    base: dict[str, Any]
    """The provisioned settings with the file merged on top: what remote changes apply to."""

    def set_in_file(self, section: str, key: str) -> bool:
        table = self.file.get(section)
        return isinstance(table, dict) and key in table


def load_layers(path: Path, state_dir: Path | None = None) -> LoadedConfig:
    """The config file over the provisioned settings, validated. ``state_dir`` replaces the
    file's ``[mqtt] state_dir`` (``camveil run --state-dir``). An error names the config file, or
    the bundle when only its settings make the config invalid (e.g. a camera kind this version
    does not have: setting the key in the file overrides it)."""
    file = read_toml(path)
    if state_dir is not None:
        file = merge_mapping(file, {"mqtt": {"state_dir": str(state_dir)}})
    mqtt = file.get("mqtt")
    where = mqtt.get("state_dir") if isinstance(mqtt, dict) else None
    provisioned = read_provisioned(Path(where) if isinstance(where, str) else DEFAULT_STATE_DIR)
    base = merge_mapping(provisioned.settings, file)
    try:
        config = config_from_mapping(base)
    except ConfigError as exc:
        own = _error_of(file) if provisioned.settings else exc
        if own is None:  # the file alone is fine: the station's settings do not fit
            raise ConfigError(
                f"{provisioned.path} (settings from provisioning): {exc}; set the key in {path} "
                "to override it, or provision the unit again"
            ) from None
        raise ConfigError(f"{path}: {own}") from None
    return LoadedConfig(config, file, provisioned, base)


def _error_of(data: dict[str, Any]) -> ConfigError | None:
    """What is wrong with ``data`` on its own (None: nothing)."""
    try:
        config_from_mapping(data)
    except ConfigError as exc:
        return exc
    return None


def load_config(path: Path, state_dir: Path | None = None) -> AgentConfig:
    """Read and validate the agent's TOML config over the provisioned settings
    (:func:`load_layers`); every error names the file, the key and the fix."""
    return load_layers(path, state_dir).config


def merge_mapping(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` merged in: tables recursively, everything else replaced."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_mapping(out[key], value)
        else:
            out[key] = value
    return out
