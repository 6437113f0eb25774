"""First-boot settings: what the station puts in the bundle (``settings``), how the agent's config
loader merges them under camveil.toml (the file wins, remote.toml on top), old bundles without
them, and the WARNING lines of a unit that cannot publish."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import cbor2
import pytest

from agent.config import load_config, load_layers, load_with_remote
from agent.linkreport import LinkReport, hint
from agent.transport import ConnectionEvent, ConnectionState
from camveil.cli.run import say_why_silent
from contract.errors import ConfigError, ProtocolViolationError, ProvisioningError
from contract.statedir import CAMERA_KINDS, Bundle, check_settings
from hw.camera.config import KINDS
from provisioning.station import CameraChoice, StationConfig, unit_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "camveil.toml.example"
DEVICE = "cv-0123456789abcdef"


def bundle(settings: dict[str, dict[str, Any]] | None = None) -> Bundle:
    return Bundle(
        device=DEVICE,
        cert_pem=b"cert",
        ca_pem=b"ca",
        broker_url="mqtts://broker.example:8883",
        backend_x25519=bytes(32),
        operator_ed25519=bytes(32),
        site={"name": "lab"},
        issued_at=1_700_000_000,
        backend_ed25519=bytes(range(32)),
        settings=settings or {},
    )


def provisioned(state: Path, settings: dict[str, dict[str, Any]] | None) -> Path:
    """A state dir whose provisioned/bundle.cbor carries ``settings`` (None: an old bundle)."""
    d = state / "provisioned"
    d.mkdir(parents=True)
    (d / "bundle.cbor").write_bytes(bundle(settings).encode())
    return state


def config_file(tmp_path: Path, state: Path, text: str = "") -> Path:
    path = tmp_path / "camveil.toml"
    path.write_text(f'{text}\n[mqtt]\nstate_dir = "{state}"\n' if "[mqtt]" not in text else text)
    return path


NEW = {"camera": {"kind": "v4l2", "source": "/dev/video2"}, "mqtt": {"enabled": True}}


# --- the bundle ----------------------------------------------------------------------------------


def test_settings_round_trip_and_an_old_bundle_is_unchanged() -> None:
    assert Bundle.decode(bundle(NEW).encode()).settings == NEW
    old = bundle().encode()
    assert "settings" not in cbor2.loads(old)  # byte-identical to a bundle of before
    assert Bundle.decode(old).settings == {}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ([], "'settings' is not a map"),
        ({"camera": "v4l2"}, "'camera': not a map of settings"),
        ({"camera": {"kind": 3}}, r"camera.kind = 3: expected str"),
        ({"mqtt": {"enabled": 1}}, r"mqtt.enabled = 1: expected bool"),
        ({"camera": {"kind": "rtsp9"}}, r"camera.kind = 'rtsp9': this unit knows synthetic"),
        ({"camera": {"fps": [1]}}, r"camera.fps: not text, true/false or a number"),
        (
            {"camera": {"kind": "gstreamer", "source": "videotestsrc ! appsink"}},
            r"camera.source: 'videotestsrc ! appsink': a GStreamer pipeline can only be set",
        ),
        ({"camera": {"source": ""}}, r"camera.source: '' is empty"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(settings: object, message: str) -> None:
    with pytest.raises(ProtocolViolationError, match=message):
        check_settings(settings)
    raw = cbor2.loads(bundle().encode()) | {"settings": settings}
    with pytest.raises(ProtocolViolationError, match=message):
        Bundle.decode(cbor2.dumps(raw, canonical=True))


def test_camera_kinds_of_the_contract_are_the_cameras_of_hw() -> None:
    assert CAMERA_KINDS == KINDS


# --- the station ---------------------------------------------------------------------------------


def test_station_settings_always_switch_mqtt_on() -> None:
    assert unit_settings(None) == {"mqtt": {"enabled": True}}
    assert unit_settings(CameraChoice("picamera2", "0")) == {
        "mqtt": {"enabled": True},
        "camera": {"kind": "picamera2", "source": "0"},
    }
    assert unit_settings(CameraChoice("v4l2")) == {
        "mqtt": {"enabled": True},
        "camera": {"kind": "v4l2"},
    }


@pytest.mark.parametrize(
    ("kind", "source", "message"),
    [
        ("webcam", None, "camera kind 'webcam' is not one of synthetic"),
        ("replay", None, 'camera kind "replay" needs a source'),
        ("v4l2", "", "camera source '' is empty or not printable"),
        ("v4l2", "/dev/\nvideo0", "not printable"),
        ("v4l2", "video0", "kind 'v4l2' takes a device path"),
        ("picamera2", "/dev/video0", "kind 'picamera2' takes a sensor number"),
        ("gstreamer", "nvarguscamerasrc ! tee ! udpsink", "pipeline can only be set in the unit"),
        ("replay", "a.mp4 ! filesink", "pipeline can only be set in the unit"),
        ("rtsp", None, 'camera kind "rtsp" needs a source'),
        ("rtsp", "http://cam/stream", "takes an rtsp:// or rtsps:// URL with a host"),
        ("rtsp", "rtsp:///stream", "takes an rtsp:// or rtsps:// URL with a host"),
        ("rtsp", "rtsp://admin:s3cret@cam/stream", "carries a user or password"),
    ],
)
def test_station_refuses_a_bad_camera(kind: str, source: str | None, message: str) -> None:
    with pytest.raises(ProvisioningError, match=message):
        CameraChoice(kind, source)


def test_station_accepts_an_rtsp_camera_without_credentials() -> None:
    choice = CameraChoice("rtsp", "rtsp://192.168.1.64:554/Streaming/Channels/101")
    assert choice.source == "rtsp://192.168.1.64:554/Streaming/Channels/101"


def test_station_json_with_and_without_a_camera(tmp_path: Path) -> None:
    path = tmp_path / "station.json"
    path.write_bytes(StationConfig(camera=CameraChoice("v4l2", "/dev/video0")).to_json())
    assert StationConfig.load(path).camera == CameraChoice("v4l2", "/dev/video0")
    old = json.loads(StationConfig().to_json())
    assert "camera" not in old  # a station from before: no camera, units decide themselves
    path.write_text(json.dumps(old))
    assert StationConfig.load(path).camera is None
    path.write_text(json.dumps(old | {"camera": {"kind": "tv"}}))
    with pytest.raises(
        ProvisioningError, match=r"station.json: camera kind 'tv' .* fix \"camera\""
    ):
        StationConfig.load(path)


# --- the config loader: precedence ---------------------------------------------------------------


def test_the_template_takes_the_provisioned_settings(tmp_path: Path) -> None:
    state = provisioned(tmp_path / "state", NEW)
    config = load_config(EXAMPLE, state_dir=state)
    assert config.camera.kind == "v4l2" and config.camera.source == "/dev/video2"
    assert config.mqtt.enabled is True and config.mqtt.state_dir == state
    # everything else is the template's (= the defaults)
    assert config.detector == load_config(EXAMPLE).detector


def test_the_operators_file_wins_over_the_station(tmp_path: Path) -> None:
    state = provisioned(tmp_path / "state", NEW)
    path = config_file(
        tmp_path,
        state,
        f'[camera]\nkind = "picamera2"\n[mqtt]\nenabled = false\nstate_dir = "{state}"\n',
    )
    config = load_config(path)
    assert config.camera.kind == "picamera2"
    assert config.camera.source == "/dev/video2"  # not set in the file: the station's
    assert config.mqtt.enabled is False


def test_remote_changes_apply_on_top_and_may_not_change_mqtt(tmp_path: Path) -> None:
    state = provisioned(tmp_path / "state", NEW)
    path = config_file(tmp_path, state)
    (state / "remote.toml").write_text('[camera]\nsource = "/dev/video4"\n')
    config, base, overlay = load_with_remote(path)
    assert config.camera.kind == "v4l2" and config.camera.source == "/dev/video4"
    assert config.mqtt.enabled is True and base["mqtt"]["enabled"] is True
    assert overlay == {"camera": {"source": "/dev/video4"}}
    (state / "remote.toml").write_text("[mqtt]\nenabled = false\n")
    config, _, overlay = load_with_remote(path)
    assert config.mqtt.enabled is True and overlay == {}
    assert (state / "remote.toml.rejected").exists()


def test_an_old_bundle_leaves_the_file_alone(tmp_path: Path) -> None:
    state = provisioned(tmp_path / "state", None)
    loaded = load_layers(EXAMPLE, state_dir=state)
    assert loaded.provisioned.present and loaded.provisioned.settings == {}
    assert loaded.config.camera.kind == "synthetic" and loaded.config.mqtt.enabled is False
    # a file written for such a unit keeps working as before
    path = config_file(
        tmp_path, state, f'[camera]\nkind = "v4l2"\n[mqtt]\nenabled = true\nstate_dir = "{state}"\n'
    )
    config = load_config(path)
    assert config.camera.kind == "v4l2" and config.mqtt.enabled is True


def test_not_provisioned_is_the_plain_file(tmp_path: Path) -> None:
    loaded = load_layers(EXAMPLE, state_dir=tmp_path / "nothing")
    assert not loaded.provisioned.present
    assert loaded.config.mqtt.enabled is False


def test_unknown_provisioned_keys_are_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = provisioned(
        tmp_path / "state", {**NEW, "camera": {"kind": "v4l2", "hdr": True}, "led": {"on": 1}}
    )
    with caplog.at_level(logging.WARNING):
        config = load_config(EXAMPLE, state_dir=state)
    assert config.camera.kind == "v4l2"
    assert "provisioned setting(s) camera.hdr, led.on unknown to this camveil version" in (
        caplog.text
    )


def test_errors_name_the_bundle_or_the_file(tmp_path: Path) -> None:
    # a camera kind the station may send but this config cannot use without a source
    state = provisioned(tmp_path / "state", {"camera": {"kind": "replay"}})
    path = config_file(tmp_path, state)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(
        f"{state / 'provisioned' / 'bundle.cbor'} (settings from provisioning)"
    )
    assert f"set the key in {path} to override it" in message and "\n" not in message
    # ... which the operator's file can override
    path = config_file(
        tmp_path, state, f'[camera]\nkind = "synthetic"\n[mqtt]\nstate_dir = "{state}"\n'
    )
    assert load_config(path).camera.kind == "synthetic"
    # a mistake in the file is still the file's
    path = config_file(
        tmp_path, state, f'[detector]\nthreads = "two"\n[mqtt]\nstate_dir = "{state}"\n'
    )
    with pytest.raises(ConfigError, match=rf"^{path}: \[detector\] threads = 'two'"):
        load_config(path)


def test_an_unreadable_or_corrupt_bundle_is_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "provisioned" / "bundle.cbor").mkdir(parents=True)  # unreadable: a directory
    with pytest.raises(ConfigError, match=r"cannot read the provisioned settings in .*bundle.cbor"):
        load_config(EXAMPLE, state_dir=state)
    (state / "provisioned" / "bundle.cbor").rmdir()
    (state / "provisioned" / "bundle.cbor").write_bytes(b"\xff not cbor")
    with pytest.raises(ConfigError, match=r"bundle.cbor: bundle is not .*; factory-reset the unit"):
        load_config(EXAMPLE, state_dir=state)


# --- why a unit publishes nothing ----------------------------------------------------------------


def test_a_provisioned_unit_with_mqtt_off_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = provisioned(tmp_path / "state", NEW)
    path = config_file(tmp_path, state, f'[mqtt]\nenabled = false\nstate_dir = "{state}"\n')
    with caplog.at_level(logging.WARNING):
        say_why_silent(load_layers(path), path)
    assert caplog.records[-1].levelno == logging.WARNING
    assert f"{path} sets [mqtt] enabled = false: it publishes nothing" in caplog.text

    caplog.clear()
    old = provisioned(tmp_path / "old", None)
    with caplog.at_level(logging.WARNING):
        say_why_silent(load_layers(EXAMPLE, old), EXAMPLE)
    assert "its bundle" in caplog.text and "has no settings" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a laptop: nothing was to be published
        say_why_silent(load_layers(EXAMPLE, tmp_path / "none"), EXAMPLE)
    assert caplog.text == ""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_link_report_says_it_once_then_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    report = LinkReport("broker:8883", lambda: 7, interval=600, clock=clock)
    refused = ConnectionEvent(
        ConnectionState.CONNECT_FAILED, "ConnectionRefusedError: [Errno 111] Connection refused", 1
    )
    with caplog.at_level(logging.INFO, logger="agent.linkreport"):
        for _ in range(60):  # a minute of attempts every second
            report.on_event(refused)
            clock.now += 1
        assert report.reports == 1
        (line,) = [r.getMessage() for r in caplog.records]
        assert line.startswith("cannot publish to broker:8883: ConnectionRefusedError")
        assert "is mosquitto running" in line and "7 sealed envelope(s) wait" in line
        tls = ConnectionEvent(
            ConnectionState.CONNECT_FAILED, "TLS: certificate verify failed: bad", 1
        )
        report.on_event(tls)  # a new reason: said at once
        assert report.reports == 2 and "not from this unit's CA" in caplog.records[-1].getMessage()
        clock.now += 599
        report.on_event(tls)
        assert report.reports == 2
        clock.now += 2
        report.on_event(tls)  # the same failure, ten minutes on
        assert report.reports == 3
        report.on_event(ConnectionEvent(ConnectionState.CONNECTED, "connected"))
        assert caplog.records[-1].levelno == logging.INFO
        assert "publishing to broker:8883 again after" in caplog.records[-1].getMessage()
        report.on_event(refused)  # a new outage is reported again
        assert report.reports == 4
    assert all(r.levelno == logging.WARNING for r in caplog.records if "cannot" in r.message)


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("TLS: certificate verify failed: unable to get local issuer", "not from this unit's CA"),
        ("TLS: tlsv1 alert certificate revoked", "revoked"),
        ("the broker closed the connection right after the TLS handshake", "see the broker's log"),
        (
            "the broker closed the connection right after the TLS handshake: sslv3 alert "
            "certificate revoked",
            "on its CRL",
        ),
        ("TLS: sslv3 alert certificate expired", "past its end date"),
        (
            "the broker closed the connection right after the TLS handshake: tlsv1 alert unknown "
            "ca",
            "does not know the CA",
        ),
        ("gaierror: [Errno -2] Name or service not known", "does not resolve"),
        ("ConnectionRefusedError: CONNACK 0x87 Not authorized", "refused the session"),
        ("something else", ""),
    ],
)
def test_hints(reason: str, words: str) -> None:
    assert words in hint(reason) if words else hint(reason) == ""


def test_provision_says_what_the_unit_will_take() -> None:
    from camveil.cli.provision import describe_settings

    assert describe_settings(NEW) == (
        "camera: v4l2 /dev/video2, MQTT on (unless its camveil.toml sets them)"
    )
    assert describe_settings({"mqtt": {"enabled": True}}).startswith("camera: its own config, MQTT")
    assert "older station" in describe_settings({})
