"""Hierarchical weighted FedAvg: the global level over everyone, the cluster level per cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt_coordinator.aggregation.base import (
    ClusterAggregator,
    Info,
    Tensors,
    apply_weighted_mean,
)
from fedprompt_coordinator.aggregation.weighting import UNCAPPED, ShareCap
from fedprompt_coordinator.domain import ClientUpdate, FederationModel


class WeightedFedAvg(ClusterAggregator):
    """``G' = G + Σ_i w_i ΔG_i`` over all participants, and for every cluster k with members
    in the round ``C'_k = C_k + Σ_{i∈k} w_i ΔC_i`` (see :meth:`cluster_weights`); clusters
    without updates keep their tensors.

    Parameters
    ----------
    weighting
        The weights ``w_i``: proportional to the sample counts ``n_i`` (or uniform), with no
        share above the policy's cap. The default is plain FedAvg (``n_i / Σ n_j``, no cap);
        the coordinator passes its configured cap.
    """

    name = "fedavg"

    def __init__(self, *, weighting: ShareCap = UNCAPPED) -> None:
        super().__init__()
        self.weighting = weighting

    def cluster_weights(
        self, model: FederationModel, cluster_id: int, members: Sequence[ClientUpdate]
    ) -> np.ndarray:
        """Aggregation weights of a cluster's members (summing to 1), capped per member."""
        return self.weighting.weights([u.num_examples for u in members])

    def aggregate_global(
        self, base: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> tuple[Tensors, Info]:
        """The weighted mean delta added to the global tensors."""
        weights = self.weighting.weights([u.num_examples for u in updates])
        info = {"global_max_weight": float(weights.max())}
        return apply_weighted_mean(base, updates, weights), info

    def aggregate_cluster(
        self,
        model: FederationModel,
        cluster_id: int,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
    ) -> tuple[Tensors, Info]:
        """The members' mean delta, weighted by :meth:`cluster_weights`, added to ``base``."""
        weights = self.cluster_weights(model, cluster_id, members)
        info = {
            f"cluster_{cluster_id}_min_weight": float(weights.min()),
            f"cluster_{cluster_id}_max_weight": float(weights.max()),
        }
        return apply_weighted_mean(base, members, weights), info
