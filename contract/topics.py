"""The MQTT topic scheme, in one place (docs/PROTOCOL.md, "MQTT", "Topics"): builders for every
topic a camveil client publishes or subscribes to, and the strict parser the envelope layer binds
to.

::

    camveil/v1/<device>/event/<type>    unit -> backend   sealed event
    camveil/v1/<device>/status          unit -> backend   sealed status, retained; the last will
    camveil/v1/<device>/cmd             operator -> unit  sealed command
    camveil/v1/<device>/cmd/ack         unit -> operator  sealed command acknowledgement
    camveil/v1/<device>/receipt         backend -> unit   sealed receipt: seqs stored at the backend

``<device>`` is the unit's key id (:func:`contract.ids.check_kid`), ``<type>`` matches
``[a-z0-9][a-z0-9_.-]{0,63}``. The builders take any text for ``<device>``, so that they also
write subscription filters (``+``) and broker ACL patterns (``%u``); :func:`parse_topic` checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from contract.ids import check_kid

ROOT: Final = "camveil/v1"
PREFIX: Final = ROOT + "/"

KIND_EVENT: Final = "event"
KIND_STATUS: Final = "status"
KIND_CMD: Final = "cmd"
KIND_CMD_ACK: Final = "cmd/ack"
KIND_RECEIPT: Final = "receipt"
FOREIGN_SIGNED: Final = frozenset({KIND_CMD, KIND_RECEIPT})
"""Kinds signed by someone other than the device the topic names (an operator, the backend);
they must carry an expiry."""

_EVENT_TYPE: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def event_topic(device: str, event_type: str) -> str:
    return f"{PREFIX}{device}/{KIND_EVENT}/{event_type}"


def status_topic(device: str) -> str:
    return f"{PREFIX}{device}/{KIND_STATUS}"


def command_topic(device: str) -> str:
    return f"{PREFIX}{device}/{KIND_CMD}"


def ack_topic(device: str) -> str:
    return f"{PREFIX}{device}/{KIND_CMD_ACK}"


def receipt_topic(device: str) -> str:
    return f"{PREFIX}{device}/{KIND_RECEIPT}"


def events_filter(device: str = "+") -> str:
    """Every event of ``device`` (default: of every device)."""
    return f"{PREFIX}{device}/{KIND_EVENT}/#"


def device_filter(device: str) -> str:
    """Every topic of ``device``."""
    return f"{PREFIX}{device}/#"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT v5 shared subscription: the broker hands each message to one member of ``group``."""
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True)
class Topic:
    """A parsed camveil topic: ``camveil/v1/<device>/{event/<type>|status|cmd|cmd/ack|receipt}``."""

    device: str
    kind: str
    event_type: str | None = None


def topic_device(topic: str) -> str:
    """The device level of a topic under :data:`PREFIX`, checked as a key id, whatever follows it
    (to attribute a message on a topic :func:`parse_topic` refuses); ValueError when there is none.
    """
    if not isinstance(topic, str) or not topic.startswith(PREFIX):
        raise ValueError(f"topic {topic!r} does not start with {PREFIX!r}")
    device, slash, _ = topic[len(PREFIX) :].partition("/")
    if not slash:
        raise ValueError(f"topic {topic!r} has nothing after the device")
    return check_kid(device)


def parse_topic(topic: str) -> Topic:
    """Parse a camveil MQTT topic; ValueError when it is not one."""
    device = topic_device(topic)
    rest = topic[len(PREFIX) + len(device) + 1 :]
    if rest in (KIND_STATUS, KIND_CMD, KIND_CMD_ACK, KIND_RECEIPT):
        return Topic(device=device, kind=rest)
    kind, _, event_type = rest.partition("/")
    if kind == KIND_EVENT and _EVENT_TYPE.fullmatch(event_type):
        return Topic(device=device, kind=KIND_EVENT, event_type=event_type)
    raise ValueError(f"topic {topic!r} is not event/<type>, status, cmd, cmd/ack or receipt")
