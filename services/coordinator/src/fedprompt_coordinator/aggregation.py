"""Aggregation of client deltas: which level a tensor belongs to, and weighted FedAvg.

The coordinator keeps a global level (shared by every client) and a cluster level (one copy
per cluster). :class:`ClusterAggregator` implementations are registered by name so that
the hierarchical method (contrastive cluster weights, DP-FedAvg of the global segment) plugs
in beside plain weighted FedAvg without touching the round state machine.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedprompt_coordinator.domain import ClientUpdate, FederationModel


class Level(enum.StrEnum):
    """Where a shared tensor lives."""

    GLOBAL = "global"
    CLUSTER = "cluster"


#: Tensor-name prefix -> level; the first match wins, anything else is cluster-level.
LEVEL_BY_PREFIX: tuple[tuple[str, Level], ...] = (("prompt.global", Level.GLOBAL),)


def level_of(name: str) -> Level:
    """The level a shared tensor belongs to, from its name."""
    for prefix, level in LEVEL_BY_PREFIX:
        if name == prefix or name.startswith(prefix + "."):
            return level
    return Level.CLUSTER


def split_levels(
    tensors: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Split named tensors into (global, cluster) dictionaries."""
    glob = {k: v for k, v in tensors.items() if level_of(k) is Level.GLOBAL}
    clus = {k: v for k, v in tensors.items() if level_of(k) is Level.CLUSTER}
    return glob, clus


def weighted_mean_delta(
    updates: Sequence[ClientUpdate], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Σ_i n_i Δ_i / Σ_i n_i for each name, accumulated in float64.

    Raises
    ------
    ValueError
        When ``updates`` is empty or the total weight is zero.
    """
    total = float(sum(u.num_examples for u in updates))
    if not updates or total <= 0:
        raise ValueError("weighted mean of no updates (or zero total weight)")
    out: dict[str, np.ndarray] = {}
    for name in names:
        acc = np.zeros(updates[0].tensors[name].shape, dtype=np.float64)
        for u in updates:
            acc += (u.num_examples / total) * u.tensors[name].astype(np.float64, copy=False)
        out[name] = acc
    return out


class ClusterAggregator(abc.ABC):
    """Turns a round's validated updates into the next federation model."""

    name: str = ""

    @abc.abstractmethod
    def aggregate(
        self,
        model: FederationModel,
        updates: Sequence[ClientUpdate],
    ) -> FederationModel:
        """Return the model after applying ``updates`` to ``model`` (which is not modified)."""


class WeightedFedAvg(ClusterAggregator):
    """FedAvg weighted by sample count: global tensors over everyone, cluster tensors per cluster.

    ``G' = G + Σ_i n_i ΔG_i / Σ_i n_i`` over all participants, and for every cluster k with
    members in the round ``C'_k = C_k + Σ_{i∈k} n_i ΔC_i / Σ_{i∈k} n_i``; clusters without
    updates keep their tensors.
    """

    name = "fedavg"

    def aggregate(
        self,
        model: FederationModel,
        updates: Sequence[ClientUpdate],
    ) -> FederationModel:
        """Apply sample-weighted mean deltas at both levels."""
        new_global = {k: v.copy() for k, v in model.global_tensors.items()}
        new_clusters = {
            c: {k: v.copy() for k, v in t.items()} for c, t in model.cluster_tensors.items()
        }
        if updates:
            mean = weighted_mean_delta(updates, list(model.global_tensors))
            for name, delta in mean.items():
                base = new_global[name]
                new_global[name] = (base.astype(np.float64) + delta).astype(base.dtype)
        for cluster_id in sorted({u.cluster_id for u in updates}):
            members = [u for u in updates if u.cluster_id == cluster_id]
            base_tensors = model.cluster_tensors.get(cluster_id, model.cluster_template)
            mean = weighted_mean_delta(members, list(base_tensors))
            new_clusters[cluster_id] = {
                name: (base_tensors[name].astype(np.float64) + mean[name]).astype(
                    base_tensors[name].dtype
                )
                for name in base_tensors
            }
        return FederationModel(
            global_tensors=new_global,
            cluster_tensors=new_clusters,
            cluster_template=model.cluster_template,
        )


AGGREGATORS: dict[str, Callable[[], ClusterAggregator]] = {WeightedFedAvg.name: WeightedFedAvg}


def make_aggregator(name: str) -> ClusterAggregator:
    """Instantiate a registered aggregator by name."""
    try:
        return AGGREGATORS[name]()
    except KeyError:
        raise ValueError(f"unknown aggregator {name!r}; known: {sorted(AGGREGATORS)}") from None


def fairness_summary(accuracies: Sequence[float]) -> dict[str, float]:
    """Mean, worst, std and Jain's fairness index (Σx)² / (n Σx²) of per-client accuracies."""
    if not accuracies:
        return {}
    x = np.asarray(accuracies, dtype=np.float64)
    sq = float((x**2).sum())
    return {
        "accuracy_mean": float(x.mean()),
        "accuracy_worst": float(x.min()),
        "accuracy_std": float(x.std()),
        "jain_index": float(x.sum() ** 2 / (len(x) * sq)) if sq > 0 else 1.0,
    }
