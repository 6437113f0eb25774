"""Opt-in enrolled verification: a gallery of consenting subjects' face templates, encrypted at
rest on the unit, matched against faces in view.

Off by default (``[enrolment] enabled``, which also needs a ``purpose`` and a ``legal_basis``).
Templates are computed at the station from enrolment photos with the same int8 FaceNet model
(`camveil enrol`) and arrive only inside a signed, encrypted, expiring ``gallery_add`` command
(:mod:`agent.enrolment`); nothing on the unit makes a template from what the camera sees.

:class:`Gallery` holds the subjects in memory and in one file, ``gallery.sealed`` in the state
directory (mode 0600, replaced atomically by :func:`contract.files.write_atomic`)::

    b"CVG1" || nonce (24) || XSalsa20-Poly1305(key, canonical CBOR {
        "v": 1, "device": kid, "model": sha256 hex of the FaceNet model,
        "subjects": [{"id": tstr, "consent": tstr, "at": uint (Unix s),
                      "templates": [bstr (512 float32, little endian)]}]})

The key is ``HKDF-SHA256(ikm = the unit's Ed25519 seed, salt = "camveil gallery v1", info =
device id)``: the gallery opens only with the unit's own identity (``provisioned/identity.cbor``,
0600), and a copied file is noise anywhere else. A factory reset (new keys) makes it unreadable.

A jurisdiction mode (on by default) refuses one-to-many identification of the public: every
subject needs a consent reference, the gallery is capped at :data:`JURISDICTION_MAX_SUBJECTS`,
and the threshold may not go below 0.65 (a measured false-accept rate of 5.8e-5 per comparison).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cbor2
import numpy as np
import numpy.typing as npt
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from agent.vision.embedding import DIMENSIONS, Embedding
from contract.commands import SUBJECT_ID
from contract.envelope.cose import hkdf_sha256
from contract.envelope.keys import Identity
from contract.errors import ConfigError, KeyFileError
from contract.files import write_atomic

DEFAULT_THRESHOLD: Final = 0.70
"""Cosine similarity at or above which a face matches an enrolled template, chosen from measured
false-accept rates. FaceNet int8 on the dev verification images (docs/EMBEDDING.md), every pair
of the 1,583 LFW faces (844 people, the deepface folders left out since their ids are not
names), so 1,250,180 impostor comparisons, not only the 705 listed negative pairs:

    threshold   impostor pairs accepted   FAR / comparison   TAR (1,973 same-person pairs)
    0.57        854                       6.8e-4             84.5%
    0.65        72                        5.8e-5             68.7%
    0.70        12                        9.6e-6             52.9%

0.57, re-identification's threshold, has no false accept among the 705 listed negatives but is
far too loose here: a face is compared with every template in the gallery, so the false-match
rate per face seen is up to FAR x templates (50 subjects x 5 templates: 0.17 at 0.57, 2.4e-3 at
0.70). An enrolled person is seen in many frames and an unmatched track is tried again every
``refresh_frames``, which makes up for the per-photo TAR."""
JURISDICTION_MIN_THRESHOLD: Final = 0.65
"""In jurisdiction mode the threshold may not be set below this (FAR 5.8e-5 per comparison)."""
JURISDICTION_MAX_SUBJECTS: Final = 50
MAX_SUBJECTS: Final = 10_000
MAX_TEMPLATES: Final = 8
TEMPLATE_BYTES: Final = DIMENSIONS * 4
GALLERY_FILE: Final = "gallery.sealed"
_MAGIC: Final = b"CVG1"
_VERSION: Final = 1
MAX_CONSENT_CHARS: Final = 200


@dataclass(frozen=True)
class EnrolmentConfig:
    """``[enrolment]``: matching faces against a gallery of consenting enrolled subjects."""

    enabled: bool = False
    """Off by default. Matching faces against enrolled people is processing of biometric data
    for identification; switch it on only with a stated purpose and legal basis."""
    purpose: str = ""
    """Why faces are matched (e.g. "staff-only door: alert when an enrolled employee enters the
    server room"); required when enabled, logged at start."""
    legal_basis: str = ""
    """The legal basis of the processing (e.g. "explicit consent, GDPR art. 9(2)(a), consent
    forms kept by HR, DPIA 2026-07"); required when enabled, logged at start."""
    jurisdiction_mode: bool = True
    """Refuse one-to-many identification of the public: every enrolled subject needs a consent
    reference, the gallery holds at most 50 subjects and the threshold cannot go below 0.65.
    Turn off only where the law allows a larger or consent-less gallery."""
    max_subjects: int = JURISDICTION_MAX_SUBJECTS
    """Gallery cap; a ``gallery_add`` beyond it is refused (at most 50 in jurisdiction mode)."""
    max_templates: int = 5
    """Templates (enrolment photos) kept per subject (at most 8)."""
    threshold: float = DEFAULT_THRESHOLD
    """Cosine similarity needed for a match (see DEFAULT_THRESHOLD for the measured FAR)."""
    refresh_frames: int = 15
    """A track not matched yet is embedded again every this many frames."""
    cooldown_s: float = 60.0
    """At most one ``match`` event per subject in this many seconds of capture time."""
    min_face_px: int = 40
    """Faces smaller than this (box width or height, pixels) are not matched."""
    min_score: float = 0.5
    """Detections below this detector score are redacted but not matched."""
    queue_size: int = 4
    """Crops waiting for the embedder; when full, further crops are dropped
    (``verify_overload``). The embedder is shared with ``[reid]``: its queue takes the larger
    of the two sizes."""
    threads: int = 1
    """Interpreter threads of the embedder (shared with ``[reid]``: the larger count)."""

    def __post_init__(self) -> None:
        if self.enabled:
            for key in ("purpose", "legal_basis"):
                if len(getattr(self, key).strip()) < 8:
                    raise ConfigError(
                        f'[enrolment] enabled = true needs {key} = "...": say why faces are '
                        "matched and on which legal basis; both are logged at start"
                    )
        limit = JURISDICTION_MAX_SUBJECTS if self.jurisdiction_mode else MAX_SUBJECTS
        if not 1 <= self.max_subjects <= limit:
            raise ConfigError(
                f"[enrolment] max_subjects must be between 1 and {limit}"
                + (" in jurisdiction mode" if self.jurisdiction_mode else "")
            )
        if not 1 <= self.max_templates <= MAX_TEMPLATES:
            raise ConfigError(f"[enrolment] max_templates must be between 1 and {MAX_TEMPLATES}")
        low = JURISDICTION_MIN_THRESHOLD if self.jurisdiction_mode else 0.0
        if not low <= self.threshold < 1.0 or self.threshold <= 0.0:
            raise ConfigError(
                f"[enrolment] threshold must be in [{low}, 1) (cosine similarity; the "
                "measured false-accept rates are in agent/vision/gallery.py)"
            )
        if self.refresh_frames < 1 or self.min_face_px < 8 or self.cooldown_s < 0:
            raise ConfigError(
                "[enrolment] need refresh_frames >= 1, min_face_px >= 8, cooldown_s >= 0"
            )
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError("[enrolment] min_score must be between 0 and 1")
        if not 1 <= self.queue_size <= 64 or not 1 <= self.threads <= 64:
            raise ConfigError("[enrolment] need 1 <= queue_size <= 64 and 1 <= threads <= 64")


class GalleryRefusedError(ValueError):
    """A gallery change is refused; the message is the reason (sent in the command's ack)."""


# --- templates on the wire ------------------------------------------------------------------


def template_bytes(embedding: Embedding) -> bytes:
    """The one way an embedding becomes bytes: a station-side enrolment template, to be sealed
    at once into an encrypted ``gallery_add`` command (`camveil enrol`). Never used on the unit
    for faces it sees."""
    return embedding.vector.astype("<f4").tobytes()


def parse_template(data: object) -> npt.NDArray[np.float32]:
    """A template from a command: 512 finite little-endian float32 forming a unit vector."""
    if not isinstance(data, bytes) or len(data) != TEMPLATE_BYTES:
        raise GalleryRefusedError(f"a template must be {TEMPLATE_BYTES} bytes (512 float32)")
    v = np.frombuffer(data, "<f4").astype(np.float32)
    if not np.all(np.isfinite(v)) or np.abs(v).max() > 1.0:
        raise GalleryRefusedError("a template must be a finite unit vector")
    if abs(float(np.linalg.norm(v)) - 1.0) > 1e-3:
        raise GalleryRefusedError("a template must be a finite unit vector")
    return v


# --- the gallery ----------------------------------------------------------------------------


@dataclass
class Subject:
    id: str
    consent: str
    enrolled_at: int
    templates: npt.NDArray[np.float32]


def gallery_key(identity: Identity) -> bytes:
    """The gallery's 32-byte SecretBox key, derived from the unit's Ed25519 seed."""
    seed = bytes(identity.signing_key)
    return hkdf_sha256(seed, salt=b"camveil gallery v1", info=identity.kid.encode(), length=32)


class Gallery:
    """The enrolled subjects, thread-safe (commands add and remove, the matcher reads)."""

    def __init__(self, path: Path, identity: Identity, model_sha256: str) -> None:
        self.path = path
        self._device = identity.kid
        self._box = SecretBox(gallery_key(identity))
        self._model = model_sha256
        self._lock = threading.Lock()
        self._subjects: dict[str, Subject] = {}
        self._bank = np.zeros((0, DIMENSIONS), np.float32)
        self._owner: list[str] = []

    # --- file ----------------------------------------------------------------------------

    def load(self) -> Gallery:
        """Read and decrypt the file (a missing file is an empty gallery). KeyFileError when it
        does not open with this unit's key or was made for another model."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self
        except OSError as exc:
            raise KeyFileError(f"gallery {self.path} cannot be read ({exc.strerror})") from None
        if self.path.stat().st_mode & 0o077:
            raise KeyFileError(f"gallery {self.path} is readable by others; chmod 600 it")
        try:
            if raw[:4] != _MAGIC:
                raise ValueError("not a camveil gallery")
            m = cbor2.loads(self._box.decrypt(raw[4:]))
            if m.get("v") != _VERSION or m.get("device") != self._device:
                raise ValueError("made for another unit or version")
            if m.get("model") != self._model:
                raise ValueError(
                    "its templates were made with another embedding model; enrol again"
                )
            subjects = [
                Subject(
                    str(s["id"]),
                    str(s["consent"]),
                    int(s["at"]),
                    np.stack([parse_template(t) for t in s["templates"]]),
                )
                for s in m["subjects"]
            ]
        except (CryptoError, ValueError, KeyError, TypeError, cbor2.CBORDecodeError) as exc:
            raise KeyFileError(
                f"gallery {self.path} does not open ({exc}); remove it and enrol again"
            ) from None
        with self._lock:
            self._subjects = {s.id: s for s in subjects}
            self._rebuild()
        return self

    def _save(self) -> None:
        data = {
            "v": _VERSION,
            "device": self._device,
            "model": self._model,
            "subjects": [
                {
                    "id": s.id,
                    "consent": s.consent,
                    "at": s.enrolled_at,
                    "templates": [t.astype("<f4").tobytes() for t in s.templates],
                }
                for s in self._subjects.values()
            ],
        }
        plain = bytearray(cbor2.dumps(data, canonical=True))
        try:
            sealed = self._box.encrypt(bytes(plain), os.urandom(SecretBox.NONCE_SIZE))
        finally:
            plain[:] = bytes(len(plain))
        write_atomic(self.path, _MAGIC + bytes(sealed), 0o600)

    def _rebuild(self) -> None:
        rows = [(s.id, t) for s in self._subjects.values() for t in s.templates]
        old = self._bank
        self._bank = (
            np.stack([t for _, t in rows]) if rows else np.zeros((0, DIMENSIONS), np.float32)
        )
        self._owner = [sid for sid, _ in rows]
        if old.size:
            old.fill(0.0)

    # --- changes -------------------------------------------------------------------------

    def add(
        self,
        subject: str,
        consent: str,
        templates: Iterable[npt.NDArray[np.float32]],
        config: EnrolmentConfig,
        model_sha256: str,
    ) -> int:
        """Enrol (or re-enrol: replace) ``subject``; returns the gallery size. Refused with
        :class:`GalleryRefusedError` (nothing changes) for any rule the config sets."""
        if not SUBJECT_ID.fullmatch(subject):
            raise GalleryRefusedError("subject must be an opaque id of 1-64 of A-Z a-z 0-9 _ . : -")
        consent = consent.strip()
        if config.jurisdiction_mode and len(consent) < 3:
            raise GalleryRefusedError("jurisdiction mode: a consent reference is required")
        if len(consent) > MAX_CONSENT_CHARS:
            raise GalleryRefusedError(f"consent reference longer than {MAX_CONSENT_CHARS} chars")
        if model_sha256 != self._model:
            raise GalleryRefusedError("templates were made with another model than this unit's")
        vectors = list(templates)
        if not 1 <= len(vectors) <= config.max_templates:
            raise GalleryRefusedError(f"need 1 to {config.max_templates} templates per subject")
        with self._lock:
            if subject not in self._subjects and len(self._subjects) >= config.max_subjects:
                raise GalleryRefusedError(f"gallery full ({config.max_subjects} subjects)")
            previous = self._subjects.get(subject)
            self._subjects[subject] = Subject(
                subject, consent, int(time.time()), np.stack(vectors).astype(np.float32)
            )
            try:
                self._save()
            except OSError:
                if previous is None:
                    del self._subjects[subject]
                else:
                    self._subjects[subject] = previous
                raise
            if previous is not None:
                previous.templates.fill(0.0)
            self._rebuild()
            return len(self._subjects)

    def remove(self, subject: str) -> bool:
        """Forget ``subject`` (its templates are zeroed); False when it was not enrolled."""
        with self._lock:
            gone = self._subjects.pop(subject, None)
            if gone is None:
                return False
            self._save()
            gone.templates.fill(0.0)
            self._rebuild()
            return True

    # --- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._subjects)

    def subjects(self) -> list[str]:
        with self._lock:
            return sorted(self._subjects)

    def best(self, embedding: Embedding) -> tuple[str, float] | None:
        """The most similar subject and its score (max over its templates); None if empty."""
        with self._lock:
            if not self._owner:
                return None
            sims = self._bank @ embedding.vector
            i = int(np.argmax(sims))
            return self._owner[i], float(sims[i])

    def wipe(self) -> None:
        """Zero every template in memory (at stop)."""
        with self._lock:
            for s in self._subjects.values():
                s.templates.fill(0.0)
            self._bank.fill(0.0)
            self._subjects.clear()
            self._owner = []


__all__ = [
    "DEFAULT_THRESHOLD",
    "GALLERY_FILE",
    "SUBJECT_ID",
    "EnrolmentConfig",
    "Gallery",
    "GalleryRefusedError",
    "parse_template",
    "template_bytes",
]
