"""Tests of typed configuration loading (YAML, then environment, then overrides)."""

from __future__ import annotations

import enum
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedprompt.config import ConfigError, load_config

PREFIX = "FEDPROMPT_UNITTEST_CFG_"


class Mode(enum.StrEnum):
    FAST = "fast"
    SAFE = "safe"


class Inner(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    local_steps: int = Field(20, ge=1, description="Steps.")
    learning_rate: float = Field(0.03, gt=0, description="Rate.")


class Sample(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    listen: str = Field("127.0.0.1:50051", description="Address.")
    rounds: int = Field(5, ge=1, description="Rounds.")
    min_clients: int = Field(2, ge=1, description="Quorum.")
    expected_clients: int | None = Field(None, ge=1, description="Expected.")
    mode: Mode = Field(Mode.SAFE, description="Mode.")
    verbose: bool = Field(False, description="Verbose.")
    state_dir: Path = Field(Path("state"), description="Folder.")
    training: Inner = Field(default_factory=Inner)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _expected_at_least_quorum(self) -> Sample:
        if self.expected_clients is not None and self.expected_clients < self.min_clients:
            raise ValueError("expected_clients must be >= min_clients")
        return self


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_without_any_source() -> None:
    config = load_config(Sample)
    assert config == Sample()
    assert config.training.local_steps == 20


def test_yaml_values_are_read(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path,
        "rounds: 7\nmode: fast\nstate_dir: /tmp/x\ntraining:\n  local_steps: 3\n",
    )
    config = load_config(Sample, yaml_path=path)
    assert config.rounds == 7
    assert config.mode is Mode.FAST
    assert config.state_dir == Path("/tmp/x")
    assert config.training.local_steps == 3
    assert config.training.learning_rate == 0.03  # untouched nested default


def test_env_overrides_yaml_and_overrides_beat_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _yaml(tmp_path, "rounds: 7\nmin_clients: 3\ntraining:\n  local_steps: 3\n")
    monkeypatch.setenv(f"{PREFIX}ROUNDS", "8")
    monkeypatch.setenv(f"{PREFIX}TRAINING__LOCAL_STEPS", "4")
    monkeypatch.setenv(f"{PREFIX}VERBOSE", "true")
    config = load_config(
        Sample,
        yaml_path=path,
        env_prefix=PREFIX,
        overrides={"training.local_steps": 5, "rounds": None},
    )
    assert config.min_clients == 3  # only in YAML
    assert config.rounds == 8  # env beats YAML; a None override is ignored
    assert config.training.local_steps == 5  # override beats env
    assert config.verbose is True  # env values are YAML scalars


def test_env_values_are_parsed_as_yaml_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{PREFIX}TRAINING__LEARNING_RATE", "0.5")
    monkeypatch.setenv(f"{PREFIX}EXPECTED_CLIENTS", "4")
    monkeypatch.setenv(f"{PREFIX}LISTEN", "0.0.0.0:6000")
    config = load_config(Sample, env_prefix=PREFIX)
    assert config.training.learning_rate == 0.5
    assert config.expected_clients == 4
    assert config.listen == "0.0.0.0:6000"


def test_env_without_prefix_match_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPROMPT_UNITTEST_OTHER_ROUNDS", "99")
    monkeypatch.setenv(PREFIX, "ignored: the bare prefix names no field")
    assert load_config(Sample, env_prefix=PREFIX).rounds == 5


def test_overrides_create_nested_sections() -> None:
    config = load_config(Sample, overrides={"training.learning_rate": 0.1, "mode": "fast"})
    assert config.training.learning_rate == 0.1
    assert config.mode is Mode.FAST


def test_config_is_frozen() -> None:
    config = load_config(Sample)
    with pytest.raises(ValueError, match="frozen"):
        config.rounds = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"rounds": 0}, "rounds"),
        ({"rounds": "many"}, "rounds"),
        ({"training.local_steps": -1}, "training.local_steps"),
        ({"training.learning_rate": 0}, "training.learning_rate"),
        ({"mode": "reckless"}, "mode"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"training.momentum": 0.9}, "training.momentum"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(
    overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Sample, overrides=overrides)
    assert field in str(info.value)
    assert "Sample" in str(info.value)


def test_invalid_env_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"{PREFIX}TRAINING__LOCAL_STEPS", "zero")
    with pytest.raises(ConfigError, match=r"training\.local_steps"):
        load_config(Sample, env_prefix=PREFIX)


def test_invalid_yaml_value_names_the_field(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "min_clients: 0\n")
    with pytest.raises(ConfigError, match="min_clients"):
        load_config(Sample, yaml_path=path)


def test_cross_field_rule_is_reported() -> None:
    with pytest.raises(ConfigError, match="expected_clients must be >= min_clients"):
        load_config(Sample, overrides={"min_clients": 3, "expected_clients": 2})


def test_missing_yaml_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Sample, yaml_path=missing)


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "rounds: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Sample, yaml_path=path)


def test_yaml_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "- rounds\n- 3\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(Sample, yaml_path=path)


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(Sample, yaml_path=_yaml(tmp_path, "")) == Sample()


def test_override_through_a_scalar_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'rounds' is not a section"):
        load_config(Sample, overrides={"rounds": 3, "rounds.value": 3})
