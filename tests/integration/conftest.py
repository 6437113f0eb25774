"""Fixtures for the integration tests: a real mosquitto with real certificates.

- ``mqtt_pki``: a session-wide CA with server, device, backend and operator certificates
  (``mqtt_pki.device("cam-a")`` etc. write them on first use).
- ``mosquitto``: one broker for the whole session, shared: tests must not stop it and must use
  their own device ids / topics.
- ``fresh_mosquitto``: a broker of the test's own (same CA), to stop, kill and restart at will.
- ``mosquitto_factory``: more brokers, e.g. one with a server certificate from another CA.
- ``harness``: a unit, a backend listener and an operator on a fresh broker (harness.py);
  parametrize it indirectly with False for a plain (not ``$share``) subscription.

Without mosquitto these fixtures fail with the install hint (``make setup``); they never skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, TestPki, mosquitto_binary
from harness import Harness


@pytest.fixture(scope="session")
def mqtt_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki.create(tmp_path_factory.mktemp("mqtt-pki"))


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory, mqtt_pki: TestPki) -> Iterator[Mosquitto]:
    mosquitto_binary()
    with Mosquitto(tmp_path_factory.mktemp("mosquitto"), mqtt_pki) as broker:
        yield broker


@pytest.fixture
def mosquitto_factory(tmp_path: Path, mqtt_pki: TestPki) -> Iterator[Callable[..., Mosquitto]]:
    """``make(pki=None, **kwargs)`` -> a started broker of its own, stopped after the test."""
    mosquitto_binary()
    brokers: list[Mosquitto] = []

    def make(test_pki: TestPki | None = None, **kwargs: Any) -> Mosquitto:
        state = tmp_path / f"mosquitto-{len(brokers)}"
        broker = Mosquitto(state, test_pki or mqtt_pki, **kwargs)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def fresh_mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return mosquitto_factory()


@pytest.fixture
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_mosquitto: Mosquitto, mqtt_pki: TestPki
) -> Iterator[Harness]:
    h = Harness(tmp_path, fresh_mosquitto, mqtt_pki)
    h.setup(shared=getattr(request, "param", True))
    try:
        yield h
    finally:
        h.close()
