"""Config errors name the key and the fix; a valid file round-trips into typed sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config
from agent.errors import ConfigError
from agent.privacy.redact import FillMode

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "camveil.toml.example"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "camveil.toml"
    path.write_text(text)
    return path


def test_documented_example_is_valid_and_matches_defaults() -> None:
    assert load_config(EXAMPLE) == AgentConfig()


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
