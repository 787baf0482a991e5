"""The aggregator interface: one method per level, one template for the whole model.

The coordinator keeps a global level (shared by every client) and a cluster level (one copy
per cluster). A :class:`ClusterAggregator` says how a level's base tensors and its members'
deltas become the level's next tensors; :meth:`ClusterAggregator.aggregate` applies that to
every level of a :class:`~fedprompt_coordinator.domain.FederationModel`. Wrappers (DP-FedAvg
of the global level) replace one level's method and delegate the other to the aggregator
they wrap, so privacy is never threaded through an aggregator's arguments.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from fedprompt_coordinator.aggregation.weighted_sum import add_weighted_sum, weighted_sum
from fedprompt_coordinator.domain import ClientUpdate, FederationModel

#: Tensors of one level, by name.
Tensors = dict[str, np.ndarray]
#: Diagnostics of one aggregation (clipping, noise, alignment weights), for round summaries.
Info = dict[str, float]


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


def sample_weights(updates: Sequence[ClientUpdate]) -> np.ndarray:
    """``n_i / Σ_j n_j``: FedAvg's weights by sample count.

    Raises
    ------
    ValueError
        When ``updates`` is empty or the total sample weight is zero.
    """
    n = np.asarray([u.num_examples for u in updates], dtype=np.float64)
    if not updates or n.sum() <= 0:
        raise ValueError("weighted mean of no updates (or zero total weight)")
    out: np.ndarray = n / n.sum()
    return out


def apply_weighted_mean(
    base: Mapping[str, np.ndarray],
    updates: Sequence[ClientUpdate],
    weights: Sequence[float] | np.ndarray,
) -> Tensors:
    """``base + Σ_i w_i Δ_i`` per name, fused: one copy of ``base``."""
    return {
        name: add_weighted_sum(base[name], [u.tensors[name] for u in updates], weights)
        for name in base
    }


class ClusterAggregator(abc.ABC):
    """Turns a round's validated updates into the next federation model, level by level."""

    #: Registry name (see :mod:`fedprompt_coordinator.aggregation.registry`).
    name: ClassVar[str] = ""

    def __init__(self) -> None:
        #: Diagnostics of the last aggregation (clipping, noise, alignment weights).
        self.last_info: Info = {}

    @abc.abstractmethod
    def aggregate_global(
        self, base: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> tuple[Tensors, Info]:
        """The global level after ``updates`` (not empty; ``base`` is not modified)."""

    @abc.abstractmethod
    def aggregate_cluster(
        self,
        model: FederationModel,
        cluster_id: int,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
    ) -> tuple[Tensors, Info]:
        """Cluster ``cluster_id``'s tensors after its ``members``' updates (``base``: its
        current tensors, or the template of a new cluster; not modified)."""

    def aggregate(self, model: FederationModel, updates: Sequence[ClientUpdate]) -> FederationModel:
        """Return the model after applying ``updates`` to ``model`` (which is not modified).

        The global level moves when there are updates and global tensors; every cluster with
        members in the round moves (a new cluster starts from the template); clusters without
        updates keep copies of their tensors.
        """
        info: Info = {}
        updated = sorted({u.cluster_id for u in updates})
        new_clusters = {  # copies only of the clusters nobody updated this round
            c: {k: v.copy() for k, v in t.items()}
            for c, t in model.cluster_tensors.items()
            if c not in updated
        }
        if updates and model.global_tensors:
            new_global, global_info = self.aggregate_global(model.global_tensors, updates)
            info.update(global_info)
        else:
            new_global = {k: v.copy() for k, v in model.global_tensors.items()}
        for cluster_id in updated:
            base = model.cluster_tensors.get(cluster_id, model.cluster_template)
            if not base:
                continue
            members = [u for u in updates if u.cluster_id == cluster_id]
            new_clusters[cluster_id], cluster_info = self.aggregate_cluster(
                model, cluster_id, base, members
            )
            info.update(cluster_info)
        self.last_info = info
        return FederationModel(
            global_tensors=new_global,
            cluster_tensors=new_clusters,
            cluster_template=model.cluster_template,
        )
