"""Enrolled verification with real components: `camveil enrol`'s templates from real photos
(CenterFace int8 + FaceNet int8), delivered in a real sealed command to the unit's real command
processor, matched in the real pipeline; and end to end through the real daemon, outbox and
broker. Photos from PyPI packages only (tests/photos.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import numpy.typing as npt
import pytest
from harness import Harness
from PIL import Image

from agent.commands import CommandProcessor
from agent.enrolment import Enrolment
from agent.events import Event, EventBuilder, to_map
from agent.pipeline import Pipeline, PrivacyConfig
from agent.privacy.visitors import VisitorWindow
from agent.sequence import CountingSequence
from agent.stats import PipelineStats
from agent.vision.embedworker import open_embed_worker
from agent.vision.factory import DetectorConfig, build_detector
from agent.vision.gallery import GALLERY_FILE, EnrolmentConfig
from agent.vision.reid import ReidConfig, open_reid
from camveil.cli.enrol import compute_templates, gallery_add_args
from contract.commands import Ack, seal_command
from contract.envelope.keys import Identity, PeerKeys
from contract.errors import InputFileError
from contract.topics import command_topic
from hw.frame import Frame
from tests.photos import photo

W, H = 640, 480
ON: dict[str, Any] = {
    "enabled": True,
    "purpose": "integration test: staff door",
    "legal_basis": "explicit consent of the test subjects",
}


def plain(value: Any) -> Any:
    """A decoded message as plain dicts and lists (the listener hands out read-only views)."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def canvas(name: str | None, x: int) -> npt.NDArray[np.uint8]:
    """A grey 640x480 frame with ``name``'s photo (height 360) pasted at ``x``."""
    out = np.full((H, W, 3), 90, np.uint8)
    if name is not None:
        img = Image.fromarray(photo(name))
        img = img.resize((round(img.width * 360 / img.height), 360))
        px = np.asarray(img)[:, : W - x]
        out[60 : 60 + px.shape[0], x : x + px.shape[1]] = px
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("enrol-photos")
    for name in ("obama", "obama2", "obama3", "biden", "coffee", "astronaut"):
        Image.fromarray(photo(name)).save(d / f"{name}.png")
    pair = np.full((600, 1400, 3), 200, np.uint8)
    for i, name in enumerate(("obama", "biden")):
        img = Image.fromarray(photo(name))
        img = np.asarray(img.resize((round(img.width * 500 / img.height), 500)))[:, :650]
        pair[50:550, 700 * i : 700 * i + img.shape[1]] = img
    Image.fromarray(pair).save(d / "two.png")
    return d


@pytest.fixture(scope="module")
def obama_templates(photos: Path) -> tuple[list[bytes], str]:
    return compute_templates([photos / "obama.png", photos / "obama3.png"])


class Unit:
    """The unit's side without MQTT: identity, command processor, enrolment, events."""

    def __init__(self, tmp: Path, config: EnrolmentConfig) -> None:
        self.identity = Identity.generate("cv-enrol-0001")
        self.operator = Identity.generate("operator")
        self.builder = EventBuilder(self.identity.kid, "boot", CountingSequence())
        self.events: list[dict[str, Any]] = []
        self.acks: list[Ack] = []
        self.tmp = tmp
        self.enrolment = Enrolment(config, self.identity, tmp, self).open()
        self.processor = CommandProcessor(
            device=self.identity,
            operators=PeerKeys([self.operator.public()]),
            replay_path=tmp / "cmd-replay.cbor",
            handlers=self.enrolment.handlers(),
            send_ack=self.acks.append,
        )
        self.seq = int(time.time() * 1000)

    def emit(self, make: Callable[[EventBuilder], Event], captured_at: float | None = None) -> None:
        self.events.append(to_map(make(self.builder)))  # the real encoder refuses non-plain data

    def seal(self, name: str, args: dict[str, Any], operator: Identity | None = None) -> bytes:
        self.seq += 1
        return seal_command(
            name,
            command_id=f"c-{self.seq}",
            device=self.identity.public(),
            operator=operator or self.operator,
            seq=self.seq,
            expires_at=int(time.time()) + 60,
            args=args,
        ).data

    def send(self, payload: bytes) -> Ack:
        return self.processor.handle(command_topic(self.identity.kid), payload)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e["body"] for e in self.events if e["type"] == kind]


def test_enrolment_photos_need_exactly_one_face(photos: Path) -> None:
    templates, model = compute_templates([photos / "obama.png", photos / "astronaut.png"])
    assert len(templates) == 2 and all(len(t) == 2048 for t in templates)
    assert len(model) == 64
    with pytest.raises(InputFileError, match=r"coffee\.png: no clear face found"):
        compute_templates([photos / "coffee.png"])
    with pytest.raises(InputFileError, match=r"two\.png: 2 faces found"):
        compute_templates([photos / "two.png"])
    done = subprocess.run(
        [sys.executable, "-m", "camveil", "enrol", "--check", str(photos / "coffee.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "coffee.png: no clear face found" in done.stderr
    assert "Traceback" not in done.stderr


def run_frames(
    unit: Unit, scenes: list[tuple[str | None, int]], reid: ReidConfig | None = None
) -> tuple[PipelineStats, VisitorWindow | None]:
    """The scenes through the real pipeline with the enrolled matcher (and, with ``reid``, the
    re-identifier: both behind the one shared embedder); the last visitor window."""
    frames: Iterator[Frame] = iter(
        Frame(canvas(name, x), i, 1000.0 + i * 0.25, time.monotonic())
        for i, (name, x) in enumerate(scenes)
    )
    stats = PipelineStats()
    verifier = unit.enrolment.verifier(stats)
    assert verifier is not None
    reidentifier = open_reid(reid, stats) if reid is not None else None
    worker = open_embed_worker((verifier, reidentifier), stats)
    assert worker is not None and len(worker.clients) == (1 if reid is None else 2)
    with worker:
        pipe = Pipeline(
            lambda: next(frames),
            build_detector(DetectorConfig()),
            lambda _p: None,
            PrivacyConfig(),
            stats,
            faces=worker,
        )
        for _ in scenes:
            pipe.step()
            time.sleep(0.03)  # the worker keeps up, as it does at camera rate
        time.sleep(0.5)
        verifier.drain()
        window = reidentifier.flush() if reidentifier is not None else None
    return stats, window


def test_an_enrolled_face_matches_and_other_faces_do_not(
    tmp_path: Path, obama_templates: tuple[list[bytes], str]
) -> None:
    # another photo of the enrolled person (obama2) scores 0.62-0.66 against his enrolment
    # photos: above the jurisdiction floor 0.65 only just, so this unit runs at 0.6 outside
    # jurisdiction mode; test_daemon_* below keeps the default 0.70
    # (no cooldown: a false match of any other track would be a second event)
    cfg = EnrolmentConfig(
        **ON, jurisdiction_mode=False, threshold=0.6, refresh_frames=2, cooldown_s=0
    )
    unit = Unit(tmp_path, cfg)
    templates, model = obama_templates
    ack = unit.send(
        unit.seal("gallery_add", gallery_add_args("staff-0044", "form-44", templates, model))
    )
    assert ack.accepted, ack
    scenes: list[tuple[str | None, int]] = (
        [("biden", 100 + 4 * i) for i in range(8)]
        + [(None, 0)] * 12
        + [("obama2", 100 + 4 * i) for i in range(8)]
        + [(None, 0)] * 12
        + [("astronaut", 100 + 4 * i) for i in range(8)]
    )
    reid = ReidConfig(enabled=True, purpose="integration test: both on, one embedder")
    stats, window = run_frames(unit, scenes, reid)
    assert window is not None and window.unique == 3, (window, dict(stats.dropped))
    assert stats.snapshot()["latency"]["embed"]["n"] >= 3  # type: ignore[index]
    matches = unit.of("match")
    assert len(matches) == 1, (matches, dict(stats.dropped))
    assert matches[0]["subject"] == "staff-0044" and 0.6 <= matches[0]["score"] <= 1.0
    assert set(matches[0]) == {"subject", "score"}
    audits = unit.of("audit")
    assert [a["action"] for a in audits] == ["enrol", "match"]
    assert audits[0]["consent"] == "form-44" and audits[0]["subjects"] == 1
    assert not any(k.startswith(("verify_", "reid_")) for k in stats.dropped), stats.dropped


def test_gallery_commands_are_refused_when_off_over_the_cap_replayed_or_forged(
    tmp_path: Path, obama_templates: tuple[list[bytes], str], photos: Path
) -> None:
    templates, model = obama_templates
    add = gallery_add_args("staff-0044", "form-44", templates, model)

    (tmp_path / "off").mkdir()
    off = Unit(tmp_path / "off", EnrolmentConfig())
    ack = off.send(off.seal("gallery_add", add))
    assert not ack.accepted and "enrolled verification is off" in ack.reason
    assert off.of("audit")[0]["action"] == "refuse"
    assert not (tmp_path / "off" / GALLERY_FILE).exists()

    (tmp_path / "on").mkdir()
    unit = Unit(tmp_path / "on", EnrolmentConfig(**ON, max_subjects=1))
    first = unit.seal("gallery_add", add)
    assert unit.send(first).accepted
    biden, _ = compute_templates([photos / "biden.png"])
    ack = unit.send(
        unit.seal("gallery_add", gallery_add_args("staff-0045", "form-45", biden, model))
    )
    assert not ack.accepted and "gallery full (1 subjects)" in ack.reason
    no_consent = gallery_add_args("staff-0044", "", templates, model)
    ack = unit.send(unit.seal("gallery_add", no_consent))
    assert not ack.accepted and "consent reference is required" in ack.reason
    assert unit.send(first).reason == "replay"  # the same sealed command again
    intruder = Identity.generate("operator")  # claims the operator's kid, other key
    forged = unit.seal("gallery_remove", {"subject": "staff-0044"}, operator=intruder)
    assert not unit.send(forged).accepted
    assert unit.enrolment.gallery is not None and unit.enrolment.gallery.subjects() == [
        "staff-0044"
    ]
    assert [a["action"] for a in unit.of("audit")] == ["enrol", "refuse", "refuse"]

    ack = unit.send(unit.seal("gallery_remove", {"subject": "staff-0044"}))
    assert ack.accepted and unit.of("audit")[-1]["action"] == "remove"
    assert unit.enrolment.gallery.subjects() == []


def test_the_gallery_file_holds_no_template_in_the_clear(
    tmp_path: Path, obama_templates: tuple[list[bytes], str]
) -> None:
    templates, model = obama_templates
    unit = Unit(tmp_path, EnrolmentConfig(**ON))
    assert unit.send(
        unit.seal("gallery_add", gallery_add_args("staff-0044", "form-44", templates, model))
    ).accepted
    raw = (tmp_path / GALLERY_FILE).read_bytes()
    assert (tmp_path / GALLERY_FILE).stat().st_mode & 0o777 == 0o600
    for t in templates:
        v = np.frombuffer(t, "<f4")
        for dtype in ("<f4", ">f4", "<f2", ">f2", "<f8"):
            enc = v.astype(dtype).tobytes()
            assert enc[:16] not in raw and enc[-16:] not in raw
    assert b"staff-0044" not in raw and b"form-44" not in raw
    # and every event the unit built carries no template either
    for e in unit.events:
        blob = cbor2.dumps(e)
        assert not any(t[:16] in blob for t in templates)


def test_daemon_enrols_over_mqtt_matches_and_reports_through_the_outbox(
    harness: Harness, photos: Path
) -> None:
    """The real daemon on the harness's replay camera (the astronaut photo, 640x480), real
    mosquitto, real outbox and backend listener; the default threshold 0.70. Re-identification
    is on too: both share the daemon's one embedder."""
    harness.config_path.write_text(
        harness.config_path.read_text()
        + '\n[enrolment]\nenabled = true\npurpose = "integration test: staff door"\n'
        'legal_basis = "explicit consent of the test subject"\nrefresh_frames = 2\n'
        '\n[reid]\nenabled = true\npurpose = "integration test: both on, one embedder"\n'
    )
    harness.start_agent()
    templates, model = compute_templates([photos / "astronaut.png"])
    add = harness.command(
        "gallery_add",
        gallery_add_args("crew-0001", "consent-0001", templates, model),
        command_id="enrol-1",
    )
    harness.publish(add)
    assert harness.ack_for(add)["status"] == "accepted"
    match = harness.wait_for(lambda r: r.type == "match", timeout=40)
    assert match.message["body"]["subject"] == "crew-0001"
    assert 0.70 <= match.message["body"]["score"] <= 1.0
    harness.wait_for(lambda r: r.type == "audit" and r.message["body"]["action"] == "match")
    enrol = harness.wait_for(lambda r: r.type == "audit" and r.message["body"]["action"] == "enrol")
    assert enrol.message["body"]["cmd"] == "enrol-1"
    seen = len(harness.received)
    harness.publish(add)  # replayed: refused by the envelope layer, nothing changes
    replayed = harness.wait_for(
        lambda r: r.type == "cmd_ack" and r.message["body"]["cmd_seq"] == add.seq, after=seen
    )
    assert replayed.message["body"]["reason"] == "replay"
    harness.stop_agent()

    stored = [p.read_bytes() for p in sorted(harness.unit_dir.rglob("*")) if p.is_file()]
    assert (harness.unit_dir / GALLERY_FILE).is_file()
    published = [cbor2.dumps(plain(r.message)) for r in harness.received]
    for blob in [*stored, *published]:
        assert not any(t[:16] in blob or t[-16:] in blob for t in templates)


def test_camveil_enrol_sends_and_removes_through_the_real_cli(
    harness: Harness, photos: Path
) -> None:
    """`camveil enrol` as a subprocess with a dev-pki-shaped folder (test_cmd's layout)."""
    from test_cmd import _pki_folder

    harness.config_path.write_text(
        harness.config_path.read_text()
        + '\n[enrolment]\nenabled = true\npurpose = "integration test: staff door"\n'
        'legal_basis = "explicit consent of the test subject"\nmax_subjects = 1\n'
    )
    harness.start_agent()
    root = _pki_folder(harness)
    base = [sys.executable, "-m", "camveil", "enrol", "--pki", str(root), "--device"]
    base += [harness.device.kid, "--broker", f"mqtts://127.0.0.1:{harness.broker.port}"]

    def enrol(*argv: str) -> tuple[int, dict[str, Any], str]:
        done = subprocess.run(
            [*base, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        lines = done.stdout.strip().splitlines()
        return done.returncode, (json.loads(lines[-1]) if lines else {}), done.stderr

    rc, ack, err = enrol("--subject", "crew-0002", str(photos / "astronaut.png"))
    assert rc == 2 and "--consent-ref" in err and "Traceback" not in err  # refused locally
    rc, ack, err = enrol(
        "--subject", "crew-0002", "--consent-ref", "form-2", str(photos / "astronaut.png")
    )
    assert rc == 0, err
    assert ack["body"]["status"] == "accepted" and ack["body"]["reason"] == "ok: 1 subject(s)"
    rc, ack, err = enrol(
        "--subject", "crew-0003", "--consent-ref", "f-3", str(photos / "obama.png")
    )
    assert rc == 1 and "gallery full" in ack["body"]["reason"]
    rc, ack, err = enrol("--remove", "--subject", "crew-0002")
    assert rc == 0 and ack["body"]["reason"] == "ok: 0 subject(s)", err
    harness.wait_for(lambda r: r.type == "audit" and r.message["body"]["action"] == "remove")
