"""Typed configuration loading: YAML file, then environment, then command-line overrides.

Each service declares a frozen pydantic model; :func:`load_config` builds it once at start-up
and the object is passed down (never global). :class:`LogLevel` is the type of every
service's ``log_level`` field.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(ValueError):
    """The configuration could not be read or is invalid; the message says where and why."""


class LogLevel(enum.StrEnum):
    """Log levels accepted on the command line, in files and in the environment (any case)."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"

    @classmethod
    def _missing_(cls, value: object) -> LogLevel | None:
        """Accept level names in any case (``debug``, ``Info``)."""
        return cls.__members__.get(value.upper()) if isinstance(value, str) else None


def _env_value(raw: str) -> Any:
    """Parse an environment value as a YAML scalar; text that is not valid YAML stays text."""
    if not raw:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw  # e.g. an IPv6 address such as "[::]:50052"


def _set_path(target: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = target
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(
    model: type[ConfigT],
    *,
    yaml_path: str | Path | None = None,
    env_prefix: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConfigT:
    """Build a config model from a YAML file, ``PREFIX_FIELD`` env vars and overrides.

    Parameters
    ----------
    model
        The pydantic model class.
    yaml_path
        Optional YAML file whose top level is a mapping.
    env_prefix
        Env vars named ``{env_prefix}{FIELD}`` (``__`` for nesting, e.g.
        ``FEDPROMPT_COORDINATOR_TRAINING__LOCAL_STEPS``) override the file; values are parsed
        as YAML scalars (kept as text when they are not valid YAML).
    overrides
        Dotted keys (``training.local_steps``) to values, e.g. from CLI flags; ``None`` values
        are ignored. Applied last.
    environ
        The environment to read; ``os.environ`` by default.

    Returns
    -------
    ConfigT
        The validated configuration.

    Raises
    ------
    ConfigError
        If the file cannot be read or parsed, or the merged values do not validate.
    """
    data: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data.update(loaded)
    if env_prefix:
        env = os.environ if environ is None else environ
        for key, raw in env.items():
            if key.startswith(env_prefix) and len(key) > len(env_prefix):
                dotted = key[len(env_prefix) :].lower().replace("__", ".")
                _set_path(data, dotted, _env_value(raw))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, dotted, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {model.__name__}: {exc}") from exc
