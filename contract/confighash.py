"""Hashes of a unit's configuration, computed the same way on the unit (which reports them in
its health events) and at the backend (which compares them with what its operators set): the
config drift check of the dashboard (docs/DASHBOARD.md, "Config drift"; docs/PROTOCOL.md).

Only hashes ever leave the unit, never a value, and secrets are scrubbed before hashing, so not
even a hash depends on them:

- in every string, the password of a URL (``rtsp://user:password@host/...``, also inside a
  GStreamer pipeline) is replaced by :data:`SCRUBBED`;
- the value of a key whose name says it is a secret (``password``, ``secret``, ``token``,
  ``credential`` in it) is replaced by :data:`SCRUBBED` as a whole.

So changing only a camera password changes no hash. Numbers are normalised (a float with an
integral value hashes as that integer: ``60`` and ``60.0`` are one setting); tuples are lists;
paths are their text. The canonical form is deterministic CBOR (RFC 8949 section 4.2).

- :func:`value_hash`: sha256 (hex) of one value;
- :func:`config_hash`: of a whole mapping (the unit's effective config);
- :func:`key_hashes`: a ``remote.toml``-style overlay as ``{"section.key": value_hash}``, one per
  leaf (tables are descended; anything else, a list of tables too, is one leaf, as
  :func:`merge_overlay` replaces it as a whole);
- :func:`keys_hash`: sha256 of those per-key hashes (the overlay's hash, or that of a subset).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Final

import cbor2

SCRUBBED: Final = "<secret>"
# The password runs to the authority's last "@" (as urllib.parse.urlsplit reads it), so a
# password holding an "@" is hidden whole, not cut at its first "@".
_URL_PASSWORD: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*):[^\s/]*@")
_SECRET_NAME: Final = re.compile(r"passw(or)?d|secret|token|credential", re.IGNORECASE)


@dataclass(frozen=True)
class ConfigDigest:
    """What a unit reports about its running configuration (health ``config``)."""

    effective: str
    """sha256 (hex) of the whole validated config the unit runs (:func:`config_hash`)."""
    remote: str
    """sha256 (hex) of its ``remote.toml`` overlay: :func:`keys_hash` of ``remote_keys``."""
    remote_keys: Mapping[str, str] = field(default_factory=dict)
    """``"section.key"`` -> :func:`value_hash` of every key ``set_config`` commands set."""


def scrub(value: Any, name: str = "") -> Any:
    """``value`` in plain types with secrets replaced and numbers normalised (see above)."""
    if name and _SECRET_NAME.search(name):
        return SCRUBBED
    if isinstance(value, Mapping):
        return {str(k): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\1:{SCRUBBED}@", value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _sha256(value: Any) -> str:
    return hashlib.sha256(cbor2.dumps(value, canonical=True)).hexdigest()


def value_hash(value: Any, name: str = "") -> str:
    """sha256 (hex) of the canonical CBOR of one scrubbed value (``name``: its key)."""
    return _sha256(scrub(value, name))


def config_hash(mapping: Mapping[str, Any]) -> str:
    """sha256 (hex) of a whole scrubbed config mapping."""
    return _sha256(scrub(mapping))


def flatten(overlay: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"detector": {"threads": 2}}`` -> ``{"detector.threads": 2}`` (tables descended)."""
    out: dict[str, Any] = {}
    for key, value in overlay.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def key_hashes(overlay: Mapping[str, Any]) -> dict[str, str]:
    """Every leaf of ``overlay`` -> its :func:`value_hash`."""
    return {
        path: value_hash(value, path.rsplit(".", 1)[-1]) for path, value in flatten(overlay).items()
    }


def keys_hash(hashes: Mapping[str, str]) -> str:
    """sha256 (hex) of the canonical CBOR of ``{"section.key": value hash}``."""
    return _sha256({str(k): str(v) for k, v in hashes.items()})


def merge_overlay(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``patch`` merged over ``base`` as the unit merges a ``set_config`` into ``remote.toml``:
    tables recursively, anything else replaced."""
    out = dict(base)
    for key, value in patch.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = merge_overlay(old, value)
        else:
            out[key] = value
    return out


def digest(effective: Mapping[str, Any], overlay: Mapping[str, Any]) -> ConfigDigest:
    """The :class:`ConfigDigest` of an effective config mapping and the overlay in it."""
    keys = key_hashes(overlay)
    return ConfigDigest(config_hash(effective), keys_hash(keys), keys)


def merge_key_hashes(base: Mapping[str, str], patch: Mapping[str, str]) -> dict[str, str]:
    """Per-key hashes of ``merge_overlay(a, b)`` from those of ``a`` and ``b``: a key of ``b``
    replaces the same key of ``a`` and any table it replaces (``x`` drops ``x.y``, and ``x.y``
    drops a leaf ``x``)."""
    out = {
        path: h
        for path, h in base.items()
        if not any(
            path == new or path.startswith(new + ".") or new.startswith(path + ".") for new in patch
        )
    }
    out.update(patch)
    return out
