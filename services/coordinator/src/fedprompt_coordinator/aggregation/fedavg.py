"""Hierarchical weighted FedAvg: the global level over everyone, the cluster level per cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt_coordinator.aggregation.base import (
    ClusterAggregator,
    Info,
    Tensors,
    apply_weighted_mean,
    sample_weights,
)
from fedprompt_coordinator.domain import ClientUpdate, FederationModel


class WeightedFedAvg(ClusterAggregator):
    """``G' = G + Σ_i n_i ΔG_i / Σ_i n_i`` over all participants, and for every cluster k
    with members in the round ``C'_k = C_k + Σ_{i∈k} w_i ΔC_i`` with ``w_i ∝ n_i`` (see
    :meth:`cluster_weights`); clusters without updates keep their tensors."""

    name = "fedavg"

    def cluster_weights(
        self, model: FederationModel, cluster_id: int, members: Sequence[ClientUpdate]
    ) -> np.ndarray:
        """Aggregation weights of a cluster's members (summing to 1): proportional to n_i."""
        return sample_weights(members)

    def aggregate_global(
        self, base: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> tuple[Tensors, Info]:
        """The n-weighted mean delta added to the global tensors."""
        return apply_weighted_mean(base, updates, sample_weights(updates)), {}

    def aggregate_cluster(
        self,
        model: FederationModel,
        cluster_id: int,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
    ) -> tuple[Tensors, Info]:
        """The members' mean delta, weighted by :meth:`cluster_weights`, added to ``base``."""
        weights = self.cluster_weights(model, cluster_id, members)
        info = {f"cluster_{cluster_id}_min_weight": float(weights.min())}
        return apply_weighted_mean(base, members, weights), info
