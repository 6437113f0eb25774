"""The hashes a unit reports about the configuration it runs (health ``config``): of the whole
validated config, and of the ``remote.toml`` overlay that ``set_config`` commands control, per
key. The hashing itself (secrets scrubbed, canonical CBOR) is :mod:`contract.confighash`, which
the dashboard uses too."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.config.sections import AgentConfig
from contract.confighash import ConfigDigest, digest


def config_digest(config: AgentConfig, overlay: Mapping[str, Any]) -> ConfigDigest:
    """``config`` as a mapping (every section, defaults included) and ``overlay`` (the
    ``remote.toml`` mapping merged into it), hashed."""
    return digest(dataclasses.asdict(config), overlay)
