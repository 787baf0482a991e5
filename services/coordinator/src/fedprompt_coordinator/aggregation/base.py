"""The aggregator interface: one method per level, one template for the whole model.

The coordinator keeps a global level (shared by every client) and a cluster level (one copy
per cluster). A :class:`ClusterAggregator` says how a level's base tensors and its members'
deltas become the level's next tensors; :meth:`ClusterAggregator.aggregate` applies that to
every level of a :class:`~fedprompt_coordinator.domain.FederationModel`, after
:meth:`ClusterAggregator.prepare_round` has seen the whole round (adaptive clipping learns its
bound from every update of a round, not cluster by cluster). A :class:`LevelWrapper` (per-client
clipping, a robust rule, DP-FedAvg of the global level) replaces one level's method and
delegates the other to the aggregator it wraps, so none of them is threaded through an
aggregator's arguments.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import numpy as np

from fedprompt_coordinator.aggregation.levels import Level, Released
from fedprompt_coordinator.aggregation.weighted_sum import add_weighted_sum, weighted_sum
from fedprompt_coordinator.domain import ClientUpdate, FederationModel

#: Tensors of one level, by name.
Tensors = dict[str, np.ndarray]
#: Diagnostics of one aggregation (clipping, noise, alignment weights), for round summaries.
Info = dict[str, float]
#: One level's aggregation of some members: (base tensors, members) -> (new tensors, info).
LevelAggregate = Callable[[Mapping[str, np.ndarray], Sequence[ClientUpdate]], tuple[Tensors, Info]]


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
        #: Which tensors the last aggregation moved (what a server optimizer steps).
        self.last_released = Released()

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

    def prepare_round(self, model: FederationModel, updates: Sequence[ClientUpdate]) -> Info:
        """See the whole round before any level is aggregated; returns round-level figures.

        Called once by :meth:`aggregate`. Plain aggregators need nothing; wrappers that learn
        from a whole round (adaptive clipping) override it and delegate to what they wrap.
        """
        return {}

    def aggregate(self, model: FederationModel, updates: Sequence[ClientUpdate]) -> FederationModel:
        """Return the model after applying ``updates`` to ``model`` (which is not modified).

        The global level moves when there are updates and global tensors; every cluster with
        members in the round moves (a new cluster starts from the template); clusters without
        updates keep copies of their tensors. :attr:`last_released` says which tensors moved.
        """
        info: Info = self.prepare_round(model, updates)
        updated = sorted({u.cluster_id for u in updates})
        new_clusters = {  # copies only of the clusters nobody updated this round
            c: {k: v.copy() for k, v in t.items()}
            for c, t in model.cluster_tensors.items()
            if c not in updated
        }
        released: dict[int, frozenset[str]] = {}
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
            released[cluster_id] = frozenset(new_clusters[cluster_id])
            info.update(cluster_info)
        self.last_info = info
        self.last_released = Released(
            global_names=frozenset(new_global) if updates else frozenset(), clusters=released
        )
        return FederationModel(
            global_tensors=new_global,
            cluster_tensors=new_clusters,
            cluster_template=model.cluster_template,
        )


class LevelWrapper(ClusterAggregator):
    """Replaces one level's aggregation of the aggregator it wraps and delegates the other.

    Subclasses implement :meth:`aggregate_level`, which receives the wrapped aggregator's
    method for that level (to delegate to, after changing the members or their tensors, or
    to ignore) and a label for round-summary keys (``global`` or ``cluster_<k>``).

    Parameters
    ----------
    inner
        The wrapped aggregator.
    level
        The level this wrapper replaces.
    """

    def __init__(self, inner: ClusterAggregator, *, level: Level) -> None:
        super().__init__()
        self.inner = inner
        self.level = level

    @abc.abstractmethod
    def aggregate_level(
        self,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
        *,
        inner: LevelAggregate,
        label: str,
    ) -> tuple[Tensors, Info]:
        """The level's tensors after ``members``' updates (``inner``: the wrapped method)."""

    def prepare_round(self, model: FederationModel, updates: Sequence[ClientUpdate]) -> Info:
        """The wrapped aggregator's round preparation."""
        return self.inner.prepare_round(model, updates)

    def aggregate_global(
        self, base: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> tuple[Tensors, Info]:
        """:meth:`aggregate_level` for the global level, else the wrapped aggregator's."""
        if self.level is not Level.GLOBAL:
            return self.inner.aggregate_global(base, updates)
        return self.aggregate_level(
            base, updates, inner=self.inner.aggregate_global, label="global"
        )

    def aggregate_cluster(
        self,
        model: FederationModel,
        cluster_id: int,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
    ) -> tuple[Tensors, Info]:
        """:meth:`aggregate_level` for a cluster, else the wrapped aggregator's."""
        if self.level is not Level.CLUSTER:
            return self.inner.aggregate_cluster(model, cluster_id, base, members)
        return self.aggregate_level(
            base,
            members,
            inner=functools.partial(self.inner.aggregate_cluster, model, cluster_id),
            label=f"cluster_{cluster_id}",
        )
