"""The levels of the federation model: which shared tensors are global and which per cluster."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import numpy as np

from fedprompt.tensor_names import GLOBAL_PROMPT


class Level(enum.StrEnum):
    """Where a shared tensor lives."""

    GLOBAL = "global"
    CLUSTER = "cluster"


#: Tensor-name prefix -> level; the first match wins, anything else is cluster-level.
LEVEL_BY_PREFIX: tuple[tuple[str, Level], ...] = ((GLOBAL_PROMPT, Level.GLOBAL),)


def level_of(name: str) -> Level:
    """The level a shared tensor belongs to, from its name."""
    for prefix, level in LEVEL_BY_PREFIX:
        if name == prefix or name.startswith(prefix + "."):
            return level
    return Level.CLUSTER


def split_levels(
    tensors: Mapping[str, np.ndarray], *, clustered: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Split named tensors into (global, cluster) dictionaries.

    With ``clustered=False`` (strategies with one shared model) every tensor is global.
    """
    if not clustered:
        return dict(tensors), {}
    glob = {k: v for k, v in tensors.items() if level_of(k) is Level.GLOBAL}
    clus = {k: v for k, v in tensors.items() if level_of(k) is Level.CLUSTER}
    return glob, clus
