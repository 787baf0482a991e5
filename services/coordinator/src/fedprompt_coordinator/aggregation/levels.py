"""The levels of the federation model: which shared tensors are global and which per cluster."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Released:
    """Which tensors of each level a round's aggregate released (moved), by name.

    A tensor not named here kept its value this round: the global level of a round without
    updates, a cluster without members in the round, or a cluster that DP-FedAvg
    (``min_cluster_members``) or secure aggregation did not release. A server optimizer
    leaves such a tensor, and its moments, untouched.

    Attributes
    ----------
    global_names
        Released tensors of the global level.
    clusters
        Cluster id -> its released tensors (clusters not listed released nothing).
    """

    global_names: frozenset[str] = frozenset()
    clusters: Mapping[int, frozenset[str]] = field(default_factory=dict)

    def of_cluster(self, cluster_id: int) -> frozenset[str]:
        """The released tensors of ``cluster_id`` (empty when it released none)."""
        return self.clusters.get(cluster_id, frozenset())

    def without(self, cluster_id: int, names: frozenset[str]) -> Released:
        """The same release with ``names`` of ``cluster_id`` withheld."""
        clusters = dict(self.clusters)
        kept = self.of_cluster(cluster_id) - names
        if kept:
            clusters[cluster_id] = kept
        else:
            clusters.pop(cluster_id, None)
        return Released(global_names=self.global_names, clusters=clusters)
