"""Typed configuration of the clusterer process and a small generic loader.

Sources, later ones winning: the model's defaults, a YAML file, environment variables
``<PREFIX><FIELD>`` (e.g. ``FEDPROMPT_CLUSTERER_LISTEN``), explicit overrides (CLI flags).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

#: Prefix of the clusterer's environment variables.
ENV_PREFIX = "FEDPROMPT_CLUSTERER_"

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(Exception):
    """A configuration source cannot be read or does not validate."""


class LogLevel(enum.StrEnum):
    """Log levels accepted on the command line and in files."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class ClustererConfig(BaseModel):
    """Settings of one clusterer process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    listen: str = Field(
        default="127.0.0.1:50052",
        min_length=3,
        description="host:port the gRPC server binds; port 0 picks a free port.",
    )
    log_level: LogLevel = Field(
        default=LogLevel.INFO, description="Least severe log level that is written."
    )
    shutdown_grace_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long running calls may finish after SIGTERM/SIGINT.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        """Accept level names in any case."""
        return value.upper() if isinstance(value, str) else value

    @field_validator("listen")
    @classmethod
    def _has_port(cls, value: str) -> str:
        """Require ``host:port`` with a numeric port."""
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError("must be host:port, e.g. 127.0.0.1:50052")
        return value


def listen_port(listen: str) -> int:
    """Return the port part of a ``host:port`` address."""
    return int(listen.rpartition(":")[2])


def load_config(
    model_cls: type[ModelT],
    yaml_path: Path | str | None,
    overrides: Mapping[str, Any],
    *,
    env_prefix: str = ENV_PREFIX,
    environ: Mapping[str, str] | None = None,
) -> ModelT:
    """Build a config model from defaults, a YAML file, the environment and overrides.

    Parameters
    ----------
    model_cls
        The pydantic model to validate into.
    yaml_path
        A YAML file holding a mapping of field values, or ``None``.
    overrides
        Field values that win over every other source (e.g. CLI flags); ``None`` values
        are skipped.
    env_prefix
        Environment variables named ``env_prefix + FIELD_NAME.upper()`` set top-level
        fields; their string values are converted by pydantic.
    environ
        The environment to read; ``os.environ`` by default.

    Returns
    -------
    ModelT
        The validated configuration.

    Raises
    ------
    ConfigError
        If the file cannot be read or parsed, or the merged values do not validate.
    """
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(_read_yaml(Path(yaml_path)))
    env = os.environ if environ is None else environ
    for name in model_cls.model_fields:
        env_name = env_prefix + name.upper()
        if env_name in env:
            values[name] = env[env_name]
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model_cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid {model_cls.__name__}: {exc}") from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    """Read the mapping stored in a YAML file (an empty file is an empty mapping)."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return {str(k): v for k, v in loaded.items()}
