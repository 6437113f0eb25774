"""The enrolled gallery: config rules, encryption at rest, caps, consent, and the events it
produces (pure: random unit vectors stand in for templates; tests/integration/test_enrolment.py
uses the real model and photos)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.config import config_from_mapping
from agent.events import AuditAction, EventBuilder, to_map
from agent.sequence import CountingSequence
from agent.vision.embedding import DIMENSIONS, Embedding
from agent.vision.gallery import (
    DEFAULT_THRESHOLD,
    EnrolmentConfig,
    Gallery,
    GalleryRefusedError,
    parse_template,
    template_bytes,
)
from contract.commands import COMMANDS, REMOTE_SECTIONS
from contract.envelope.keys import Identity
from contract.errors import ConfigError, KeyFileError, UnredactedDataError

MODEL = "ab" * 32
ON = EnrolmentConfig(
    enabled=True, purpose="door access for staff", legal_basis="explicit consent, art. 9(2)(a)"
)


def unit_vectors(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    v = np.random.default_rng(seed).standard_normal((n, DIMENSIONS)).astype(np.float32)
    out: npt.NDArray[np.float32] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


@pytest.fixture
def identity() -> Identity:
    return Identity.generate("cv-unit-0001")


def test_config_is_off_by_default_and_needs_purpose_and_legal_basis() -> None:
    assert not EnrolmentConfig().enabled
    assert config_from_mapping({}).enrolment == EnrolmentConfig()
    with pytest.raises(ConfigError, match="purpose"):
        EnrolmentConfig(enabled=True, legal_basis="explicit consent")
    with pytest.raises(ConfigError, match="legal_basis"):
        EnrolmentConfig(enabled=True, purpose="door access for staff", legal_basis="  ok ")
    cfg = config_from_mapping({"enrolment": {"enabled": True, "purpose": "door access for staff",
                                             "legal_basis": "explicit consent"}})  # fmt: skip
    assert cfg.enrolment.enabled and cfg.enrolment.jurisdiction_mode
    assert cfg.enrolment.threshold == DEFAULT_THRESHOLD == 0.62


def test_jurisdiction_mode_caps_the_gallery_and_the_threshold() -> None:
    with pytest.raises(ConfigError, match="max_subjects must be between 1 and 50"):
        EnrolmentConfig(max_subjects=51)
    with pytest.raises(ConfigError, match="threshold"):
        EnrolmentConfig(threshold=0.55)  # below the jurisdiction floor 0.57
    assert EnrolmentConfig(threshold=0.57)
    assert EnrolmentConfig(jurisdiction_mode=False, max_subjects=500, threshold=0.55)


def test_enrolment_cannot_be_changed_by_remote_set_config() -> None:
    assert "enrolment" not in REMOTE_SECTIONS
    assert {"gallery_add", "gallery_remove"} <= set(COMMANDS)


def test_templates_round_trip_and_bad_ones_are_refused() -> None:
    e = Embedding(unit_vectors(1)[0])
    assert np.allclose(parse_template(template_bytes(e)), e.vector)
    for bad in (b"x" * 2048, b"\0" * 2048, template_bytes(e)[:-4], "text", None):
        with pytest.raises(GalleryRefusedError):
            parse_template(bad)
    nan = np.full(DIMENSIONS, np.nan, "<f4").tobytes()
    with pytest.raises(GalleryRefusedError):
        parse_template(nan)


def test_gallery_is_encrypted_at_rest_and_opens_only_with_the_units_key(
    tmp_path: Path, identity: Identity
) -> None:
    path = tmp_path / "gallery.sealed"
    vectors = unit_vectors(3)
    g = Gallery(path, identity, MODEL)
    assert g.add("staff-0001", "form 2026-114", list(vectors[:2]), ON, MODEL) == 1
    assert g.add("staff-0002", "form 2026-115", [vectors[2]], ON, MODEL) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    for v in vectors:  # no template in the clear, in any float encoding, nor a prefix of one
        for dtype in ("<f4", ">f4", "<f2", "<f8"):
            assert v.astype(dtype).tobytes()[:32] not in raw
    assert b"staff-0001" not in raw and b"form 2026" not in raw

    again = Gallery(path, identity, MODEL).load()
    assert again.subjects() == ["staff-0001", "staff-0002"]
    best = again.best(Embedding(vectors[1]))
    assert best is not None and best[0] == "staff-0001" and best[1] == pytest.approx(1.0)

    with pytest.raises(KeyFileError, match="does not open"):  # another unit's key
        Gallery(path, Identity.generate("cv-unit-0001"), MODEL).load()
    with pytest.raises(KeyFileError, match="another embedding model"):
        Gallery(path, identity, "cd" * 32).load()
    tampered = bytearray(raw)
    tampered[40] ^= 1
    path.write_bytes(bytes(tampered))
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="does not open"):
        Gallery(path, identity, MODEL).load()


def test_gallery_refuses_over_the_cap_without_consent_and_other_models(
    tmp_path: Path, identity: Identity
) -> None:
    cfg = EnrolmentConfig(
        enabled=True, purpose="door access", legal_basis="explicit consent", max_subjects=2
    )
    g = Gallery(tmp_path / "g", identity, MODEL)
    vs = unit_vectors(4)
    g.add("a", "consent-1", [vs[0]], cfg, MODEL)
    g.add("b", "consent-2", [vs[1]], cfg, MODEL)
    with pytest.raises(GalleryRefusedError, match="gallery full"):
        g.add("c", "consent-3", [vs[2]], cfg, MODEL)
    assert g.add("a", "consent-1b", [vs[3]], cfg, MODEL) == 2  # re-enrolling is not growing
    with pytest.raises(GalleryRefusedError, match="consent reference is required"):
        g.add("b", "  ", [vs[2]], cfg, MODEL)
    with pytest.raises(GalleryRefusedError, match="another model"):
        g.add("b", "consent-2", [vs[2]], cfg, "cd" * 32)
    with pytest.raises(GalleryRefusedError, match="opaque id"):
        g.add("Jane Doe", "consent-2", [vs[2]], cfg, MODEL)
    with pytest.raises(GalleryRefusedError, match="templates"):
        g.add("b", "consent-2", list(unit_vectors(6)), cfg, MODEL)
    free = EnrolmentConfig(jurisdiction_mode=False)
    assert g.remove("b") and not g.remove("b")
    assert g.add("b", "", [vs[2]], free, MODEL) == 2  # consent optional outside the mode
    assert Gallery(tmp_path / "g", identity, MODEL).load().subjects() == ["a", "b"]


def test_match_and_audit_events_carry_ids_and_scores_only() -> None:
    b = EventBuilder("cv-unit-0001", "boot", CountingSequence())
    m = to_map(b.match("staff-0001", 0.812345))
    assert m["type"] == "match" and m["body"] == {"subject": "staff-0001", "score": 0.8123}
    a = to_map(
        b.audit(
            AuditAction.ENROL,
            "staff-0001",
            command="c-1",
            operator="operator",
            consent="form 2026-114",
            subjects=3,
        )
    )
    assert a["type"] == "audit"
    assert a["body"] == {
        "action": "enrol",
        "subject": "staff-0001",
        "cmd": "c-1",
        "operator": "operator",
        "consent": "form 2026-114",
        "subjects": 3,
    }
    r = to_map(b.audit(AuditAction.REFUSE, None, command="c-2", reason="gallery full"))
    assert r["body"] == {"action": "refuse", "cmd": "c-2", "reason": "gallery full"}
    with pytest.raises(UnredactedDataError):  # an embedding cannot ride in a score field
        to_map(type(b.match("s", 0.9))(b.header(), "s", Embedding(unit_vectors(1)[0])))  # type: ignore[arg-type]


def test_match_and_audit_events_validate_against_the_cddl() -> None:
    import cbor2
    import pycddl  # type: ignore[import-untyped]

    from agent.events import to_cbor

    schema = pycddl.Schema((Path(__file__).resolve().parents[2] / "docs/events.cddl").read_text())
    b = EventBuilder("cv-unit-0001", "0123456789abcdef", CountingSequence())
    events = [
        b.match("staff-0001", 0.74),
        b.audit(
            AuditAction.ENROL, "staff-0001", command="c-1", operator="op", consent="f-1", subjects=1
        ),
        b.audit(AuditAction.REMOVE, "staff-0001", command="c-2", operator="op", subjects=0),
        b.audit(AuditAction.REFUSE, None, command="c-3", operator="op", reason="gallery full"),
        b.audit(AuditAction.MATCH, "staff-0001", score=0.74),
    ]
    for event in events:
        schema.validate_cbor(to_cbor(event))
    bad = to_map(b.match("staff-0001", 0.74))
    bad["body"]["embedding"] = b"\0" * 2048
    with pytest.raises(pycddl.ValidationError):
        schema.validate_cbor(cbor2.dumps(bad))
