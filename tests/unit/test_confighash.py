"""The config hashes a unit reports and the dashboard compares (contract.confighash,
agent.config.digest): canonical (key order, int/float, tuples), sensitive to every value, blind
to secrets, and the same whether computed from the unit's validated config or a plain mapping."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from agent.config import config_digest, config_from_mapping, dump_toml, read_toml
from contract.confighash import (
    SCRUBBED,
    config_hash,
    key_hashes,
    keys_hash,
    merge_key_hashes,
    merge_overlay,
    scrub,
    value_hash,
)

OVERLAY = {
    "detector": {"threads": 2, "scale": 0.5},
    "events": {"zones": [{"name": "door", "rect": [0, 0, 0.5, 1]}], "health_interval_s": 30},
}


def test_stable_across_key_order_and_number_forms() -> None:
    reordered = {
        "events": {
            "health_interval_s": 30.0,
            "zones": [{"rect": (0.0, 0, 0.5, 1.0), "name": "door"}],
        },
        "detector": {"scale": 0.5, "threads": 2},
    }
    assert config_hash(OVERLAY) == config_hash(reordered)
    assert key_hashes(OVERLAY) == key_hashes(reordered)
    assert keys_hash(key_hashes(OVERLAY)) == keys_hash(dict(reversed(key_hashes(OVERLAY).items())))
    # known answers (docs/PROTOCOL.md): sha256 of the deterministic CBOR, 2.0 hashed as 2
    assert value_hash(2.0) == value_hash(2) == hashlib.sha256(b"\x02").hexdigest()
    assert keys_hash({}) == hashlib.sha256(b"\xa0").hexdigest()
    assert keys_hash({"a.b": "x"}) == hashlib.sha256(bytes.fromhex("a163612e626178")).hexdigest()


def test_changes_when_any_value_changes() -> None:
    base = config_hash(OVERLAY)
    changed = [
        {**OVERLAY, "detector": {"threads": 3, "scale": 0.5}},
        {**OVERLAY, "detector": {"threads": 2, "scale": 0.25}},
        {**OVERLAY, "detector": {"threads": 2, "scale": 0.5, "tile": 0}},  # a key added
        {**OVERLAY, "events": {**OVERLAY["events"], "zones": []}},
        {**OVERLAY, "detector": {"threads": "2", "scale": 0.5}},  # a string is not a number
        {**OVERLAY, "detector": {"threads": True, "scale": 0.5}},  # nor a bool
    ]
    hashes = {config_hash(m) for m in changed}
    assert base not in hashes and len(hashes) == len(changed)
    assert key_hashes(changed[0])["detector.threads"] != key_hashes(OVERLAY)["detector.threads"]
    assert key_hashes(changed[0])["detector.scale"] == key_hashes(OVERLAY)["detector.scale"]


def test_secrets_are_never_hashed() -> None:
    one = {"camera": {"kind": "rtsp", "source": "rtsp://admin:hunter2@10.0.0.5:554/ch1"}}
    two = {"camera": {"kind": "rtsp", "source": "rtsp://admin:0ther-Pass@10.0.0.5:554/ch1"}}
    other_host = {"camera": {"kind": "rtsp", "source": "rtsp://admin:hunter2@10.0.0.6:554/ch1"}}
    assert config_hash(one) == config_hash(two)  # only the password differs
    assert key_hashes(one) == key_hashes(two)
    assert config_hash(one) != config_hash(other_host)  # the rest of the URL counts
    assert scrub(one)["camera"]["source"] == f"rtsp://admin:{SCRUBBED}@10.0.0.5:554/ch1"
    pipeline = "rtspsrc location=rtsps://u:pw@cam/x latency=0 ! fakesink"
    assert "pw" not in scrub(pipeline) and SCRUBBED in scrub(pipeline)
    assert scrub({"x": {"api_token": "abc", "password": 1, "note": "pw"}}) == {
        "x": {"api_token": SCRUBBED, "password": SCRUBBED, "note": "pw"}
    }
    assert key_hashes({"x": {"password": "a"}}) == key_hashes({"x": {"password": "b"}})


def test_the_unit_digest_of_a_real_config_ignores_the_camera_password(tmp_path: Path) -> None:
    def digest_of(source: str) -> tuple[str, str, dict[str, str]]:
        overlay = {"camera": {"kind": "rtsp", "source": source}, "detector": {"threads": 2}}
        config = config_from_mapping(overlay)
        d = config_digest(config, overlay)
        return d.effective, d.remote, dict(d.remote_keys)

    a = digest_of("rtsp://u:first@cam/1")
    assert a == digest_of("rtsp://u:second@cam/1")
    assert a[0] != digest_of("rtsp://u:first@cam/2")[0]
    default = config_digest(config_from_mapping({}), {})
    assert default.remote == keys_hash({}) and not default.remote_keys
    assert default.effective != a[0]
    # the overlay as the unit keeps it (remote.toml, written and read back) hashes the same
    path = tmp_path / "remote.toml"
    path.write_text(dump_toml(OVERLAY))
    assert key_hashes(read_toml(path)) == key_hashes(OVERLAY)


def test_the_effective_hash_covers_every_section() -> None:
    base = config_digest(config_from_mapping({}), {}).effective
    changes = [
        {"camera": {"fps": 5}},
        {"detector": {"threads": 2}},
        {"privacy": {"redact_person_heads": False}},
        {"output": {"video": True}},
        {"mqtt": {"keepalive_s": 40}},
        {"events": {"tamper_every": 0}},
        {"outbox": {"delete_on": "puback"}},
        {"reid": {"threads": 2}},
        {"enrolment": {"max_templates": 3}},
        {"status_led": {"name": "led0"}},
    ]
    assert {c for change in changes for c in change} == {
        f.name for f in dataclasses.fields(config_from_mapping({}))
    }
    hashes = {config_digest(config_from_mapping(c), {}).effective for c in changes}
    assert base not in hashes and len(hashes) == len(changes)


def test_overlay_merging_as_the_unit_does() -> None:
    first = {"detector": {"threads": 2}, "events": {"tamper_every": 3}}
    second = {"detector": {"threads": 4, "scale": 0.5}}
    merged = merge_overlay(first, second)
    assert merged == {"detector": {"threads": 4, "scale": 0.5}, "events": {"tamper_every": 3}}
    assert merge_key_hashes(key_hashes(first), key_hashes(second)) == key_hashes(merged)
    # a leaf replacing a table (and back) drops what it replaced
    assert merge_key_hashes({"a.b": "1", "a.c": "2"}, {"a": "3"}) == {"a": "3"}
    assert merge_key_hashes({"a": "3"}, {"a.b": "1"}) == {"a.b": "1"}


def test_a_password_holding_an_at_sign_is_hidden_whole() -> None:
    text = "rtsp://admin:p@ss@10.0.0.5:554/ch1 and rtsp://viewer:x@cam/2"
    assert scrub(text) == (
        f"rtsp://admin:{SCRUBBED}@10.0.0.5:554/ch1 and rtsp://viewer:{SCRUBBED}@cam/2"
    )
