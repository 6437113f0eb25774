"""Typed events a unit publishes, their builders and their one encoder.

Every event is a frozen dataclass with a common :class:`Header` (``v``, ``device``, ``boot``,
``seq``, ``ts``) and a type: ``presence``, ``snapshot``, ``tamper``, ``health``, ``status``, and
with enrolled verification on (agent.enrolment) ``match`` (subject id and score only) and
``audit`` (every enrolment, removal, refusal and match).
:class:`EventBuilder` stamps headers (seq from a :class:`~agent.sequence.SequenceSource`) and
checks inputs; :func:`to_cbor` / :func:`to_map` are the only encoders. The plaintext format is
specified in docs/events.cddl (and docs/PROTOCOL.md); it is a map with short text keys::

    {"v": 1, "device": "cv-0001", "boot": "9f2c...", "seq": 42, "ts": 1764000000123,
     "type": "tamper", "body": {"kind": "covered", "score": 0.97}}

Privacy rules enforced here (docs/ARCHITECTURE.md, "On the unit: frame to MQTT"):

- the snapshot builder accepts only a :class:`~agent.privacy.redact.RedactedFrame` (checked at
  run time too) and encodes it with :func:`agent.privacy.store.encode_jpeg`;
- the encoder accepts only the event classes (exactly, not subclasses), and walks every
  field: an ndarray, a numpy scalar, anything whose class (or a base) is named ``Embedding``, or
  any other non-plain value raises :class:`~contract.errors.UnredactedDataError`. So an embedding
  (or raw pixels) cannot be serialised by accident, whatever a caller puts into a field;
- presence counts may carry differentially private noise under a daily budget and small-count
  suppression (:mod:`agent.privacy.counts`); so do the unique-visitor and dwell-time counts
  (``visitors``), which arrive here only as a :class:`~agent.privacy.visitors.VisitorWindow`
  histogram: no visitor id or embedding reaches the event builder.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import io
import math
import re
import secrets
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Final, Protocol, TypeAlias

import cbor2
import numpy as np
from PIL import Image

from agent.privacy.counts import CountPrivacy, CountProtector, Release
from agent.privacy.redact import RedactedFrame
from agent.privacy.store import encode_jpeg, require_redacted
from agent.privacy.visitors import VisitorWindow
from agent.sequence import SequenceSource
from agent.stats import PipelineStats
from agent.tamper import TamperKind
from contract.confighash import ConfigDigest
from contract.envelope.keys import Identity, PublicIdentity, check_kid
from contract.envelope.seal import SealedEnvelope, seal
from contract.errors import EventError, SnapshotTooLargeError, UnredactedDataError
from contract.topics import event_topic, status_topic

PROTOCOL_VERSION: Final = 1
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}")


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """What every event starts with. ``ts`` is Unix time in milliseconds."""

    device: str
    boot: str
    """Random per process start (:func:`new_boot_id`): tells restarts apart."""
    seq: int
    """Monotonic per device, persisted (agent.sequence): never repeats, gaps are allowed."""
    ts: int
    v: int = PROTOCOL_VERSION


class LinkState(str, enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True)
class ZoneCount:
    """People and faces seen in one zone during a window; ``None`` = suppressed (too small)."""

    zone: str
    people: int | None
    faces: int | None


@dataclass(frozen=True)
class DwellCount:
    """Visitors whose dwell time was in ``[min_s, max_s)`` (``max_s`` None: no upper bound);
    ``visitors`` None = suppressed or withheld."""

    min_s: int
    max_s: int | None
    visitors: int | None


@dataclass(frozen=True)
class VisitorCounts:
    """Unique visitors of one re-identification window (``start``..``end``, Unix ms) and their
    dwell-time histogram; aggregate only (docs/PROTOCOL.md, "Visitors")."""

    start: int
    end: int
    unique: int | None
    """The sum of the published buckets (after noise, before suppression); None = too small
    or withheld."""
    dwell: tuple[DwellCount, ...]
    dp: Release | None = None


@dataclass(frozen=True)
class PresenceEvent:
    header: Header
    start: int
    """Window start, Unix ms."""
    end: int
    """Window end, Unix ms."""
    zones: tuple[ZoneCount, ...]
    dp: Release | None = None
    """The protection the counts got (None: exact counts)."""
    visitors: VisitorCounts | None = None
    """Set on the presence event whose window ends where a re-identification window ends."""
    TYPE: ClassVar[str] = "presence"


@dataclass(frozen=True)
class SnapshotEvent:
    header: Header
    jpeg: bytes = field(repr=False)
    width: int
    height: int
    quality: int
    trigger: str | None = None
    """What asked for it (e.g. ``tamper``, ``schedule``); exactly one of trigger / command."""
    command: str | None = None
    """The id of the operator command that asked for it."""
    TYPE: ClassVar[str] = "snapshot"


@dataclass(frozen=True)
class TamperEvent:
    header: Header
    kind: TamperKind
    score: float
    """How far past its threshold the evidence is, 0..1 (1 = certain)."""
    TYPE: ClassVar[str] = "tamper"


@dataclass(frozen=True)
class StageLatency:
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class OutboxHealth:
    depth: int
    bytes: int
    evicted: Mapping[str, int]
    """By reason: bytes, age, disk_full, invalid."""
    rejected: Mapping[str, int]
    """Refused at enqueue, by reason: full, too_large."""
    corrupt_recovered: int
    oldest_age_s: float | None
    delete_on: str = "receipt"
    """When the unit forgets an envelope: ``receipt`` (the backend's) or ``puback``."""
    awaiting_receipt: int = 0
    receipted: int = 0
    republished: int = 0


@dataclass(frozen=True)
class CertHealth:
    """The TLS client certificate in use: the dashboard counts down to ``not_after`` and the
    operator renews it (`camveil station renew`) before then."""

    serial: str
    """Hex serial number."""
    not_after: int
    """Unix seconds."""


class OutboxNumbers(Protocol):
    """What a health event reads from the outbox (:class:`agent.outbox.OutboxStats` has it):
    events know the numbers, not the storage."""

    @property
    def depth(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def oldest_age_s(self) -> float | None: ...
    @property
    def evicted_total(self) -> Mapping[str, int]: ...
    @property
    def rejected_total(self) -> Mapping[str, int]: ...
    @property
    def corrupt_recovered(self) -> int: ...
    @property
    def delete_on(self) -> str: ...
    @property
    def awaiting_receipt(self) -> int: ...
    @property
    def receipted(self) -> int: ...
    @property
    def republished(self) -> int: ...


@dataclass(frozen=True)
class HealthEvent:
    header: Header
    fps: float
    latency: Mapping[str, StageLatency]
    dropped: Mapping[str, int]
    outbox: OutboxHealth
    cpu_temp_c: float | None
    uptime_s: float
    versions: Mapping[str, str]
    """Software versions, e.g. ``{"camveil": "0.1.0", "python": "3.11.2"}``."""
    models: Mapping[str, str]
    """Model name -> sha256 (hex) of the model file in use."""
    config: ConfigDigest | None = None
    """Hashes of the running config and of its ``remote.toml`` overlay (contract.confighash);
    None: not reported (a unit from before config hashes, or a simulator that has none)."""
    cert: CertHealth | None = None
    """The TLS client certificate in use (None: unreadable, or a caller that has none)."""
    TYPE: ClassVar[str] = "health"


@dataclass(frozen=True)
class StatusEvent:
    header: Header
    state: LinkState
    delivery: str | None = None
    """``receipt`` or ``puback``: when this unit forgets an envelope (on ``online`` only)."""
    TYPE: ClassVar[str] = "status"


class AuditAction(str, enum.Enum):
    """What an ``audit`` event records (enrolled verification, docs/PROTOCOL.md)."""

    ENROL = "enrol"
    REMOVE = "remove"
    REFUSE = "refuse"
    MATCH = "match"


@dataclass(frozen=True)
class MatchEvent:
    """A face in view matched an enrolled subject: the subject's opaque id and the cosine score,
    nothing else (no embedding, no pixels, no track)."""

    header: Header
    subject: str
    score: float
    TYPE: ClassVar[str] = "match"


@dataclass(frozen=True)
class AuditEvent:
    """One entry of the gallery's audit trail."""

    header: Header
    action: AuditAction
    subject: str | None
    """The subject concerned (None for a refusal that names none)."""
    command: str | None = None
    """The id of the operator command (enrol, remove, refuse)."""
    operator: str | None = None
    """The key id that signed the command."""
    consent: str | None = None
    """The consent reference recorded at enrolment."""
    reason: str | None = None
    """Why a change was refused."""
    score: float | None = None
    """A match's score."""
    subjects: int | None = None
    """Gallery size after the change."""
    TYPE: ClassVar[str] = "audit"


Event: TypeAlias = (
    PresenceEvent
    | SnapshotEvent
    | TamperEvent
    | HealthEvent
    | StatusEvent
    | MatchEvent
    | AuditEvent
)
EVENT_TYPES: Final[tuple[type, ...]] = (
    PresenceEvent,
    SnapshotEvent,
    TamperEvent,
    HealthEvent,
    StatusEvent,
    MatchEvent,
    AuditEvent,
)


__all__ = [
    "EVENT_TYPES",
    "PROTOCOL_VERSION",
    "AuditAction",
    "AuditEvent",
    "CertHealth",
    "Event",
    "EventBuilder",
    "Header",
    "HealthEvent",
    "LinkState",
    "MatchEvent",
    "OutboxHealth",
    "OutboxNumbers",
    "PresenceEvent",
    "SnapshotEvent",
    "SnapshotPolicy",
    "StageLatency",
    "StatusEvent",
    "TamperEvent",
    "TamperKind",
    "ZoneCount",
    "fit_jpeg",
    "new_boot_id",
    "seal_event",
    "to_cbor",
    "to_map",
    "topic_for",
]


def new_boot_id() -> str:
    """A fresh random boot id (16 hex digits) for this process start."""
    return secrets.token_hex(8)


def topic_for(event: Event) -> str:
    """``camveil/v1/<device>/event/<type>``, or ``.../status`` for a status event."""
    device = event.header.device
    if isinstance(event, StatusEvent):
        return status_topic(device)
    return event_topic(device, event.TYPE)


# --- builders --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotPolicy:
    """Size cap of snapshot JPEGs and how far the builder may degrade to meet it."""

    max_bytes: int = 256 * 1024
    quality: int = 85
    """First JPEG quality tried."""
    min_quality: int = 40
    """Quality is lowered in steps of ``quality_step`` down to this before the size shrinks."""
    quality_step: int = 15
    max_side: int | None = 1280
    """Longest side of the first attempt (None = full resolution)."""
    min_side: int = 160
    """Below this longest side the builder gives up (SnapshotTooLargeError)."""
    shrink: float = 0.75

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or not 1 <= self.min_quality <= self.quality <= 95:
            raise ValueError("snapshot policy: need max_bytes >= 1, 1 <= min_quality <= quality")
        if self.quality_step < 1 or not 0.1 <= self.shrink < 1 or self.min_side < 8:
            raise ValueError("snapshot policy: need quality_step >= 1, 0.1 <= shrink < 1")


class EventBuilder:
    """Builds events for one device: stamps headers, validates, applies count privacy.

    ``budget_path``: where the daily privacy budget is kept (None: in memory, for tools/tests).
    """

    def __init__(
        self,
        device: str,
        boot: str,
        seqs: SequenceSource,
        *,
        clock: Callable[[], float] = time.time,
        snapshot_policy: SnapshotPolicy | None = None,
        count_privacy: CountPrivacy | None = None,
        budget_path: Path | None = None,
    ) -> None:
        self._device = check_kid(device)
        self._boot = boot
        self._seqs = seqs
        self._clock = clock
        self._snapshot_policy = snapshot_policy or SnapshotPolicy()
        self._counts = CountProtector(count_privacy or CountPrivacy(), budget_path)

    def header(self) -> Header:
        return Header(
            device=self._device,
            boot=self._boot,
            seq=self._seqs.next(),
            ts=round(self._clock() * 1000),
        )

    def presence(
        self,
        start: float,
        end: float,
        counts: Mapping[str, tuple[int, int]],
        visitors: VisitorWindow | None = None,
    ) -> PresenceEvent:
        """``counts``: zone -> (people, faces), exact, over the window [start, end] (Unix s).
        ``visitors``: a closed re-identification window, released under the same privacy
        settings and from the same daily budget as the counts (after them)."""
        if not end >= start:
            raise EventError(f"presence window ends ({end}) before it starts ({start})")
        flat: list[int] = []
        for zone, (people, faces) in counts.items():
            _check_label(zone, "zone")
            if min(people, faces) < 0:
                raise EventError(f"zone {zone!r}: counts must be >= 0, got {people}, {faces}")
            flat += (int(people), int(faces))
        values, dp = self._counts.protect(flat)
        zones = tuple(
            ZoneCount(zone, values[2 * i], values[2 * i + 1]) for i, zone in enumerate(counts)
        )
        return PresenceEvent(
            header=self.header(),
            start=round(start * 1000),
            end=round(end * 1000),
            zones=zones,
            dp=dp,
            visitors=None if visitors is None else self._visitor_counts(visitors),
        )

    def _visitor_counts(self, window: VisitorWindow) -> VisitorCounts:
        if not isinstance(window, VisitorWindow):
            raise EventError(f"visitors must be a VisitorWindow, got {type(window).__name__}")
        values, unique, dp = self._counts.protect_histogram(list(window.counts))
        bounds = (0, *window.edges)
        dwell = tuple(
            DwellCount(lo, window.edges[i] if i < len(window.edges) else None, values[i])
            for i, lo in enumerate(bounds)
        )
        return VisitorCounts(
            start=round(window.start * 1000),
            end=round(window.end * 1000),
            unique=unique,
            dwell=dwell,
            dp=dp,
        )

    def snapshot(
        self, frame: RedactedFrame, *, trigger: str | None = None, command: str | None = None
    ) -> SnapshotEvent:
        """A JPEG of a RedactedFrame under the size cap; only a RedactedFrame is accepted."""
        frame = require_redacted(frame)
        if (trigger is None) == (command is None):
            raise EventError("a snapshot needs exactly one reason: trigger or command")
        _check_label(trigger if trigger is not None else command, "snapshot reason")
        jpeg, quality = fit_jpeg(frame, self._snapshot_policy)
        with Image.open(io.BytesIO(jpeg)) as img:
            width, height = img.size
        return SnapshotEvent(
            header=self.header(),
            jpeg=jpeg,
            width=width,
            height=height,
            quality=quality,
            trigger=trigger,
            command=command,
        )

    def tamper(self, kind: TamperKind, score: float) -> TamperEvent:
        return TamperEvent(
            header=self.header(), kind=TamperKind(kind), score=_clamp01(float(score))
        )

    def health(
        self,
        *,
        fps: float,
        pipeline: PipelineStats,
        outbox: OutboxNumbers,
        cpu_temp_c: float | None,
        uptime_s: float,
        versions: Mapping[str, str],
        models: Mapping[str, str],
        config: ConfigDigest | None = None,
        cert: CertHealth | None = None,
    ) -> HealthEvent:
        snap = pipeline.snapshot()
        latency_raw: Any = snap["latency"]
        dropped_raw: Any = snap["dropped"]
        latency = {
            str(stage): StageLatency(_opt_float(v["p50_ms"]), _opt_float(v["p99_ms"]))
            for stage, v in latency_raw.items()
        }
        return HealthEvent(
            header=self.header(),
            fps=round(float(fps), 3),
            latency=MappingProxyType(latency),
            dropped=MappingProxyType({str(k): int(v) for k, v in dropped_raw.items()}),
            outbox=OutboxHealth(
                depth=outbox.depth,
                bytes=outbox.bytes,
                evicted=MappingProxyType(dict(outbox.evicted_total)),
                rejected=MappingProxyType(dict(outbox.rejected_total)),
                corrupt_recovered=outbox.corrupt_recovered,
                oldest_age_s=_opt_float(outbox.oldest_age_s),
                delete_on=str(outbox.delete_on),
                awaiting_receipt=outbox.awaiting_receipt,
                receipted=outbox.receipted,
                republished=outbox.republished,
            ),
            cpu_temp_c=_opt_float(cpu_temp_c),
            uptime_s=round(float(uptime_s), 3),
            versions=MappingProxyType({str(k): str(v) for k, v in versions.items()}),
            models=MappingProxyType({str(k): str(v) for k, v in models.items()}),
            config=config,
            cert=cert,
        )

    def match(self, subject: str, score: float) -> MatchEvent:
        _check_label(subject, "subject")
        return MatchEvent(header=self.header(), subject=subject, score=_clamp01(float(score)))

    def audit(
        self,
        action: AuditAction,
        subject: str | None,
        *,
        command: str | None = None,
        operator: str | None = None,
        consent: str | None = None,
        reason: str | None = None,
        score: float | None = None,
        subjects: int | None = None,
    ) -> AuditEvent:
        for label, what in ((subject, "subject"), (command, "command"), (operator, "operator")):
            if label is not None:
                _check_label(label, what)
        return AuditEvent(
            header=self.header(),
            action=AuditAction(action),
            subject=subject,
            command=command,
            operator=operator,
            consent=None if consent is None else _text(consent, "consent"),
            reason=None if reason is None else _text(reason, "reason"),
            score=None if score is None else _clamp01(float(score)),
            subjects=None if subjects is None else int(subjects),
        )

    def status(self, state: LinkState, delivery: str | None = None) -> StatusEvent:
        if delivery not in (None, "receipt", "puback"):
            raise EventError(f"delivery must be receipt or puback, got {delivery!r}")
        return StatusEvent(header=self.header(), state=LinkState(state), delivery=delivery)


def fit_jpeg(frame: RedactedFrame, policy: SnapshotPolicy) -> tuple[bytes, int]:
    """The best JPEG of ``frame`` under ``policy.max_bytes``: lower quality first, then size."""
    frame = require_redacted(frame)
    side = max(frame.width, frame.height)
    if policy.max_side is not None:
        side = min(side, policy.max_side)
    smallest = 0
    while side >= policy.min_side:
        quality = policy.quality
        while True:
            jpeg = encode_jpeg(frame, quality=quality, max_side=side)
            if len(jpeg) <= policy.max_bytes:
                return jpeg, quality
            smallest = len(jpeg)
            if quality == policy.min_quality:
                break
            quality = max(policy.min_quality, quality - policy.quality_step)
        side = int(side * policy.shrink)
    raise SnapshotTooLargeError(
        f"no JPEG of the {frame.width}x{frame.height} frame fits {policy.max_bytes} bytes "
        f"(smallest tried: {smallest} bytes at quality {policy.min_quality}, longest side "
        f">= {policy.min_side}); raise snapshot max_bytes or lower min_side"
    )


# --- encoder ---------------------------------------------------------------------------------


def dp_map(release: Release) -> dict[str, Any]:
    """The ``dp`` map of a presence body (docs/events.cddl, ``count-privacy``)."""
    dp: dict[str, Any] = {"min": release.suppress_below}
    if release.epsilon is not None:
        dp["eps"] = release.epsilon
    if release.day_budget is not None:
        dp["day"] = release.day_budget
    if release.spent_today is not None:
        dp["spent"] = release.spent_today
    if release.exhausted:
        dp["exhausted"] = True
    return dp


def visitors_map(visitors: VisitorCounts) -> dict[str, Any]:
    """The ``visitors`` map of a presence body (docs/events.cddl, ``visitor-counts``)."""
    out: dict[str, Any] = {
        "start": visitors.start,
        "end": visitors.end,
        "unique": visitors.unique,
        "dwell": [{"min": d.min_s, "max": d.max_s, "n": d.visitors} for d in visitors.dwell],
    }
    if visitors.dp is not None:
        out["dp"] = dp_map(visitors.dp)
    return out


def to_map(event: Event) -> dict[str, Any]:
    """The plaintext map of ``event`` (what :func:`contract.envelope.seal` encrypts).

    Raises UnredactedDataError for anything that is not exactly one of the event classes, or
    that holds an ndarray, a numpy scalar, an ``Embedding`` or any other non-plain value.
    """
    if type(event) not in EVENT_TYPES:
        raise UnredactedDataError(
            f"refusing to encode a {type(event).__name__}: only camveil events are encodable"
        )
    _check_value(event, type(event), type(event).__name__)
    header = event.header
    body: dict[str, Any]
    if isinstance(event, PresenceEvent):
        body = {
            "start": event.start,
            "end": event.end,
            "zones": [{"zone": z.zone, "people": z.people, "faces": z.faces} for z in event.zones],
        }
        if event.dp is not None:
            body["dp"] = dp_map(event.dp)
        if event.visitors is not None:
            body["visitors"] = visitors_map(event.visitors)
    elif isinstance(event, SnapshotEvent):
        body = {"jpeg": event.jpeg, "w": event.width, "h": event.height, "q": event.quality}
        if event.trigger is not None:
            body["trigger"] = event.trigger
        if event.command is not None:
            body["cmd"] = event.command
    elif isinstance(event, TamperEvent):
        body = {"kind": event.kind.value, "score": event.score}
    elif isinstance(event, HealthEvent):
        body = {
            "fps": event.fps,
            "latency": {
                stage: {"p50": lat.p50_ms, "p99": lat.p99_ms}
                for stage, lat in event.latency.items()
            },
            "dropped": dict(event.dropped),
            "outbox": {
                "depth": event.outbox.depth,
                "bytes": event.outbox.bytes,
                "evicted": dict(event.outbox.evicted),
                "rejected": dict(event.outbox.rejected),
                "corrupt": event.outbox.corrupt_recovered,
                "oldest_s": event.outbox.oldest_age_s,
                "delivery": event.outbox.delete_on,
                "awaiting": event.outbox.awaiting_receipt,
                "receipted": event.outbox.receipted,
                "republished": event.outbox.republished,
            },
            "temp_c": event.cpu_temp_c,
            "uptime_s": event.uptime_s,
            "versions": dict(event.versions),
            "models": dict(event.models),
        }
        if event.config is not None:
            body["config"] = {
                "effective": event.config.effective,
                "remote": event.config.remote,
                "remote_keys": dict(event.config.remote_keys),
            }
        if event.cert is not None:
            body["cert"] = {"serial": event.cert.serial, "not_after": event.cert.not_after}
    elif isinstance(event, MatchEvent):
        body = {"subject": event.subject, "score": event.score}
    elif isinstance(event, AuditEvent):
        body = {"action": event.action.value}
        optional = {
            "subject": event.subject,
            "cmd": event.command,
            "operator": event.operator,
            "consent": event.consent,
            "reason": event.reason,
            "score": event.score,
            "subjects": event.subjects,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
    else:
        body = {"state": event.state.value}
        if event.delivery is not None:
            body["delivery"] = event.delivery
    out = {
        "v": header.v,
        "device": header.device,
        "boot": header.boot,
        "seq": header.seq,
        "ts": header.ts,
        "type": event.TYPE,
        "body": body,
    }
    _check_plain(out, "event")
    return out


def to_cbor(event: Event) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2, sorted keys, shortest forms) of :func:`to_map`."""
    return cbor2.dumps(to_map(event), canonical=True)


def seal_event(event: Event, *, sender: Identity, recipient: PublicIdentity) -> SealedEnvelope:
    """Encode ``event`` (:func:`to_map`) and seal it for its topic, device and seq."""
    return seal(
        to_map(event),
        sender=sender,
        recipient=recipient,
        topic=topic_for(event),
        seq=event.header.seq,
        device=event.header.device,
    )


_SCALARS: Final = (str, int, float, bool, bytes, type(None))


def _is_embedding(value: object) -> bool:
    return any(cls.__name__ == "Embedding" for cls in type(value).__mro__)


def _check_value(value: object, hint: Any, path: str) -> None:
    """Check ``value`` against the declared type ``hint`` of its field, recursively.

    Embeddings and numpy values get their own message; anything else that is not exactly of
    the declared type (no subclasses, no int for float, no bool for int) is refused too, so a
    field cannot carry other data than the protocol describes.
    """
    if _is_embedding(value):
        raise UnredactedDataError(f"{path}: embeddings never leave the device")
    if isinstance(value, np.ndarray | np.generic):
        raise UnredactedDataError(f"{path}: refusing to encode a numpy {type(value).__name__}")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                _check_value(value, option, path)
            except UnredactedDataError:
                continue
            return
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if type(value) is tuple:
            for i, item in enumerate(value):
                _check_value(item, args[0], f"{path}[{i}]")
            return
    elif origin is Mapping:
        if isinstance(value, Mapping):
            for key, item in value.items():
                _check_value(key, args[0], f"{path} key")
                _check_value(item, args[1], f"{path}[{key!r}]")
            return
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if type(value) is hint:
            hints = _field_hints(hint)
            for f in dataclasses.fields(hint):
                _check_value(getattr(value, f.name), hints[f.name], f"{path}.{f.name}")
            return
    elif isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return
    elif hint is type(None) or hint is None:
        if value is None:
            return
    elif type(value) is hint and hint in _SCALARS:
        return
    raise UnredactedDataError(
        f"{path}: refusing to encode a {type(value).__name__} where the event declares "
        f"{getattr(hint, '__name__', hint)}"
    )


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_plain(value: object, path: str) -> None:
    """The final map holds only exact plain types (no subclasses smuggling other data)."""
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise UnredactedDataError(f"{path}: map keys must be text")
            _check_plain(item, f"{path}.{key}")
    elif type(value) is list:
        for i, item in enumerate(value):
            _check_plain(item, f"{path}[{i}]")
    elif type(value) is float:
        if not math.isfinite(value):
            raise EventError(f"{path}: {value} is not a finite number")
    elif type(value) not in _SCALARS:
        raise UnredactedDataError(f"{path}: refusing to encode a {type(value).__name__}")


def _check_label(label: object, what: str) -> None:
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise EventError(
            f"{what} {label!r} must be 1-64 characters of letters, digits and _ . : / -"
        )


def _text(value: str, what: str, limit: int = 200) -> str:
    """A short free text (consent reference, refusal reason): printable, at most ``limit``."""
    if not isinstance(value, str) or not value.isprintable():
        raise EventError(f"{what} must be printable text")
    return value[:limit]


def _clamp01(x: float) -> float:
    if not math.isfinite(x):
        raise EventError(f"score {x} is not a finite number")
    return round(min(1.0, max(0.0, x)), 4)


def _opt_float(x: float | None) -> float | None:
    return None if x is None else round(float(x), 3)
