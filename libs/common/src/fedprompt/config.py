"""Typed configuration loading: YAML file, then environment, then command-line overrides.

Each service declares a frozen pydantic model; :func:`load_config` builds it once at start-up
and the object is passed down (never global).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(ValueError):
    """The configuration could not be read or is invalid; the message says where and why."""


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
        as YAML scalars.
    overrides
        Dotted keys (``training.local_steps``) to values, e.g. from CLI flags; ``None`` values
        are ignored. Applied last.
    """
    data: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data.update(loaded)
    if env_prefix:
        for key, raw in os.environ.items():
            if key.startswith(env_prefix) and len(key) > len(env_prefix):
                dotted = key[len(env_prefix) :].lower().replace("__", ".")
                _set_path(data, dotted, yaml.safe_load(raw) if raw else raw)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, dotted, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {model.__name__}: {exc}") from exc
