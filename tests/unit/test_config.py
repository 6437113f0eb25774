"""Config errors name the key and the fix; a valid file round-trips into typed sections."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.privacy.redact import FillMode
from contract.errors import ConfigError
from contract.statedir import DEFAULT_STATE_DIR

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "camveil.toml.example"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "camveil.toml"
    path.write_text(text)
    return path


def test_documented_example_is_valid_and_matches_defaults(tmp_path: Path) -> None:
    # on an unprovisioned state dir (not this machine's /var/lib/camveil): the example alone
    config = load_config(EXAMPLE, state_dir=tmp_path)
    assert config.mqtt.state_dir == tmp_path
    mqtt = dataclasses.replace(config.mqtt, state_dir=DEFAULT_STATE_DIR)
    assert dataclasses.replace(config, mqtt=mqtt) == AgentConfig()


def test_nested_tables_are_typed(tmp_path: Path) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            '[detector]\nthreads = 2\n[privacy.redaction]\nfill = "noise"\nmargin = 0.5\n'
            '[camera]\nkind = "replay"\nsource = "a.mp4"\nfps = 10\n',
        )
    )
    assert cfg.detector.threads == 2
    assert cfg.privacy.redaction.fill is FillMode.NOISE
    assert cfg.camera.fps == 10.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[detector]\nthreads = "two"\n', r"\[detector\] threads = 'two': expected an integer"),
        ('[privacy.redaction]\nfill = "blur"\n', r"fill = 'blur': use one of 'solid', 'noise'"),
        ("[camera]\nbogus = 1\n", r"\[camera\] unknown key\(s\) bogus; known keys: "),
        ('[detector]\nmodel = "yolo"\n', r"model = 'yolo' is unknown; use one of"),
        ("[detector]\nscale = 8.0\n", r"\[detector\] scale = 8.0 must be between 0.25 and 4"),
        (
            '[detector]\nmodel = "blazeface_full_int8"\nscale = 2.0\n',
            r"scale does not apply to blazeface_full_int8",
        ),
        (
            '[detector]\npartner = "blazeface_full_int8"\n',
            r"partner = 'blazeface_full_int8' is unknown",
        ),
        (
            '[detector]\nmodel = "yunet_int8"\npartner = "yunet_int8"\n',
            r"partner applies to centerface_int8 only",
        ),
        (
            "[detector]\npartner_threshold = 1.5\n",
            r"partner_threshold = 1.5 must be between 0 and 1",
        ),
        ('[detector]\npartner = "yunet_int8"\nedgetpu = true\n', r"no EdgeTPU build of yunet_int8"),
        ('[detector]\npersons = "yes"\n', r"\[detector\] persons = 'yes': expected true or false"),
        ("[detector]\nsmall_threshold = 0.0\n", r"small_threshold = 0.0 must be between 0 and 1"),
        (
            '[detector]\nmodel = "yunet_int8"\nsmall_threshold = 0.06\n',
            r"small_threshold applies to centerface_int8 only",
        ),
        ("[detector]\nextra_scale = 9.0\n", r"extra_scale = 9.0: use 0 \(off\) or 0.25 to 4"),
        (
            '[detector]\nmodel = "blazeface_full_int8"\nextra_scale = 2.0\n',
            r"extra_scale applies to centerface_int8 only",
        ),
        ("[privacy.redaction]\nmargin = 9.0\n", r"margin must be in \[0, 4\]"),
        ("[detector\n", r"not valid TOML"),
        ("[output]\nsnapshot_every = -1\n", r"snapshot_every must be >= 0"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_mqtt_events_outbox_sections(tmp_path: Path) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            '[mqtt]\nenabled = true\nstate_dir = "/tmp/unit"\nbroker = "mqtts://b.example:8884"\n'
            "[events]\npresence_window_s = 10\ndp_epsilon = 0.5\n"
            '[[events.zones]]\nname = "door"\nrect = [0.0, 0.0, 0.5, 1]\n'
            '[outbox]\npath = "/tmp/o.db"\n',
        )
    )
    assert cfg.mqtt.enabled and cfg.mqtt.state_dir == Path("/tmp/unit")
    assert cfg.events.presence_window_s == 10.0 and cfg.events.dp_epsilon == 0.5
    assert cfg.events.zones[0].name == "door" and cfg.events.zones[0].rect == (0.0, 0.0, 0.5, 1.0)
    assert cfg.outbox_path == Path("/tmp/o.db")
    assert AgentConfig().outbox_path == Path("/var/lib/camveil/outbox.db")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[mqtt]\nbroker = "mqtt://x:1883"\n', r"use mqtts://host:port"),
        ("[mqtt]\nkeepalive_s = 1\n", r"keepalive_s must be between"),
        ("[events]\ntamper_every = -1\n", r"tamper_every must be >= 0"),
        ("[events]\ndp_epsilon = 0\n", r"dp_epsilon must be a positive"),
        ("[events]\ndp_epsilon_per_day = 4\n", r"dp_epsilon_per_day needs dp_epsilon"),
        ("[events]\ndp_epsilon = 20\n", r"exceeds dp_epsilon_per_day \(10"),
        ("[events]\ndp_epsilon = 2\ndp_epsilon_per_day = 1\n", r"exceeds dp_epsilon_per_day"),
        ('[[events.zones]]\nname = "a"\nrect = [0.5, 0, 0.2, 1]\n', r"rect = .* must be"),
        ('[[events.zones]]\nname = "a"\nrect = [0, 0, 1]\n', r"expected 4 values"),
        (
            '[[events.zones]]\nname = "a"\nrect = [0,0,1,1]\n[[events.zones]]\nname = "a"\n'
            "rect = [0,0,1,1]\n",
            r"zone names must be unique",
        ),
        ("[outbox]\nmax_bytes = 10\n", r"max_bytes must be at least"),
        ("[outbox]\nbogus = 1\n", r"\[outbox\] unknown key\(s\) bogus"),
        ("[outbox]\nmax_db_bytes = 1000\n", r"max_db_bytes must be at least 262144"),
        ("[outbox]\nreserve_bytes = 10\n", r"reserve_bytes must be between"),
        ('[outbox]\nrecover_corrupt = "yes"\n', r"recover_corrupt"),
    ],
)
def test_new_section_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_dump_toml_round_trips_the_example(tmp_path: Path) -> None:
    import tomllib

    from agent.config import dump_toml, merge_mapping, read_toml, write_config_atomic

    data = read_toml(EXAMPLE)
    data = merge_mapping(
        data,
        {
            "events": {"zones": [{"name": "door", "rect": [0.0, 0.0, 0.5, 1.0]}]},
            "camera": {"source": 'a "quoted"\\path'},
        },
    )
    text = dump_toml(data)
    assert tomllib.loads(text) == data
    path = tmp_path / "out.toml"
    write_config_atomic(path, text)
    assert load_config(path).events.zones[0].name == "door"
    assert merge_mapping({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_remote_overlay_is_merged_and_a_bad_one_set_aside(tmp_path: Path) -> None:
    from agent.config import load_with_remote

    state = tmp_path / "state"
    state.mkdir()
    path = _write(tmp_path, f'[mqtt]\nenabled = true\nstate_dir = "{state}"\n')
    (state / "remote.toml").write_text("[events]\npresence_window_s = 5.0\n")
    config, base, overlay = load_with_remote(path)
    assert config.events.presence_window_s == 5.0
    assert base["mqtt"]["enabled"] is True and overlay == {"events": {"presence_window_s": 5.0}}

    (state / "remote.toml").write_text("[events]\npresence_window_s = -1.0\n")
    config, _, overlay = load_with_remote(path)
    assert config.events.presence_window_s == 60.0 and overlay == {}
    assert (state / "remote.toml.rejected").exists() and not (state / "remote.toml").exists()

    (state / "remote.toml").write_text('[mqtt]\nbroker = "mqtts://elsewhere:1"\n')
    assert load_with_remote(path)[0].mqtt.broker == ""  # [mqtt] cannot be changed remotely


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b'[camra]\nkind = "replay"\n',
            r"top level: unknown key\(s\) camra \(did you mean 'camera'\?\)",
        ),
        (
            b"[[events.zones]]\nrect = [0, 0, 1, 1]\n",
            r"\[events.zones\] missing key\(s\) name: add",
        ),
        ("[detector]\n".encode("utf-16"), r"saved as UTF-16; TOML files must be UTF-8"),
        (b"[detector]\n# caf\xe9\n", r"is not UTF-8 \(byte 16\)"),
    ],
)
def test_file_level_errors_say_the_fix(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "camveil.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_utf8_bom_is_accepted_and_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "camveil.toml"
    path.write_bytes(b"\xef\xbb\xbf[detector]\nthreads = 2\n")
    assert load_config(path).detector.threads == 2
    with pytest.raises(ConfigError, match="is a directory; give the path of the file"):
        load_config(tmp_path)


def test_outbox_keys_that_docs_and_errors_name_are_accepted(tmp_path: Path) -> None:
    """The corrupt-database error tells the user to set ``outbox.recover_corrupt``; the docs
    name ``max_db_bytes``: both (and ``reserve_bytes``) are real keys."""
    cfg = load_config(
        _write(
            tmp_path,
            "[outbox]\nrecover_corrupt = true\nmax_db_bytes = 1048576\nreserve_bytes = 131072\n",
        )
    )
    assert cfg.outbox.recover_corrupt is True
    assert cfg.outbox.max_db_bytes == 1048576
    assert cfg.outbox.reserve_bytes == 131072
    example = load_config(EXAMPLE).outbox
    assert (example.recover_corrupt, example.max_db_bytes) == (False, None)
    assert example.reserve_bytes == 1024 * 1024
