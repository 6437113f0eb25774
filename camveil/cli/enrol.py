"""`camveil enrol`: enrol a consenting subject on a unit, or remove one (operator, station).

    camveil enrol --station DIR --device ID --subject staff-0017 --consent-ref "form 2026-114" \\
        photo1.jpg photo2.jpg
    camveil enrol --station DIR --device ID --remove --subject staff-0017
    camveil enrol --check photo1.jpg photo2.jpg      # only detect, align and embed; send nothing

Each photo must show exactly one face (detector score >= 0.5, at least 40 px): anything else is
a one-line error naming the photo. Templates are computed here, at the station, with camveil's
own detector (CenterFace int8), the same landmark alignment and MobileFaceNet int8 model as the
unit (hash-checked; its sha256 travels with the templates, and a unit with another model
refuses them). They exist only in memory and inside a ``gallery_add`` command sealed with the
operator key to the unit's key, expiring after ``--expires`` seconds (docs/PROTOCOL.md,
"Enrolled verification"); nothing is written to disk. The unit's ack is printed as one JSON
line. Exit status: 0 accepted (or ``--check`` passed), 1 rejected, 2 timeout or usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from agent.vision.detection import Detection, Detector
from agent.vision.embedding import MODEL, EmbedderConfig, FaceEmbedder
from agent.vision.gallery import MAX_TEMPLATES, SUBJECT_ID, template_bytes
from contract.errors import ConfigError, InputFileError

MIN_SCORE = 0.5
MIN_FACE_PX = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--station", type=Path, help="station directory")
    where.add_argument("--pki", type=Path, help="a `camveil dev-pki` folder")
    parser.add_argument("--device", help="device id of the unit")
    parser.add_argument("--broker", help="mqtts://host:port (default: from the folder)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the ack")
    parser.add_argument("--expires", type=int, default=300, help="command lifetime in seconds")
    parser.add_argument("--id", dest="command_id", help="command id (default: generated)")
    parser.add_argument("--subject", help="opaque subject id (e.g. staff-0017), never a name")
    parser.add_argument(
        "--consent-ref",
        help="reference of the subject's recorded consent (required in jurisdiction mode)",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--remove", action="store_true", help="remove the subject instead")
    action.add_argument(
        "--check", action="store_true", help="only check the photos (one face each); send nothing"
    )
    parser.add_argument("photos", nargs="*", type=Path, help="enrolment photos (1-8)")


def load_photo(path: Path) -> npt.NDArray[np.uint8]:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise InputFileError(f"{path}: cannot read the photo ({exc})") from None


def the_face(detector: Detector, rgb: npt.NDArray[np.uint8], name: str) -> Detection:
    """The one clear face of an enrolment photo; InputFileError when there is none or more."""
    faces = [
        d
        for d in detector.detect(rgb)
        if d.kind == "face"
        and d.score >= MIN_SCORE
        and min(d.box.width, d.box.height) >= MIN_FACE_PX
    ]
    if len(faces) != 1:
        found = "no clear face" if not faces else f"{len(faces)} faces"
        raise InputFileError(
            f"{name}: {found} found; an enrolment photo must show exactly one face, frontal, "
            f"at least {MIN_FACE_PX} px"
        )
    return faces[0]


def compute_templates(
    photos: list[Path], *, models_dir: Path | None = None
) -> tuple[list[bytes], str]:
    """Templates of ``photos`` (one each, in order) and the sha256 of the model that made them."""
    from agent.enrolment import model_sha256
    from agent.vision.factory import DetectorConfig, build_detector
    from models import MODELS_DIR, verified_path

    if not 1 <= len(photos) <= MAX_TEMPLATES:
        raise ConfigError(f"give 1 to {MAX_TEMPLATES} enrolment photos, got {len(photos)}")
    folder = models_dir or MODELS_DIR
    detector = build_detector(DetectorConfig())
    embedder = FaceEmbedder(verified_path(MODEL, folder), EmbedderConfig()).load()
    out: list[bytes] = []
    for path in photos:
        rgb = load_photo(path)
        embedding = embedder.embed(rgb, the_face(detector, rgb, str(path)))
        out.append(template_bytes(embedding))
        embedding.wipe()
    return out, model_sha256(folder)


def gallery_add_args(
    subject: str, consent: str, templates: list[bytes], model: str
) -> dict[str, Any]:
    return {"subject": subject, "consent": consent, "model": model, "templates": templates}


def run(args: argparse.Namespace) -> int:
    if args.check:
        templates, model = compute_templates(list(args.photos))
        print(json.dumps({"photos": len(templates), "faces": len(templates), "model": model}))
        return 0
    subject = args.subject
    if not subject or not SUBJECT_ID.fullmatch(subject):
        raise ConfigError("--subject must be an opaque id of 1-64 of A-Z a-z 0-9 _ . : -")
    if args.device is None or (args.station is None and args.pki is None):
        raise ConfigError("--device and --station (or --pki) are needed to send")
    if not 1 <= args.expires <= 24 * 3600:
        raise ConfigError("--expires must be between 1 and 86400 seconds")
    if args.remove:
        if args.photos or args.consent_ref:
            raise ConfigError("--remove takes only --subject")
        name, cmd_args = "gallery_remove", {"subject": subject}
    else:
        if not args.consent_ref or not args.consent_ref.strip():
            raise ConfigError("--consent-ref TEXT is required: the reference of the consent record")
        templates, model = compute_templates(list(args.photos))
        name = "gallery_add"
        cmd_args = gallery_add_args(subject, args.consent_ref.strip(), templates, model)
    return send(args, name, cmd_args)


def send(args: argparse.Namespace, name: str, cmd_args: dict[str, Any]) -> int:
    from agent.unitstate import parse_broker_url
    from dashboard.command_client import load_dev_pki, load_station, new_command_id, send_command

    keys = load_station(args.station) if args.station is not None else load_dev_pki(args.pki)
    url = args.broker or keys.broker_url
    if url is None:
        raise ConfigError("no broker URL in the folder; pass --broker mqtts://host:port")
    broker = parse_broker_url(url)
    try:
        ack = send_command(
            keys,
            host=broker.host,
            port=broker.port,
            device_id=args.device,
            name=name,
            args=cmd_args,
            command_id=args.command_id or new_command_id(),
            expires_s=args.expires,
            timeout=args.timeout,
        )
    except TimeoutError as exc:
        print(f"camveil enrol: error: {exc} (broker {broker.host}:{broker.port})", file=sys.stderr)
        return 2
    line = {k: ack.get(k) for k in ("device", "seq", "ts", "boot", "type", "body")}
    print(json.dumps(line, sort_keys=True), flush=True)
    body = ack.get("body")
    return 0 if isinstance(body, dict) and body.get("status") == "accepted" else 1
