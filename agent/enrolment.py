"""Enrolled verification on the unit: the gallery's commands, its audit trail and its matcher.

Commands (signed by an operator, encrypted to the unit, expiring: :mod:`agent.commands`)::

    gallery_add     args = {"subject": tstr, "consent": tstr, "model": tstr (sha256 hex),
                            "templates": [+ bstr (512 float32, little endian)]}
    gallery_remove  args = {"subject": tstr}

Both are always answered. ``gallery_add`` is refused (ack ``rejected`` with the reason) when
``[enrolment]`` is off, when the gallery is full, in jurisdiction mode without a consent
reference, or when the templates were made with another model. ``gallery_remove`` also works
when enrolment is off, so that a subject can always be erased from a gallery left on disk.

Every enrolment, removal, refused change and match is an ``audit`` event; a match is also a
``match`` event (subject id and score only). The daemon wires this: one :class:`Enrolment` per
run (``[enrolment]`` is not changeable by ``set_config``), its :meth:`Enrolment.handlers` in the
command processor and :meth:`Enrolment.verifier` in each frame path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from agent.commands import Command, CommandRejectedError, Handler
from agent.events import AuditAction, Event, EventBuilder
from agent.stats import PipelineStats
from agent.vision.gallery import (
    GALLERY_FILE,
    SUBJECT_ID,
    EnrolmentConfig,
    Gallery,
    GalleryRefusedError,
    parse_template,
)
from agent.vision.verify import Verifier, open_verifier
from contract.envelope.keys import Identity
from contract.errors import CamveilError

logger = logging.getLogger(__name__)

MAX_TEMPLATES_ON_WIRE = 16


class EventSink(Protocol):
    """What :class:`Enrolment` needs of :class:`agent.publisher.Emitter`."""

    def emit(
        self, make: Callable[[EventBuilder], Event], captured_at: float | None = None
    ) -> None: ...


def model_sha256(models_dir: Path | None = None) -> str:
    """The sha256 of the FaceNet int8 model in use (checked against the manifest)."""
    from models import MODELS_DIR, load_manifest, verified_path

    folder = models_dir or MODELS_DIR
    verified_path("facenet_int8", folder)
    return load_manifest(folder / "manifest.json")["facenet_int8"].sha256


class Enrolment:
    """The gallery of one daemon run. Constructor only stores; :meth:`open` loads the gallery
    (only when enabled), :meth:`close` wipes it from memory."""

    def __init__(
        self,
        config: EnrolmentConfig,
        identity: Identity,
        state_dir: Path,
        events: EventSink,
        *,
        models_dir: Path | None = None,
    ) -> None:
        self.config = config
        self._identity = identity
        self._path = state_dir / GALLERY_FILE
        self._events = events
        self._models_dir = models_dir
        self._model: str | None = None
        self.gallery: Gallery | None = None

    def open(self) -> Enrolment:
        if not self.config.enabled:
            return self
        self._model = model_sha256(self._models_dir)
        self.gallery = Gallery(self._path, self._identity, self._model).load()
        logger.info(
            "enrolled verification on: %d subject(s), threshold %.2f, jurisdiction mode %s, "
            "purpose: %s; legal basis: %s",
            len(self.gallery),
            self.config.threshold,
            "on" if self.config.jurisdiction_mode else "OFF",
            self.config.purpose,
            self.config.legal_basis,
        )
        return self

    def close(self) -> None:
        if self.gallery is not None:
            self.gallery.wipe()

    def handlers(self) -> dict[str, Handler]:
        return {"gallery_add": self.cmd_add, "gallery_remove": self.cmd_remove}

    def verifier(self, stats: PipelineStats | None = None) -> Verifier | None:
        """A matcher for a new frame path (None when enrolment is off); it embeds through the
        frame path's shared worker (:func:`agent.vision.embedworker.open_embed_worker`)."""
        return open_verifier(self.config, self.gallery, self._matched, stats)

    # --- events --------------------------------------------------------------------------

    def _matched(self, subject: str, score: float, ts: float) -> None:
        logger.info("enrolled subject %s matched (score %.3f)", subject, score)
        self._events.emit(lambda b: b.match(subject, score), ts)
        self._events.emit(lambda b: b.audit(AuditAction.MATCH, subject, score=score), ts)

    def _refuse(self, command: Command, subject: str | None, reason: str) -> CommandRejectedError:
        self._events.emit(
            lambda b: b.audit(
                AuditAction.REFUSE,
                subject,
                command=command.id,
                operator=command.signer,
                reason=reason,
            )
        )
        return CommandRejectedError(reason)

    # --- commands ------------------------------------------------------------------------

    def cmd_add(self, command: Command) -> str:
        args = command.args
        subject = args.get("subject")
        label = subject if isinstance(subject, str) and SUBJECT_ID.fullmatch(subject) else None
        gallery, model = self.gallery, self._model
        if not self.config.enabled or gallery is None or model is None:
            raise self._refuse(
                command, label, "enrolled verification is off ([enrolment] enabled = false)"
            )
        consent, templates = args.get("consent", ""), args.get("templates")
        sent_model = args.get("model")
        try:
            if not isinstance(subject, str) or not isinstance(consent, str):
                raise GalleryRefusedError("args.subject and args.consent must be text")
            if not isinstance(sent_model, str):
                raise GalleryRefusedError("args.model (sha256 of the embedding model) missing")
            if not isinstance(templates, list) or not 1 <= len(templates) <= MAX_TEMPLATES_ON_WIRE:
                raise GalleryRefusedError("args.templates must be a list of 1-16 templates")
            vectors = [parse_template(t) for t in templates]
            size = gallery.add(subject, consent, vectors, self.config, sent_model)
        except GalleryRefusedError as exc:
            raise self._refuse(command, label, str(exc)) from None
        except OSError as exc:
            raise CamveilError(f"gallery not saved ({exc.strerror})") from None
        logger.info("enrolled subject %s (%d template(s))", subject, len(vectors))
        self._events.emit(
            lambda b: b.audit(
                AuditAction.ENROL,
                subject,
                command=command.id,
                operator=command.signer,
                consent=consent,
                subjects=size,
            )
        )
        return f"ok: {size} subject(s)"

    def cmd_remove(self, command: Command) -> str:
        subject = _subject(command.args)
        gallery = self.gallery
        try:
            if gallery is None:  # enrolment off: erase from a gallery left on disk, if any
                if not self._path.exists():
                    raise self._refuse(command, subject, "no gallery on this unit")
                gallery = Gallery(self._path, self._identity, model_sha256(self._models_dir))
                gallery.load()
            removed = gallery.remove(subject)
            size = len(gallery)
        except OSError as exc:
            raise CamveilError(f"gallery not saved ({exc.strerror})") from None
        finally:
            if gallery is not None and gallery is not self.gallery:
                gallery.wipe()
        if not removed:
            raise self._refuse(command, subject, f"subject {subject} is not enrolled")
        logger.info("removed enrolled subject %s", subject)
        self._events.emit(
            lambda b: b.audit(
                AuditAction.REMOVE,
                subject,
                command=command.id,
                operator=command.signer,
                subjects=size,
            )
        )
        return f"ok: {size} subject(s)"


def _subject(args: Mapping[str, Any]) -> str:
    subject = args.get("subject")
    if not isinstance(subject, str) or not SUBJECT_ID.fullmatch(subject):
        raise CommandRejectedError("args.subject must be a subject id")
    return subject


__all__ = ["Enrolment", "EventSink", "model_sha256"]
