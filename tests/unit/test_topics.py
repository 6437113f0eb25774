"""The topic scheme (contract.topics): the literal wire strings, and the parser that takes them
back apart."""

from __future__ import annotations

import pytest

from contract.topics import (
    Topic,
    ack_topic,
    command_topic,
    device_filter,
    event_topic,
    events_filter,
    parse_topic,
    shared,
    status_topic,
    topic_device,
)

DEVICE = "cv-0001"


def test_builders_write_the_documented_topics() -> None:
    assert event_topic(DEVICE, "presence") == "camveil/v1/cv-0001/event/presence"
    assert status_topic(DEVICE) == "camveil/v1/cv-0001/status"
    assert command_topic(DEVICE) == "camveil/v1/cv-0001/cmd"
    assert ack_topic(DEVICE) == "camveil/v1/cv-0001/cmd/ack"
    assert events_filter() == "camveil/v1/+/event/#"
    assert device_filter("%u") == "camveil/v1/%u/#"
    assert shared("ingest", events_filter()) == "$share/ingest/camveil/v1/+/event/#"


def test_parse_takes_back_what_the_builders_write() -> None:
    assert parse_topic(event_topic(DEVICE, "a.b_c-1")) == Topic(DEVICE, "event", "a.b_c-1")
    assert parse_topic(status_topic(DEVICE)) == Topic(DEVICE, "status")
    assert parse_topic(command_topic(DEVICE)) == Topic(DEVICE, "cmd")
    assert parse_topic(ack_topic(DEVICE)) == Topic(DEVICE, "cmd/ack")


@pytest.mark.parametrize(
    "topic",
    [
        "camveil/v1/cv-0001/event/" + "x" * 65,
        "camveil/v1/cv-0001/event/a/b",
        "camveil/v1/cv-0001/cmd/ack/x",
        "camveil/v1/cv-0001/",
        "camveil/v2/cv-0001/status",
    ],
)
def test_parse_refuses_what_is_no_camveil_topic(topic: str) -> None:
    with pytest.raises(ValueError):
        parse_topic(topic)


def test_topic_device_names_the_device_whatever_follows() -> None:
    assert topic_device("camveil/v1/cv-0001/event/Not-A-Type") == DEVICE
    assert topic_device("camveil/v1/cv-0001/") == DEVICE
    for bad in ("camveil/v1/cv-0001", "camveil/v1//status", "camveil/v1/+/status", "x/cv/status"):
        with pytest.raises(ValueError):
            topic_device(bad)
    with pytest.raises(ValueError):
        topic_device("camveil/v1/" + "d" * 65 + "/status")
