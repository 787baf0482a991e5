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
from dataclasses import dataclass

import numpy as np

from fedprompt.fairness import jain_index
from fedprompt_coordinator.contrastive import centroid, contrastive_cluster_weights
from fedprompt_coordinator.domain import ClientUpdate, FederationModel
from fedprompt_coordinator.dp_fedavg import dp_fedavg
from fedprompt_coordinator.weighted_sum import add_weighted_sum, weighted_sum


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


def weighted_mean_delta(
    updates: Sequence[ClientUpdate],
    names: Sequence[str],
    weights: Sequence[float] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Σ_i w_i Δ_i for each name, accumulated in float64 (vectorised, bounded memory).

    ``weights`` default to ``n_i / Σ_j n_j`` (sample-weighted FedAvg); given weights are used
    as they are (they should sum to 1).

    Raises
    ------
    ValueError
        When ``updates`` is empty or the total sample weight is zero.
    """
    if weights is None:
        total = float(sum(u.num_examples for u in updates))
        if not updates or total <= 0:
            raise ValueError("weighted mean of no updates (or zero total weight)")
        weights = [u.num_examples / total for u in updates]
    elif not updates:
        raise ValueError("weighted mean of no updates (or zero total weight)")
    return {name: weighted_sum([u.tensors[name] for u in updates], weights) for name in names}


@dataclass(frozen=True)
class GlobalDP:
    """DP-FedAvg settings of the global level for one round."""

    clip_norm: float
    noise_multiplier: float
    expected_participants: float
    server_learning_rate: float
    rng: np.random.Generator


class ClusterAggregator(abc.ABC):
    """Turns a round's validated updates into the next federation model."""

    name: str = ""

    def __init__(self) -> None:
        #: Diagnostics of the last aggregation (clipping, noise, alignment weights).
        self.last_info: dict[str, float] = {}

    @abc.abstractmethod
    def aggregate(
        self,
        model: FederationModel,
        updates: Sequence[ClientUpdate],
        *,
        global_dp: GlobalDP | None = None,
    ) -> FederationModel:
        """Return the model after applying ``updates`` to ``model`` (which is not modified)."""


def _apply_weighted_mean(
    base: Mapping[str, np.ndarray],
    updates: Sequence[ClientUpdate],
    weights: Sequence[float] | np.ndarray | None,
) -> dict[str, np.ndarray]:
    """``base + Σ_i w_i Δ_i`` per name (w_i ∝ n_i by default), fused: one copy of ``base``."""
    if weights is None:
        n = np.asarray([u.num_examples for u in updates], dtype=np.float64)
        if not updates or n.sum() <= 0:
            raise ValueError("weighted mean of no updates (or zero total weight)")
        weights = n / n.sum()
    return {
        name: add_weighted_sum(base[name], [u.tensors[name] for u in updates], weights)
        for name in base
    }


class WeightedFedAvg(ClusterAggregator):
    """Hierarchical FedAvg: the global level over everyone, the cluster level per cluster.

    ``G' = G + Σ_i n_i ΔG_i / Σ_i n_i`` over all participants (or DP-FedAvg when
    ``global_dp`` is given), and for every cluster k with members in the round
    ``C'_k = C_k + Σ_{i∈k} w_i ΔC_i`` with ``w_i ∝ n_i`` (see :meth:`cluster_weights`);
    clusters without updates keep their tensors.
    """

    name = "fedavg"

    def cluster_weights(
        self, model: FederationModel, cluster_id: int, members: Sequence[ClientUpdate]
    ) -> np.ndarray:
        """Aggregation weights of a cluster's members (summing to 1): proportional to n_i."""
        n = np.asarray([u.num_examples for u in members], dtype=np.float64)
        out: np.ndarray = n / n.sum()
        return out

    def aggregate(
        self,
        model: FederationModel,
        updates: Sequence[ClientUpdate],
        *,
        global_dp: GlobalDP | None = None,
    ) -> FederationModel:
        """Apply the global and the per-cluster updates."""
        self.last_info = {}
        updated_clusters = {u.cluster_id for u in updates}
        new_global: dict[str, np.ndarray] = {}
        new_clusters = {  # copies only of the clusters nobody updated this round
            c: {k: v.copy() for k, v in t.items()}
            for c, t in model.cluster_tensors.items()
            if c not in updated_clusters
        }
        if not (updates and model.global_tensors):
            new_global = {k: v.copy() for k, v in model.global_tensors.items()}
        else:
            if global_dp is None:
                new_global = _apply_weighted_mean(model.global_tensors, updates, None)
            else:
                result = dp_fedavg(
                    model.global_tensors,
                    [{k: u.tensors[k] for k in model.global_tensors} for u in updates],
                    clip_norm=global_dp.clip_norm,
                    noise_multiplier=global_dp.noise_multiplier,
                    expected_participants=global_dp.expected_participants,
                    server_lr=global_dp.server_learning_rate,
                    rng=global_dp.rng,
                )
                new_global = result.tensors
                self.last_info.update(
                    dp_clipped_fraction=result.clipped_fraction,
                    dp_mean_update_norm=result.mean_update_norm,
                    dp_noise_std=result.noise_std,
                )
        for cluster_id in sorted({u.cluster_id for u in updates}):
            members = [u for u in updates if u.cluster_id == cluster_id]
            base_tensors = model.cluster_tensors.get(cluster_id, model.cluster_template)
            if not base_tensors:
                continue
            weights = self.cluster_weights(model, cluster_id, members)
            self.last_info[f"cluster_{cluster_id}_min_weight"] = float(weights.min())
            new_clusters[cluster_id] = _apply_weighted_mean(base_tensors, members, weights)
        return FederationModel(
            global_tensors=new_global,
            cluster_tensors=new_clusters,
            cluster_template=model.cluster_template,
        )


class ContrastiveFedAvg(WeightedFedAvg):
    """:class:`WeightedFedAvg` whose cluster weights are ``w_i ∝ n_i · a_i`` (DESIGN.md §3.5).

    ``a_i`` is the softmax over the cluster's members of the InfoNCE alignment score of the
    member's proposed cluster segment ``C_k + ΔC_i`` against all cluster centroids, so a
    member whose proposal looks like another cluster counts less.
    """

    name = "contrastive"

    def __init__(self, *, temperature: float = 0.5, segment: str = "prompt.cluster") -> None:
        super().__init__()
        self.temperature = temperature
        self.segment = segment

    def cluster_weights(
        self, model: FederationModel, cluster_id: int, members: Sequence[ClientUpdate]
    ) -> np.ndarray:
        """Contrastive alignment weights (n-weighted when there is no cluster segment)."""
        base = model.cluster_tensors.get(cluster_id, model.cluster_template)
        if self.segment not in base:
            return super().cluster_weights(model, cluster_id, members)
        centroids = model.centroids(self.segment)
        centroids.setdefault(cluster_id, centroid(base[self.segment]))
        # the token-mean is linear: centroid(C_k + ΔC_i) = centroid(C_k) + centroid(ΔC_i),
        # so each proposal is scored from its delta's mean without building C_k + ΔC_i
        base_centroid = centroid(base[self.segment])
        proposals = [base_centroid + centroid(u.tensors[self.segment]) for u in members]
        return contrastive_cluster_weights(
            proposals,
            [u.num_examples for u in members],
            own=cluster_id,
            centroids=centroids,
            temperature=self.temperature,
        )


AGGREGATORS: dict[str, Callable[[], ClusterAggregator]] = {
    WeightedFedAvg.name: WeightedFedAvg,
    ContrastiveFedAvg.name: ContrastiveFedAvg,
}


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
    return {
        "accuracy_mean": float(x.mean()),
        "accuracy_worst": float(x.min()),
        "accuracy_std": float(x.std()),
        "jain_index": jain_index(x.tolist()),
    }
