"""Tests of ClustererConfig loaded by the shared YAML / env / override loader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from fedprompt.config import ConfigError, LogLevel, load_config
from fedprompt_clusterer.config import ENV_PREFIX, ClustererConfig, listen_port


def load(
    yaml_path: Path | None,
    overrides: Mapping[str, Any],
    *,
    environ: Mapping[str, str],
) -> ClustererConfig:
    """Load the clusterer's config the way ``__main__`` does, from an explicit environment."""
    return load_config(
        ClustererConfig,
        yaml_path=yaml_path,
        env_prefix=ENV_PREFIX,
        overrides=overrides,
        environ=environ,
    )


def test_defaults() -> None:
    config = load(None, {}, environ={})
    assert config.listen == "127.0.0.1:50052"
    assert config.log_level is LogLevel.INFO
    assert config.shutdown_grace_seconds == 5.0


def test_precedence_is_yaml_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "clusterer.yaml"
    path.write_text("listen: 0.0.0.0:6000\nlog_level: debug\nshutdown_grace_seconds: 1.5\n")
    from_yaml = load(path, {}, environ={})
    assert (from_yaml.listen, from_yaml.log_level, from_yaml.shutdown_grace_seconds) == (
        "0.0.0.0:6000",
        LogLevel.DEBUG,
        1.5,
    )
    env = {
        "FEDPROMPT_CLUSTERER_LISTEN": "127.0.0.1:7000",
        "FEDPROMPT_CLUSTERER_LOG_LEVEL": "warning",
    }
    from_env = load(path, {}, environ=env)
    assert (from_env.listen, from_env.log_level) == ("127.0.0.1:7000", LogLevel.WARNING)
    from_cli = load(path, {"listen": "127.0.0.1:0", "log_level": None}, environ=env)
    assert (from_cli.listen, from_cli.log_level) == ("127.0.0.1:0", LogLevel.WARNING)


def test_env_values_are_converted() -> None:
    config = load(None, {}, environ={"FEDPROMPT_CLUSTERER_SHUTDOWN_GRACE_SECONDS": "0.5"})
    assert config.shutdown_grace_seconds == 0.5


def test_env_listen_may_be_an_ipv6_address() -> None:
    config = load(None, {}, environ={"FEDPROMPT_CLUSTERER_LISTEN": "[::]:50052"})
    assert config.listen == "[::]:50052"


def test_log_level_accepts_any_case() -> None:
    assert load(None, {"log_level": "Error"}, environ={}).log_level is LogLevel.ERROR


def test_config_is_frozen() -> None:
    config = ClustererConfig()
    with pytest.raises(ValueError, match="frozen"):
        setattr(config, "listen", "x:1")  # noqa: B010 - bypass the type checker on purpose


def test_unknown_yaml_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listen: 127.0.0.1:1\nport: 5\n")
    with pytest.raises(ConfigError, match="port"):
        load(path, {}, environ={})


@pytest.mark.parametrize("text", ["- a\n- b\n", "listen: [unclosed\n"])
def test_bad_yaml_is_rejected(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load(path, {}, environ={})


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.yaml", {}, environ={})


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("")
    assert load(path, {}, environ={}) == ClustererConfig()


@pytest.mark.parametrize(
    "overrides",
    [
        {"listen": "no-port"},
        {"listen": "host:http"},
        {"log_level": "LOUD"},
        {"shutdown_grace_seconds": 0},
    ],
)
def test_invalid_values_are_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load(None, overrides, environ={})


def test_listen_port() -> None:
    assert listen_port("127.0.0.1:0") == 0
    assert listen_port("[::]:50052") == 50052
